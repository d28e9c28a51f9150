package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/memory"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startManager runs a Manager on an in-memory consensus node on a loopback
// port until the test ends and returns its address.
func startManager(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := manager.New(manager.Config{
		Listener: lis,
		Consensus: func(f consensus.Factory) (consensus.Node, error) {
			return memory.New([]uint64{1, 2}, f)
		},
		Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		m.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after Close")
		}
	})
	return lis.Addr().String()
}

// result is one run of anantactl.
type result struct {
	code           int
	stdout, stderr string
}

func cmd(t *testing.T, addr string, args ...string) result {
	t.Helper()
	return cmdIn(t, addr, "", args...)
}

// cmdIn is cmd with stdin as standard input.
func cmdIn(t *testing.T, addr, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	all := append([]string{"--manager", addr, "--timeout", "10s"}, args...)
	code := run(context.Background(), all, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// ok runs anantactl and fails the test unless it succeeds.
func ok(t *testing.T, addr string, args ...string) string {
	t.Helper()
	r := cmd(t, addr, args...)
	if r.code != 0 {
		t.Fatalf("anantactl %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// fails runs anantactl and checks that it fails with code and a message
// that contains every one of want.
func fails(t *testing.T, addr string, code int, want []string, args ...string) {
	t.Helper()
	r := cmd(t, addr, args...)
	if r.code != code {
		t.Fatalf("anantactl %s: exit %d, want %d (stdout %q, stderr %q)", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("anantactl %s: stderr %q does not contain %q", strings.Join(args, " "), r.stderr, w)
		}
	}
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func contains(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s: output does not contain %q:\n%s", what, w, got)
		}
	}
}

func TestVIPLifecycle(t *testing.T) {
	addr := startManager(t)
	const vip = "198.19.0.10"

	out := ok(t, addr, "vip", "create", "-f", "testdata/vip.yaml", "--wait", "1s")
	contains(t, "create", out, "created VIP "+vip, "version ", "no agents connected")
	fails(t, addr, 1, []string{"vip create: AlreadyExists:", vip}, "vip", "create", "-f", "testdata/vip.yaml")

	// get, table and json.
	out = ok(t, addr, "vip", "get", vip)
	contains(t, "get", out, "VIP", "TENANT", vip, "contoso", "tcp/80", "10.1.0.2", "draining", "198.18.0.1")
	out = ok(t, addr, "vip", "get", vip, "-o", "json")
	var got struct {
		Config struct {
			Vip         string `json:"vip"`
			IdleTimeout string `json:"idle_timeout"`
			Endpoints   []struct {
				Protocol string `json:"protocol"`
				Backends []struct {
					Weight int    `json:"weight"`
					State  string `json:"state"`
				} `json:"backends"`
				Probe struct {
					Kind string `json:"kind"`
				} `json:"probe"`
			} `json:"endpoints"`
		} `json:"config"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -o json: %v\n%s", err, out)
	}
	if got.Config.Vip != vip || got.Config.IdleTimeout != "240s" || len(got.Config.Endpoints) != 1 ||
		got.Config.Endpoints[0].Protocol != "PROTOCOL_TCP" || got.Config.Endpoints[0].Probe.Kind != "PROBE_KIND_HTTP" ||
		len(got.Config.Endpoints[0].Backends) != 2 || got.Config.Endpoints[0].Backends[1].Weight != 2 ||
		got.Config.Endpoints[0].Backends[1].State != "BACKEND_STATE_DRAINING" || got.Version == "" {
		t.Errorf("get -o json: %+v\n%s", got, out)
	}

	// list, table and json.
	out = ok(t, addr, "vip", "list")
	contains(t, "list", out, "VIP", "VERSION", vip, "contoso", "tcp/80", "on")
	out = ok(t, addr, "-o", "json", "vip", "list")
	var list struct {
		Vips []struct {
			Config struct {
				Vip string `json:"vip"`
			} `json:"config"`
		} `json:"vips"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Vips) != 1 || list.Vips[0].Config.Vip != vip {
		t.Errorf("list -o json: %v %+v\n%s", err, list, out)
	}
	out = ok(t, addr, "vip", "list", "--tenant", "other")
	if strings.Contains(out, vip) {
		t.Errorf("list --tenant other shows %s:\n%s", vip, out)
	}

	// update with a wrong version, then with the right one; the json of
	// get serves as an update file that carries its version.
	fails(t, addr, 1, []string{"vip update: Aborted:"}, "vip", "update", "-f", "testdata/vip.yaml", "--version", "999")
	getJSON := writeFile(t, "vip.json", ok(t, addr, "vip", "get", vip, "-o", "json"))
	out = ok(t, addr, "vip", "update", "-f", getJSON)
	contains(t, "update from get's json", out, "updated VIP "+vip)
	fails(t, addr, 1, []string{"vip update: Aborted:"}, "vip", "update", "-f", getJSON) // its version is stale now
	out = ok(t, addr, "vip", "update", "-f", getJSON, "--version", "0", "-o", "json")
	contains(t, "update --version 0 -o json", out, `"vip":`, `"version":`)

	// invalid configurations: the Manager's message names the field.
	bad := writeFile(t, "bad.yaml", `
vip: 198.19.0.11
tenant: t
endpoints:
  - protocol: tcp
    port: 80
    backends:
      - {dip: 10.1.0.1, port: 8080, host: 198.18.0.1, weight: 1}
      - {dip: 10.1.0.2, port: 8080, host: 198.18.0.2, weight: 0}
`)
	fails(t, addr, 1, []string{"vip create: InvalidArgument:", "endpoints[0].backends[1].weight"}, "vip", "create", "-f", bad)
	badAddr := writeFile(t, "bad.json", `{"vip": "198.19.0.12", "tenant": "t", "endpoints": [{"protocol": "udp", "port": 53,
		"backends": [{"dip": "not-an-ip", "host": "198.18.0.1", "weight": 1}]}]}`)
	fails(t, addr, 1, []string{"InvalidArgument:", "endpoints[0].backends[0].dip"}, "vip", "create", "-f", badAddr)
	// errors of the file itself, before any call.
	typo := writeFile(t, "typo.yaml", "vip: 198.19.0.13\ntenant: t\nendpoints:\n  - protocol: tcp\n    prot: 80\n")
	fails(t, addr, 2, []string{"typo.yaml", `unknown field "prot"`}, "vip", "create", "-f", typo)
	badEnum := writeFile(t, "enum.yaml", "vip: 198.19.0.13\nendpoints:\n  - protocol: sctp\n")
	fails(t, addr, 2, []string{"PROTOCOL_SCTP"}, "vip", "create", "-f", badEnum)
	notYAML := writeFile(t, "x.yaml", "vip: [\n")
	fails(t, addr, 2, []string{"invalid YAML"}, "vip", "create", "-f", notYAML)
	fails(t, addr, 2, []string{"-f FILE is required"}, "vip", "create")

	// JSON on standard input, with an idempotency key: a retry of the
	// same create succeeds, with the first call's result.
	const second = `{"vip": "198.19.0.20", "tenant": "contoso", "endpoints": [{"protocol": "any", "port": 0,
		"backends": [{"dip": "10.2.0.1", "port": 0, "host": "198.18.0.1", "weight": 1}]}]}`
	var first string
	for i := 0; i < 2; i++ {
		r := cmdIn(t, addr, second, "vip", "create", "-f", "-", "--idempotency-key", "k1")
		if r.code != 0 || !strings.Contains(r.stdout, "created VIP 198.19.0.20 (version ") || (i > 0 && r.stdout != first) {
			t.Fatalf("create from stdin, try %d: exit %d, stdout %q (first %q), stderr %q", i, r.code, r.stdout, first, r.stderr)
		}
		first = r.stdout
	}
	if r := cmdIn(t, addr, second, "vip", "create", "-f", "-"); r.code != 1 || !strings.Contains(r.stderr, "AlreadyExists") {
		t.Errorf("create without key: exit %d, stderr %q", r.code, r.stderr)
	}
	ok(t, addr, "vip", "delete", "198.19.0.20")

	// delete.
	out = ok(t, addr, "vip", "delete", vip)
	contains(t, "delete", out, "deleted VIP "+vip)
	fails(t, addr, 1, []string{"vip get: NotFound:"}, "vip", "get", vip)
	fails(t, addr, 1, []string{"NotFound:"}, "vip", "delete", vip)
	out = ok(t, addr, "vip", "list")
	if strings.Contains(out, vip) {
		t.Errorf("list after delete shows %s:\n%s", vip, out)
	}
}

func TestLeasesAndAgents(t *testing.T) {
	addr := startManager(t)
	const vip = "198.19.0.10"
	ok(t, addr, "vip", "create", "-f", "testdata/vip.yaml")

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, err := api.NewSNATServiceClient(conn).AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.9", Host: "198.18.0.9", Hint: 8})
	if err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"leases", "--vip", vip}, {"leases"}, {"leases", "--dip", "10.1.0.9"}} {
		out := ok(t, addr, args...)
		contains(t, strings.Join(args, " "), out, "VIP", "PORTS", "DIP", vip, "10.1.0.9", "198.18.0.9")
	}
	out := ok(t, addr, "leases", "--vip", vip, "-o", "json")
	var leases struct {
		Leases []struct {
			Dip   string `json:"dip"`
			Range struct {
				First uint32 `json:"first"`
			} `json:"range"`
		} `json:"leases"`
	}
	if err := json.Unmarshal([]byte(out), &leases); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range leases.Leases {
		found = found || (l.Dip == "10.1.0.9" && l.Range.First == lease.GetLease().GetRange().GetFirst())
	}
	if !found {
		t.Errorf("leases -o json lacks the lease %v:\n%s", lease.GetLease(), out)
	}
	fails(t, addr, 1, []string{"leases: NotFound:"}, "leases", "--vip", "198.19.9.9")

	// No agents yet: a table with its header only.
	out = ok(t, addr, "agents")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "ID") {
		t.Errorf("agents with none: %q", out)
	}

	// A Mux agent with an in-memory target.
	a, err := agent.New(agent.Config{Addrs: []string{addr}, ID: "mux-1", Kind: agent.KindMux, Address: "192.0.2.1",
		Target: nopTarget{}, Logger: quiet, ReportInterval: 100 * time.Millisecond, MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(context.Background()) }()
	defer func() { a.Close(); <-done }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		out = ok(t, addr, "agents", "-o", "json")
		var agents struct {
			Agents []struct {
				ID        string `json:"id"`
				Kind      string `json:"kind"`
				Connected bool   `json:"connected"`
				Applied   []struct {
					Shard, Version string
				} `json:"applied"`
				Lag []struct {
					Shard, Version string
				} `json:"lag"`
			} `json:"agents"`
		}
		if err := json.Unmarshal([]byte(out), &agents); err != nil {
			t.Fatalf("agents -o json: %v\n%s", err, out)
		}
		// Connected, with versions of both shards and no lag.
		if len(agents.Agents) == 1 && agents.Agents[0].Connected && len(agents.Agents[0].Applied) == 2 &&
			len(agents.Agents[0].Lag) == 2 && agents.Agents[0].Lag[0].Version == "0" && agents.Agents[0].Lag[1].Version == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not connected with versions:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	contains(t, "agents -o json", out, `"id": "mux-1"`, `"kind": "AGENT_KIND_MUX"`, `"applied"`)
	out = ok(t, addr, "agents")
	contains(t, "agents", out, "APPLIED", "LAG", "mux-1", "mux", "192.0.2.1", "true", "1:0 2:0")
	// A change waits for the connected agent.
	out = ok(t, addr, "vip", "update", "-f", "testdata/vip.yaml", "--wait", "5s")
	contains(t, "update --wait", out, "updated VIP "+vip, "applied by all 1 connected agents")
	out = ok(t, addr, "agents", "--kind", "mux")
	contains(t, "agents --kind mux", out, "mux-1")
	out = ok(t, addr, "agents", "--kind", "host-agent")
	if strings.Contains(out, "mux-1") {
		t.Errorf("agents --kind host-agent shows the mux:\n%s", out)
	}
	fails(t, addr, 2, []string{"--kind"}, "agents", "--kind", "router")
}

func TestManagerFailover(t *testing.T) {
	addr := startManager(t)
	// A closed port first: anantactl moves on to the next replica.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	out := ok(t, dead+","+addr, "vip", "list")
	contains(t, "list via second replica", out, "VIP")
	fails(t, dead, 1, []string{"Unavailable:", dead}, "vip", "list")
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"vip"}, {"vip", "frob"}, {"vip", "get"}, {"-o", "yaml", "vip", "list"}} {
		r := cmd(t, "127.0.0.1:1", args...)
		if r.code != 2 || r.stderr == "" {
			t.Errorf("anantactl %q: exit %d, stderr %q; want 2 with a message", args, r.code, r.stderr)
		}
	}
}

