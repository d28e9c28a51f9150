package manager_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

func TestDistributionAndHealthRelay(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, func(c *manager.Config) { c.AgentTimeout = 3 * time.Second })
	ctx := ctxT(t, 60*time.Second)
	const vip = "198.19.0.50"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, false, 3)}); err != nil {
		t.Fatal(err)
	}
	targets := make([]*memTarget, 3)
	for i := range targets {
		targets[i] = newMemTarget()
		kind := agent.KindMux
		if i == 2 {
			kind = agent.KindHostAgent
		}
		startAgent(t, fmt.Sprintf("agent-%d", i), kind, targets[i], tm.addr)
	}
	waitFor(t, 10*time.Second, "3 connected agents", func() bool {
		l, err := tm.agent.ListAgents(ctx, &api.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, a := range l.Agents {
			if a.Connected {
				n++
			}
		}
		return n == 3
	})
	u, err := tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(vip, false, 4), WaitForAgents: durationpb.New(10 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if d := u.Distribution; !d.Complete || d.Agents != 3 || len(d.Lagging) != 0 {
		t.Fatalf("distribution %v: want complete on 3 agents", d)
	}
	for i, tg := range targets {
		tg.mu.Lock()
		n := len(tg.vips[netip.MustParseAddr(vip)].Endpoints[0].Backends)
		tg.mu.Unlock()
		if n != 4 {
			t.Fatalf("agent %d has %d backends after a complete distribution, want 4", i, n)
		}
	}

	// An agent that cannot apply shows as lagging when the wait ends.
	block := make(chan struct{})
	targets[1].mu.Lock()
	targets[1].block = block
	targets[1].mu.Unlock()
	u, err = tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(vip, false, 5), WaitForAgents: durationpb.New(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if d := u.Distribution; d.Complete || len(d.Lagging) != 1 || d.Lagging[0].AgentId != "agent-1" || d.Agents != 3 {
		t.Fatalf("distribution %v: want agent-1 lagging", d)
	}
	l, err := tm.agent.ListAgents(ctx, &api.ListAgentsRequest{Kind: api.AgentKind_AGENT_KIND_MUX})
	if err != nil || len(l.Agents) != 2 {
		t.Fatalf("ListAgents(mux): %v %v", l, err)
	}
	lagging := false
	for _, a := range l.Agents {
		for _, lag := range a.Lag {
			if a.Id == "agent-1" && lag.Version > 0 {
				lagging = true
			}
		}
	}
	if !lagging {
		t.Fatalf("ListAgents shows no lag for the blocked agent: %v", l)
	}
	targets[1].mu.Lock()
	targets[1].block = nil
	targets[1].mu.Unlock()
	close(block)

	// Health: a Host Agent reports a DIP down; the Muxes get the backend
	// state change.
	h, err := tm.agent.ReportHealth(ctx, &api.ReportHealthRequest{AgentId: "agent-2", Reports: []*api.HealthReport{
		{Vip: vip, Dip: "10.1.0.2", Port: 8080, Healthy: false},
		{Vip: vip, Dip: "10.9.9.9", Port: 8080, Healthy: false}, // unknown: ignored
	}})
	if err != nil || h.Ignored != 1 {
		t.Fatalf("ReportHealth: %v %v", h, err)
	}
	key := vip + "/10.1.0.2:8080"
	waitFor(t, 10*time.Second, "the Muxes to mark the backend down", func() bool {
		for _, tg := range targets[:2] {
			tg.mu.Lock()
			st, ok := tg.backends[key]
			tg.mu.Unlock()
			if !ok || st != ananta.BackendDown {
				return false
			}
		}
		return true
	})
	g, err := tm.vips.GetVIP(ctx, &api.GetVIPRequest{Vip: vip})
	if err != nil {
		t.Fatal(err)
	}
	if s := g.Config.Endpoints[0].Backends[1].State; s != api.BackendState_BACKEND_STATE_ACTIVE {
		t.Fatalf("health changed the configured state to %v; it must only change the effective state", s)
	}

	// Traffic reports from the Muxes add up per VIP.
	for _, id := range []string{"agent-0", "agent-1"} {
		if _, err := tm.agent.ReportTraffic(ctx, &api.ReportTrafficRequest{AgentId: id, Interval: durationpb.New(2 * time.Second), Top: []*api.TrafficEntry{{Vip: vip, Packets: 2000, Bytes: 4000, Drops: 20}}}); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := tm.agent.GetTraffic(ctx, &api.GetTrafficRequest{})
	if err != nil || len(tr.Vips) != 1 || tr.Vips[0].PacketsPerSecond != 2000 || tr.Vips[0].Muxes != 2 || tr.Vips[0].DropsPerSecond != 20 {
		t.Fatalf("GetTraffic: %v %v", tr, err)
	}
}
