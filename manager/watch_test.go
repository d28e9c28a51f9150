package manager_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

// versionLog records the versions an agent applied, per shard.
type versionLog struct {
	mu  sync.Mutex
	seq map[uint64][]uint64
}

func (l *versionLog) add(shard, v uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seq == nil {
		l.seq = make(map[uint64][]uint64)
	}
	l.seq[shard] = append(l.seq[shard], v)
}

// check fails if any shard's versions do not strictly increase.
func (l *versionLog) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for s, vs := range l.seq {
		for i := 1; i < len(vs); i++ {
			if vs[i] <= vs[i-1] {
				t.Fatalf("shard %d applied version %d after %d: %v", s, vs[i], vs[i-1], vs)
			}
		}
	}
}

// runClient runs c until the returned stop function is called.
func runClient(c *agent.Client) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

func TestWatchResume(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, func(c *manager.Config) { c.WatchLogSize = 16 })
	ctx := ctxT(t, 60*time.Second)
	target := newMemTarget()
	var vlog versionLog
	c, err := agent.New(agent.Config{Addrs: []string{tm.addr}, ID: "mux-1", Kind: agent.KindMux, Target: target, Logger: quietLogger, OnApplied: vlog.add, MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	vips := []string{"198.19.0.1", "198.19.0.2", "198.19.0.3", "198.19.0.4"}
	for _, v := range vips {
		if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(v, true, 2)}); err != nil {
			t.Fatal(err)
		}
	}
	stop := runClient(c)
	synced := func() bool { return target.summary() == expectedSummary(t, tm) }
	waitFor(t, 10*time.Second, "the agent to apply the initial state", synced)
	if s := c.Stats(); s.Snapshots != 2 || s.Connects != 1 {
		t.Fatalf("stats %+v: want one snapshot per shard on one connection", s)
	}
	stop()

	// A few changes while disconnected: the agent resumes from its
	// versions, with no snapshot, no gap and no duplicate.
	change := func(i int) {
		v := vips[i%len(vips)]
		if _, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: v, Dip: fmt.Sprintf("10.1.%d.%d", i/200, i%200+1), Host: "198.18.0.1", Hint: 8}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 6; i++ {
		change(i)
	}
	stop = runClient(c)
	waitFor(t, 10*time.Second, "the agent to resume", synced)
	if s := c.Stats(); s.Snapshots != 2 || s.Connects != 2 {
		t.Fatalf("stats %+v after resuming: want no new snapshot and no reconnect for a gap", s)
	}
	// Changes while connected arrive as increments too.
	for i := 6; i < 10; i++ {
		change(i)
	}
	waitFor(t, 10*time.Second, "the agent to follow", synced)
	stop()
	vlog.check(t)

	// Too far behind: more changes than the replica retains (at most
	// 2 x 16 per shard): the agent gets a full snapshot and converges.
	for i := 10; i < 110; i++ {
		change(i)
	}
	if _, err := tm.vips.DeleteVIP(ctx, &api.DeleteVIPRequest{Vip: vips[0]}); err != nil {
		t.Fatal(err)
	}
	stop = runClient(c)
	waitFor(t, 10*time.Second, "the agent to catch up from a snapshot", synced)
	stop()
	if s := c.Stats(); s.Snapshots < 3 {
		t.Fatalf("stats %+v: an agent further behind than the change log got no snapshot", s)
	}
	vlog.check(t)
	target.mu.Lock()
	_, stale := target.vips[netip.MustParseAddr(vips[0])]
	target.mu.Unlock()
	if stale {
		t.Fatal("a VIP deleted while the agent was away is still in its target")
	}
}

// TestWatchStreamProtocol checks the stream itself: a snapshot first, then
// changes numbered one after the other from the requested version.
func TestWatchStreamProtocol(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{7}, nil, nil)
	ctx := ctxT(t, 20*time.Second)
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig("198.19.0.1", true, 2)}); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	st, err := tm.agent.Watch(sctx, &api.WatchRequest{AgentId: "mux-x", Kind: api.AgentKind_AGENT_KIND_MUX})
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.Shard != 7 || m.Snapshot == nil || !m.Snapshot.First || !m.Snapshot.Last || len(m.Snapshot.Vips) != 1 || len(m.Snapshot.Snat) != 2 {
		t.Fatalf("first message %v: want a one-part snapshot with the VIP and its 2 preallocations", m)
	}
	v := m.Snapshot.Version
	cancel()

	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig("198.19.0.2", false, 1)}); err != nil {
		t.Fatal(err)
	}
	st, err = tm.agent.Watch(ctx, &api.WatchRequest{AgentId: "mux-x", Kind: api.AgentKind_AGENT_KIND_MUX, From: []*api.ShardVersion{{Shard: 7, Version: v}}})
	if err != nil {
		t.Fatal(err)
	}
	m, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.Snapshot != nil || len(m.Changes) != 1 || m.Changes[0].Version != v+1 || m.Changes[0].GetVipSet().GetConfig().GetVip() != "198.19.0.2" {
		t.Fatalf("resumed stream sent %v, want the one change after version %d", m, v)
	}
}

// TestReconnectKeepsAgentConnected: the end of an agent's old stream,
// noticed after its new stream started, does not mark it disconnected.
func TestReconnectKeepsAgentConnected(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, nil)
	ctx := ctxT(t, 20*time.Second)
	connected := func() (bool, bool) {
		l, err := tm.agent.ListAgents(ctx, &api.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range l.Agents {
			if a.Id == "mux-r" {
				return true, a.Connected
			}
		}
		return false, false
	}
	open := func() context.CancelFunc {
		sctx, cancel := context.WithCancel(ctx)
		st, err := tm.agent.Watch(sctx, &api.WatchRequest{AgentId: "mux-r", Kind: api.AgentKind_AGENT_KIND_MUX})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil { // the stream is being served
			t.Fatal(err)
		}
		return cancel
	}
	closeOld := open()
	waitFor(t, 10*time.Second, "the agent to register", func() bool { _, c := connected(); return c })
	closeNew := open()
	before := tm.Stats().WatchStreams
	closeOld()
	waitFor(t, 10*time.Second, "the old stream to end", func() bool { return tm.Stats().WatchStreams == before-1 })
	// The disconnection is recorded (or dropped) by the next Agents command;
	// a heartbeat after it shows the final state.
	if _, err := tm.agent.ReportApplied(ctx, &api.ReportAppliedRequest{AgentId: "other", Kind: api.AgentKind_AGENT_KIND_MUX}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the heartbeat of another agent", func() bool {
		l, err := tm.agent.ListAgents(ctx, &api.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Agents) == 2
	})
	if known, c := connected(); !known || !c {
		t.Fatal("the agent shows as disconnected while its new stream is open")
	}
	closeNew()
	waitFor(t, 10*time.Second, "the agent to show as disconnected", func() bool { _, c := connected(); return !c })
}
