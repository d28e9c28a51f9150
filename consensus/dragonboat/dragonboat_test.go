package dragonboat_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/consensustest"
	"github.com/ananta-go/ananta/consensus/dragonboat"
	"github.com/ananta-go/ananta/internal/testutil"
)

func same(f consensus.Factory) func(uint64) consensus.Factory {
	return func(uint64) consensus.Factory { return f }
}

func TestConformance(t *testing.T) {
	var c *cluster
	consensustest.Run(t, consensustest.Harness{
		Timeout: 30 * time.Second, // a busy machine starves 10 ms ticks: elections repeat
		New: func(t *testing.T, shards []uint64, f consensus.Factory) []consensus.Node {
			c = startCluster(t, testConfigs(t, 3, shards, nil), same(f))
			return c.live()
		},
		// Restart snapshots every shard on every replica, stops them all
		// and starts them again on their data directories: the state
		// comes back from the snapshots (Restore) and the log after them.
		Restart: func(t *testing.T, _ []consensus.Node, _ []uint64, f consensus.Factory) []consensus.Node {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c.snapshotAll(ctx)
			c.stopAll()
			for i := range c.cfgs {
				c.start(i, f)
			}
			return c.live()
		},
	})
}

func TestValidate(t *testing.T) {
	good := dragonboat.Config{
		ReplicaID: 1,
		Members:   map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"},
		Shards:    []uint64{1},
		DataDir:   "/tmp/x",
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tc := range []struct {
		field string
		tweak func(*dragonboat.Config)
	}{
		{"ReplicaID", func(c *dragonboat.Config) { c.ReplicaID = 0 }},
		{"Members", func(c *dragonboat.Config) { c.Members = nil }},
		{"Members must contain ReplicaID", func(c *dragonboat.Config) { c.ReplicaID = 4 }},
		{"Members[2]", func(c *dragonboat.Config) { c.Members = map[uint64]string{1: "127.0.0.1:1", 2: "nohost"} }},
		{"Members[2]", func(c *dragonboat.Config) { c.Members = map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:1"} }},
		{"Shards", func(c *dragonboat.Config) { c.Shards = nil }},
		{"Shards", func(c *dragonboat.Config) { c.Shards = []uint64{3, 3} }},
		{"DataDir", func(c *dragonboat.Config) { c.DataDir = "" }},
		{"ListenAddress", func(c *dragonboat.Config) { c.ListenAddress = "x" }},
		{"ElectionRTT", func(c *dragonboat.Config) { c.ElectionRTT, c.HeartbeatRTT = 4, 2 }},
		{"RequestTimeout", func(c *dragonboat.Config) { c.RequestTimeout = -1 }},
		{"RequestTimeout", func(c *dragonboat.Config) { c.RequestTimeout = time.Millisecond }},
	} {
		c := good
		c.Members = map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}
		tc.tweak(&c)
		err := c.Validate()
		if !errors.Is(err, dragonboat.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig naming %q", tc.field, err, tc.field)
		}
		if _, err := dragonboat.New(c, func(uint64) consensus.StateMachine { return nil }); !errors.Is(err, dragonboat.ErrInvalidConfig) {
			t.Errorf("%s: New accepted an invalid config: %v", tc.field, err)
		}
	}
	if _, err := dragonboat.New(good, nil); !errors.Is(err, dragonboat.ErrInvalidConfig) {
		t.Errorf("New with a nil factory: %v", err)
	}
}

// factories gives every replica its own KV factory and stats.
type factories struct {
	mu    sync.Mutex
	stats map[uint64]*consensustest.Stats
}

func newFactories() *factories { return &factories{stats: make(map[uint64]*consensustest.Stats)} }

// forReplica returns a new factory for replica; its stats replace the
// previous ones of that replica (a restart).
func (fs *factories) forReplica(replica uint64) consensus.Factory {
	f, st := consensustest.NewFactory()
	fs.mu.Lock()
	fs.stats[replica] = st
	fs.mu.Unlock()
	return f
}

func (fs *factories) of(replica uint64) *consensustest.Stats {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.stats[replica]
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// dumps reads the Dump of shard on every live replica.
func dumps(t testing.TB, c *cluster, shard uint64) map[uint64][]byte {
	t.Helper()
	out := make(map[uint64][]byte)
	for _, n := range c.live() {
		d, err := n.Read(ctxT(t, 10*time.Second), shard, consensustest.Dump())
		if err != nil {
			t.Fatalf("replica %d: dump shard %d: %v", n.ID(), shard, err)
		}
		out[n.ID()] = d
	}
	return out
}

func allEqual(m map[uint64][]byte) bool {
	var first []byte
	for _, v := range m {
		if first == nil {
			first = v
		} else if !bytes.Equal(first, v) {
			return false
		}
	}
	return true
}

// TestLeaderLoss stops the leader of a shard while a stream of proposals
// goes to the other replicas: every acknowledged proposal must be applied
// exactly once on the survivors, no proposal more than once, and
// proposals must resume.
func TestLeaderLoss(t *testing.T) {
	shards := []uint64{1, 2}
	fs := newFactories()
	c := startCluster(t, testConfigs(t, 3, shards, nil), fs.forReplica)
	const shard = 1
	leaders := c.waitLeaders(10 * time.Second)
	victim := c.index(leaders[shard])

	var (
		seq      atomic.Uint64
		mu       sync.Mutex
		acked    []uint64
		failures = make(map[string]int)
		firstOK  atomic.Int64 // unix nanos of the first ack of a proposal begun after the stop
		stopped  atomic.Int64 // unix nanos of the stop
	)
	propose := func(n consensus.Node) {
		s := seq.Add(1)
		began := time.Now().UnixNano()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		res, err := n.Propose(ctx, shard, consensustest.Seq(s))
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures[errKind(err)]++
			return
		}
		if c := consensustest.Uint64(res); c != 1 {
			t.Errorf("seq %d: applied %d times", s, c)
		}
		acked = append(acked, s)
		if st := stopped.Load(); st != 0 && began > st {
			firstOK.CompareAndSwap(0, time.Now().UnixNano())
		}
	}
	var survivors []consensus.Node
	for i, n := range c.nodes {
		if i != victim {
			survivors = append(survivors, n)
		}
	}
	// Four proposers, two per survivor, before and after the stop.
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				propose(survivors[w%2])
			}
		})
	}
	testutil.WaitFor(t, 10*time.Second, "proposals before the stop", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 50
	})
	stopped.Store(time.Now().UnixNano())
	c.stop(victim)
	testutil.WaitFor(t, 10*time.Second, "a proposal acknowledged after the leader stopped", func() bool {
		return firstOK.Load() != 0
	})
	resume := time.Duration(firstOK.Load() - stopped.Load())
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	testutil.WaitFor(t, 10*time.Second, "proposals after the stop", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= before+50
	})
	close(done)
	wg.Wait()
	newLeader, _ := survivors[0].Leader(shard)
	t.Logf("leader %d of shard %d stopped; first proposal begun after the stop acknowledged %s later (new leader %d); %d acknowledged, failed: %v",
		leaders[shard], shard, resume.Round(time.Millisecond), newLeader, len(acked), failures)

	// Every acknowledged seq is applied exactly once on every survivor,
	// and no seq more than once.
	for _, n := range survivors {
		b, err := n.Read(ctxT(t, 10*time.Second), shard, consensustest.Seqs())
		if err != nil {
			t.Fatalf("replica %d: %v", n.ID(), err)
		}
		applied, err := consensustest.DecodeSeqs(b)
		if err != nil {
			t.Fatal(err)
		}
		count := make(map[uint64]int)
		for _, s := range applied {
			count[s]++
			if count[s] > 1 {
				t.Errorf("replica %d: seq %d applied twice", n.ID(), s)
			}
		}
		for _, s := range acked {
			if count[s] != 1 {
				t.Errorf("replica %d: acknowledged seq %d applied %d times", n.ID(), s, count[s])
			}
		}
	}
	if d := dumps(t, c, shard); !allEqual(d) {
		t.Errorf("survivors differ on shard %d", shard)
	}
	// The stopped replica comes back and catches up.
	c.start(victim, fs.forReplica(c.cfgs[victim].ReplicaID))
	want := dumps(t, c, shard)[survivors[0].ID()]
	testutil.WaitFor(t, 10*time.Second, "the restarted replica to catch up", func() bool {
		d, err := c.nodes[victim].Read(ctxT(t, 5*time.Second), shard, consensustest.Dump())
		return err == nil && bytes.Equal(d, want)
	})
}

