package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta/api"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// binary builds anantad once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := mkTemp()
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		binPath = filepath.Join(dir, "anantad")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// daemon is a running anantad process whose JSON logs are read into records.
type daemon struct {
	cmd     *exec.Cmd
	records chan map[string]any
	done    chan struct{}
	err     error // Wait's, valid after done
}

// startDaemon starts cmd (an anantad with --log-format json) and kills it
// at the end of the test if it is still running.
func startDaemon(t *testing.T, cmd *exec.Cmd) *daemon {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, records: make(chan map[string]any, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(cmd.Path) + " " + strings.Join(cmd.Args[1:], " ")
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("%s: %s", name, sc.Text())
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				select {
				case d.records <- rec:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	})
	go func() {
		wg.Wait()
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

// await returns the first log record with message msg.
func (d *daemon) await(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case rec := <-d.records:
			if rec["msg"] == msg {
				return rec
			}
		case <-d.done:
			t.Fatalf("process ended (%v) before logging %q", d.err, msg)
		case <-deadline:
			t.Fatalf("no log %q within %v", msg, timeout)
		}
	}
}

// stop sends SIGTERM and checks the process exits with status 0 in time.
func (d *daemon) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(timeout):
		t.Fatalf("still running %v after SIGTERM", timeout)
	}
	var ee *exec.ExitError
	switch {
	case errors.As(d.err, &ee):
		t.Fatalf("exit after SIGTERM: %v, want status 0", ee)
	case d.err != nil:
		t.Fatal(d.err)
	}
}

// startManager runs `anantad manager --single` with listen and metrics on
// port 0 of host and returns its gRPC and metrics addresses, read from its
// logs.
func startManager(t *testing.T, cmd func(args ...string) *exec.Cmd, host string) (d *daemon, grpcAddr, metricsAddr string) {
	t.Helper()
	d = startDaemon(t, cmd("manager", "--single", "--listen", host+":0", "--metrics", host+":0", "--log-format", "json", "--shards", "2"))
	metricsAddr, _ = d.await(t, "serving metrics", 20*time.Second)["addr"].(string)
	grpcAddr, _ = d.await(t, "manager serving", 20*time.Second)["listen"].(string)
	if grpcAddr == "" || metricsAddr == "" {
		t.Fatalf("addresses not logged: grpc %q, metrics %q", grpcAddr, metricsAddr)
	}
	return d, grpcAddr, metricsAddr
}

func TestManagerProcess(t *testing.T) {
	bin := binary(t)
	d, grpcAddr, metricsAddr := startManager(t, func(args ...string) *exec.Cmd { return exec.Command(bin, args...) }, "127.0.0.1")

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ananta_manager_") || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("/metrics: %s\n%.2000s", resp.Status, body)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vips, err := api.NewVIPServiceClient(conn).ListVIPs(ctx, &api.ListVIPsRequest{})
	if err != nil {
		t.Fatalf("ListVIPs: %v", err)
	}
	if len(vips.GetVips()) != 0 {
		t.Errorf("ListVIPs of a new Manager: %v", vips)
	}
	if _, err := api.NewAgentServiceClient(conn).ListAgents(ctx, &api.ListAgentsRequest{}); err != nil {
		t.Fatalf("ListAgents: %v", err)
	}

	d.stop(t, 10*time.Second)
}

// TestReplicatedManagerProcesses runs three `anantad manager` replicas on
// Dragonboat from YAML files (loopback, data in a temporary directory):
// each answers ListVIPs, a VIP created through one is listed by another,
// and all exit 0 on SIGTERM.
func TestReplicatedManagerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three Raft replicas")
	}
	bin := binary(t)
	const n = 3
	var ls []net.Listener
	var addrs []string
	for range 2 * n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close() // the replicas bind these ports next
	}
	var peers strings.Builder
	for i := range n {
		fmt.Fprintf(&peers, "  - {id: %d, raft: %s, grpc: %s}\n", i+1, addrs[2*i], addrs[2*i+1])
	}
	dir := t.TempDir()
	var ds []*daemon
	for i := range n {
		cfg := filepath.Join(dir, fmt.Sprintf("manager-%d.yaml", i+1))
		y := fmt.Sprintf("listen: %s\nreplica_id: %d\ndata_dir: %s\nshards: 2\nrtt_millisecond: 10\nlightweight: true\nlog_format: json\npeers:\n%s",
			addrs[2*i+1], i+1, filepath.Join(dir, fmt.Sprint("raft-", i+1)), peers.String())
		if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, startDaemon(t, exec.Command(bin, "manager", "--config", cfg)))
	}
	for _, d := range ds {
		d.await(t, "manager serving", 30*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := func(i int) api.VIPServiceClient {
		conn, err := grpc.NewClient(addrs[2*i+1], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return api.NewVIPServiceClient(conn)
	}
	if _, err := client(0).CreateVIP(ctx, &api.CreateVIPRequest{Config: &api.VIPConfig{
		Vip: "198.19.0.10", Tenant: "anantad-test",
		Endpoints: []*api.Endpoint{{Protocol: api.Protocol_PROTOCOL_TCP, Port: 80, Backends: []*api.Backend{{Dip: "198.18.5.1", Port: 8080, Host: "198.18.0.3", Weight: 1}}}},
	}}); err != nil {
		t.Fatalf("CreateVIP through replica 1: %v", err)
	}
	for i := range n {
		r, err := client(i).ListVIPs(ctx, &api.ListVIPsRequest{})
		if err != nil {
			t.Fatalf("ListVIPs through replica %d: %v", i+1, err)
		}
		if len(r.GetVips()) != 1 || r.GetVips()[0].GetConfig().GetVip() != "198.19.0.10" {
			t.Errorf("ListVIPs through replica %d: %v", i+1, r)
		}
	}
	for _, d := range ds {
		d.stop(t, 20*time.Second)
	}
}