func TestParseVIPFile(t *testing.T) {
	yamlData, err := os.ReadFile("testdata/vip.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fromYAML, err := parseVIPFile("vip.yaml", yamlData)
	if err != nil {
		t.Fatal(err)
	}
	jsonData := `{"vip": "198.19.0.10", "tenant": "contoso", "idleTimeout": "240s",
	  "endpoints": [{"protocol": "PROTOCOL_TCP", "port": 80,
	    "backends": [{"dip": "10.1.0.1", "port": 8080, "host": "198.18.0.1", "weight": 1},
	                 {"dip": "10.1.0.2", "port": 8080, "host": "198.18.0.2", "weight": 2, "state": "BACKEND_STATE_DRAINING"}],
	    "probe": {"kind": "http", "port": 8080, "path": "/healthz", "interval": "5s"}}],
	  "snat": {"enabled": true}}`
	fromJSON, err := parseVIPFile("-", []byte(jsonData)) // by content
	if err != nil {
		t.Fatal(err)
	}
	if a, b := fromYAML.config.String(), fromJSON.config.String(); a != b {
		t.Errorf("YAML and JSON differ:\n%s\n%s", a, b)
	}
	// The file converts into a valid ananta.VIPConfig.
	cfg, err := manager.VIPConfigFromProto(fromYAML.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.IdleTimeout != 4*time.Minute || cfg.Endpoints[0].Probe.Interval != 5*time.Second ||
		cfg.Endpoints[0].Backends[1].State != ananta.BackendDraining || cfg.VIP != netip.MustParseAddr("198.19.0.10") {
		t.Errorf("config: %+v", cfg)
	}
}

// nopTarget applies nothing.
type nopTarget struct{}

func (nopTarget) SetVIP(ananta.VIPConfig) error                                          { return nil }
func (nopTarget) DeleteVIP(netip.Addr) error                                             { return nil }
func (nopTarget) SetSNATRanges(netip.Addr, []agent.SNATRange) error                      { return nil }
func (nopTarget) SetBackendState(_, _ netip.Addr, _ uint16, _ ananta.BackendState) error { return nil }