// mustPropose proposes cmd, trying again after a timeout (the outcome of a
// timed-out proposal is unknown: use it where applying twice is harmless,
// as replicas are compared with each other).
func mustPropose(t testing.TB, n consensus.Node, shard uint64, cmd []byte) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := n.Propose(ctxT(t, time.Second), shard, cmd)
		if err == nil {
			return
		}
		if !errors.Is(err, consensus.ErrTimeout) || time.Now().After(deadline) {
			t.Fatalf("replica %d: propose to shard %d: %v", n.ID(), shard, err)
		}
	}
}

func errKind(err error) string {
	switch {
	case errors.Is(err, consensus.ErrTimeout):
		return "timeout"
	case errors.Is(err, consensus.ErrClosed):
		return "closed"
	default:
		return err.Error()
	}
}

// TestRestartFromDisk stops every replica and starts them again on their
// data directories: the state is the one before.
func TestRestartFromDisk(t *testing.T) {
	shards := []uint64{1, 2, 3}
	fs := newFactories()
	c := startCluster(t, testConfigs(t, 3, shards, nil), fs.forReplica)
	for i := range 60 {
		n := c.nodes[i%3]
		mustPropose(t, n, shards[i%3], consensustest.Set("k", string(rune('a'+i%26))))
		mustPropose(t, n, shards[i%3], consensustest.Seq(uint64(i)))
	}
	before := make(map[uint64][]byte)
	for _, shard := range shards {
		d := dumps(t, c, shard)
		if !allEqual(d) {
			t.Fatalf("replicas differ on shard %d before the restart", shard)
		}
		before[shard] = d[1]
	}
	c.stopAll()
	for i := range c.cfgs {
		c.start(i, fs.forReplica(c.cfgs[i].ReplicaID))
	}
	for _, shard := range shards {
		for id, d := range dumps(t, c, shard) {
			if !bytes.Equal(d, before[shard]) {
				t.Errorf("replica %d shard %d: state after restart differs", id, shard)
			}
		}
	}
	for _, n := range c.live() {
		if st := fs.of(n.ID()); st.Restores.Load() != 0 {
			t.Logf("replica %d restored %d snapshots (none expected below SnapshotEntries)", n.ID(), st.Restores.Load())
		}
	}
}

