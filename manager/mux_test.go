package manager_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
)

// TestRealMux: a real mux.Mux follows the Manager through an agent
// Client: VIP configuration, SNAT ranges (the Mux accepts them only for a
// configured VIP), backend health, deletion.
func TestRealMux(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, nil)
	ctx := ctxT(t, 30*time.Second)
	m, err := mux.New(mux.Config{Addr4: netip.MustParseAddr("198.18.255.1"), FlowTableBytes: 1 << 20, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := startAgent(t, "mux-real", agent.KindMux, agent.MuxTarget(m), tm.addr)
	const vip = "198.19.0.70"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 3)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.2", Host: "198.18.0.2", Hint: 64}); err != nil {
		t.Fatal(err)
	}
	v := netip.MustParseAddr(vip)
	backends := func() map[netip.AddrPort]ananta.BackendState {
		out := make(map[netip.AddrPort]ananta.BackendState)
		for _, b := range m.Stats().Backends {
			if b.Endpoint.VIP == v {
				out[b.DIP] = b.State
			}
		}
		return out
	}
	waitFor(t, 10*time.Second, "the Mux to have the VIP and its 3 backends", func() bool { return len(backends()) == 3 })
	if _, err := tm.agent.ReportHealth(ctx, &api.ReportHealthRequest{AgentId: "ha-1", Reports: []*api.HealthReport{{Vip: vip, Dip: "10.1.0.3", Port: 8080}}}); err != nil {
		t.Fatal(err)
	}
	down := netip.MustParseAddrPort("10.1.0.3:8080")
	waitFor(t, 10*time.Second, "the Mux to mark the backend down", func() bool { return backends()[down] == ananta.BackendDown })
	if _, err := tm.vips.DeleteVIP(ctx, &api.DeleteVIPRequest{Vip: vip}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the Mux to drop the VIP", func() bool { _, ok := m.Stats().VIPs[v]; return !ok })
	if s := c.Stats(); s.TargetErrors != 0 {
		t.Fatalf("the Mux refused %d changes", s.TargetErrors)
	}
}
