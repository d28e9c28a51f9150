package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
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