// TestSnapshotCatchUp makes the replicas snapshot and compact often while
// one replica is stopped: it can only catch up through a snapshot, and its
// state machines' Restore must rebuild the state exactly.
func TestSnapshotCatchUp(t *testing.T) {
	shards := []uint64{1}
	fs := newFactories()
	cfgs := testConfigs(t, 3, shards, func(c *dragonboat.Config) {
		c.SnapshotEntries = 20
		c.CompactionOverhead = 5
	})
	c := startCluster(t, cfgs, fs.forReplica)
	propose := func(from, count int) {
		t.Helper()
		for i := from; i < from+count; i++ {
			n := c.live()[i%len(c.live())]
			mustPropose(t, n, 1, consensustest.Seq(uint64(i)))
		}
	}
	propose(0, 30)
	const lagging = 2 // index of the replica that will lag
	c.stop(lagging)
	propose(30, 200) // ten snapshots' worth: the log it needs is compacted away
	want := dumps(t, c, 1)
	if !allEqual(want) {
		t.Fatal("live replicas differ")
	}
	for _, n := range c.live() {
		if st := fs.of(n.ID()); st.Saves.Load() == 0 {
			t.Errorf("replica %d took no snapshot with SnapshotEntries 20", n.ID())
		}
	}
	id := c.cfgs[lagging].ReplicaID
	c.start(lagging, fs.forReplica(id))
	var got []byte
	testutil.WaitFor(t, 15*time.Second, "the lagging replica to catch up", func() bool {
		d, err := c.nodes[lagging].Read(ctxT(t, 5*time.Second), 1, consensustest.Dump())
		got = d
		return err == nil && bytes.Equal(d, want[1])
	})
	if r := fs.of(id).Restores.Load(); r == 0 {
		t.Errorf("replica %d caught up without restoring a snapshot", id)
	}
	t.Logf("replica %d caught up through %d snapshot restore(s), state %d bytes", id, fs.of(id).Restores.Load(), len(got))
	// The whole cluster restarts, recovering from local snapshots.
	c.stopAll()
	for i := range c.cfgs {
		c.start(i, fs.forReplica(c.cfgs[i].ReplicaID))
	}
	for rid, d := range dumps(t, c, 1) {
		if !bytes.Equal(d, want[1]) {
			t.Errorf("replica %d: state after a restart from snapshots differs", rid)
		}
		if fs.of(rid).Restores.Load() == 0 {
			t.Errorf("replica %d restarted without restoring its snapshot", rid)
		}
	}
}

// TestNoQuorumTimesOut: with two of three replicas down, a proposal cannot
// commit and must end with ErrTimeout at its deadline, not hang.
func TestNoQuorumTimesOut(t *testing.T) {
	fs := newFactories()
	c := startCluster(t, testConfigs(t, 3, []uint64{1}, nil), fs.forReplica)
	mustPropose(t, c.nodes[0], 1, consensustest.Set("a", "b"))
	c.stop(1)
	c.stop(2)
	start := time.Now()
	_, err := c.nodes[0].Propose(ctxT(t, 400*time.Millisecond), 1, consensustest.Set("a", "c"))
	took := time.Since(start)
	if !errors.Is(err, consensus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Propose without quorum: %v, want ErrTimeout", err)
	}
	if took > 2*time.Second {
		t.Errorf("Propose without quorum took %s with a 400 ms deadline", took)
	}
	if _, err := c.nodes[0].Read(ctxT(t, 400*time.Millisecond), 1, consensustest.Get("a")); !errors.Is(err, consensus.ErrTimeout) {
		t.Errorf("Read without quorum: %v, want ErrTimeout", err)
	}
	// A canceled proposal returns promptly too.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c.nodes[0].Propose(ctx, 1, consensustest.Set("a", "d")); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled Propose without quorum: %v, want context.Canceled", err)
	}
}

