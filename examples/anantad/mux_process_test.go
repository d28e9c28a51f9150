package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/internal/testutil"
)

// inNS returns a dialer for net.Dial's network and address from ns.
func inNS(ns *testutil.NetNS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// TestMuxProcess runs `anantad manager --single` in one namespace and
// `anantad mux` in another, linked by a veth pair: the Mux connects to the
// Manager (ListAgents shows it connected), serves /metrics, and both exit
// 0 on SIGTERM.
func TestMuxProcess(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := binary(t)
	nsM, nsX := testutil.NewNetNS(t), testutil.NewNetNS(t)
	mIf, xIf := testutil.Veth(t, nsM, nsX, netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.2/24"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	mgr, grpcAddr, _ := startManager(t, func(args ...string) *exec.Cmd { return nsM.Command(ctx, bin, args...) }, "198.18.0.1")

	mux := startDaemon(t, nsX.Command(ctx, bin, "mux", "--id", "mux-test", "--interface", xIf,
		"--next-hop", nsM.MAC(t, mIf).String(), "--addr4", "198.18.0.2", "--managers", grpcAddr,
		"--flow-table-bytes", "1048576", "--metrics", "198.18.0.2:0", "--log-format", "json"))
	metricsAddr, _ := mux.await(t, "serving metrics", 20*time.Second)["addr"].(string)
	mux.await(t, "mux synced with the Manager", 30*time.Second)

	hc := &http.Client{Transport: &http.Transport{DialContext: inNS(nsX)}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ananta_mux_") {
		t.Fatalf("mux /metrics: %s\n%.2000s", resp.Status, body)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return inNS(nsM)(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	agents := api.NewAgentServiceClient(conn)
	var last *api.ListAgentsResponse
	testutil.WaitFor(t, 20*time.Second, "the Mux connected in ListAgents", func() bool {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		r, err := agents.ListAgents(rctx, &api.ListAgentsRequest{})
		if err != nil {
			t.Logf("ListAgents: %v", err)
			return false
		}
		last = r
		for _, a := range r.GetAgents() {
			if a.GetId() == "mux-test" && a.GetConnected() && a.GetKind() == api.AgentKind_AGENT_KIND_MUX && a.GetAddress() == "198.18.0.2" {
				return true
			}
		}
		return false
	})
	t.Logf("agents: %v", last)

	mux.stop(t, 20*time.Second)
	mgr.stop(t, 10*time.Second)
}

// TestHostAgentProcess runs `anantad hostagent` in a host namespace, with
// a VM namespace whose TUN device it creates and sets up, against
// `anantad manager --single` in another namespace: the agent connects
// (ListAgents), the VM's TUN carries its DIP, /metrics answers, and both
// exit 0 on SIGTERM.
func TestHostAgentProcess(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := binary(t)
	nsM, nsH, nsV := testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t)
	mIf, hIf := testutil.Veth(t, nsM, nsH, netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.3/24"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	mgr, grpcAddr, _ := startManager(t, func(args ...string) *exec.Cmd { return nsM.Command(ctx, bin, args...) }, "198.18.0.1")

	cfg := filepath.Join(t.TempDir(), "hostagent.yaml")
	yaml := fmt.Sprintf(`id: host-test
interface: %s
next_hop: %s
host_addrs: [198.18.0.3]
mux_prefixes: [198.18.0.0/24]
managers: [%s]
vms:
  - {name: vm1, dips: [198.19.1.1], tun: hatvm1, netns: %s, setup: true}
metrics: 198.18.0.3:0
log_format: json
`, hIf, nsM.MAC(t, mIf), grpcAddr, nsV.Path())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	ha := startDaemon(t, nsH.Command(ctx, bin, "hostagent", "--config", cfg))
	metricsAddr, _ := ha.await(t, "serving metrics", 20*time.Second)["addr"].(string)
	ha.await(t, "hostagent started", 20*time.Second)

	if out := nsV.Run(t, "ip", "-o", "addr", "show", "dev", "hatvm1"); !strings.Contains(out, "198.19.1.1/32") {
		t.Errorf("VM's TUN device: %s", out)
	}
	if out := nsV.Run(t, "ip", "route", "show", "default"); !strings.Contains(out, "hatvm1") {
		t.Errorf("VM's default route: %q", out)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: inNS(nsH)}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ananta_hostagent_") {
		t.Fatalf("hostagent /metrics: %s\n%.2000s", resp.Status, body)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return inNS(nsM)(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	agents := api.NewAgentServiceClient(conn)
	testutil.WaitFor(t, 20*time.Second, "the Host Agent connected in ListAgents", func() bool {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		r, err := agents.ListAgents(rctx, &api.ListAgentsRequest{})
		if err != nil {
			t.Logf("ListAgents: %v", err)
			return false
		}
		for _, a := range r.GetAgents() {
			if a.GetId() == "host-test" && a.GetConnected() && a.GetKind() == api.AgentKind_AGENT_KIND_HOST_AGENT {
				return true
			}
		}
		return false
	})

	ha.stop(t, 20*time.Second)
	mgr.stop(t, 10*time.Second)
}