// placed reports whether every live replica sees each shard led by its
// preferred replica.
func placed(c *cluster, shards []uint64) bool {
	for _, shard := range shards {
		want, _ := c.live()[0].(*dragonboat.Node).PreferredLeader(shard)
		for _, n := range c.live() {
			if l, ok := n.Leader(shard); !ok || l != want {
				return false
			}
		}
	}
	return true
}

// TestSpreadLeaders: with SpreadLeaders, the leaders of three shards end up
// on three different replicas, each on its preferred one; when a replica
// stops, its shards get other leaders, and when it comes back it gets
// them back.
func TestSpreadLeaders(t *testing.T) {
	shards := []uint64{10, 20, 30}
	fs := newFactories()
	c := startCluster(t, testConfigs(t, 3, shards, func(c *dragonboat.Config) { c.SpreadLeaders = true }), fs.forReplica)
	testutil.WaitFor(t, 30*time.Second, "leaders on their preferred replicas", func() bool { return placed(c, shards) })
	var leaders []uint64
	for _, shard := range shards {
		l, _ := c.nodes[0].Leader(shard)
		leaders = append(leaders, l)
	}
	slices.Sort(leaders)
	if !slices.Equal(leaders, []uint64{1, 2, 3}) {
		t.Errorf("leaders %v, want one per replica", leaders)
	}
	for _, shard := range shards {
		mustPropose(t, c.nodes[0], shard, consensustest.Set("x", "y"))
	}

	// Replica 3 leaves: shard 30 gets another leader and still works.
	c.stop(2)
	testutil.WaitFor(t, 30*time.Second, "a new leader for shard 30", func() bool {
		l, ok := c.nodes[0].Leader(30)
		return ok && l != 3
	})
	mustPropose(t, c.nodes[0], 30, consensustest.Set("x", "z"))
	// It comes back and leads shard 30 again.
	c.start(2, fs.forReplica(3))
	start := time.Now()
	testutil.WaitFor(t, 30*time.Second, "leaders back on their preferred replicas", func() bool { return placed(c, shards) })
	t.Logf("replica 3 back as leader of shard 30 %s after its restart", time.Since(start).Round(time.Millisecond))
}

// TestSpreadLeadersOnDemand: without the background keeper, one call of
// SpreadLeaders on every replica places the leaders.
func TestSpreadLeadersOnDemand(t *testing.T) {
	shards := []uint64{1, 2, 3, 4, 5, 6}
	fs := newFactories()
	c := startCluster(t, testConfigs(t, 3, shards, nil), fs.forReplica)
	c.waitLeaders(30 * time.Second)
	// One round is one pass: an election that moves a leader while it
	// runs (a loaded machine starves 10 ms ticks) needs another round.
	rounds := 0
	testutil.WaitFor(t, 30*time.Second, "leaders on their preferred replicas", func() bool {
		rounds++
		var wg sync.WaitGroup
		for _, n := range c.nodes {
			wg.Go(func() {
				if err := n.SpreadLeaders(ctxT(t, 30*time.Second)); err != nil && !errors.Is(err, dragonboat.ErrTransferFailed) {
					t.Errorf("replica %d: SpreadLeaders: %v", n.ID(), err)
				}
			})
		}
		wg.Wait()
		return placed(c, shards)
	})
	t.Logf("placed after %d round(s)", rounds)
	if p, _ := c.nodes[0].PreferredLeader(4); p != 1 {
		t.Errorf("PreferredLeader(4) = %d, want 1 (the fourth shard wraps around to the first replica)", p)
	}
	if _, ok := c.nodes[0].PreferredLeader(99); ok {
		t.Errorf("PreferredLeader of an unknown shard is known")
	}
}

// TestGoroutinesAfterClose: once every Node is closed, nothing of them
// keeps running.
func TestGoroutinesAfterClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := newFactories()
	c := startCluster(t, testConfigs(t, 3, []uint64{1, 2}, nil), fs.forReplica)
	for _, n := range c.live() {
		mustPropose(t, n, 2, consensustest.Set("a", "b"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_ = c.nodes[0].Watch(ctx)
	c.stopAll()
}
