// Package consensustest is the conformance suite every consensus.Node
// implementation passes, and the KV state machine it drives.
//
// An implementation's tests call Run with a Harness that starts a cluster
// (one Node per replica) and restarts it through a snapshot:
//
//	func TestConformance(t *testing.T) {
//		consensustest.Run(t, consensustest.Harness{New: newCluster, Restart: restart})
//	}
//
// The suite checks: proposals return the state machine's result on every
// replica; rejected commands return the state machine's error as a
// *consensus.RejectedError and do not stop later proposals; a read on any
// replica sees every write acknowledged before it (linearizable); shards are
// independent; leadership events arrive and agree with Leader; concurrent
// proposals are each applied exactly once; contexts that are canceled or
// past their deadline are honoured and propose nothing; unknown shards
// fail with ErrUnknownShard; a snapshot and restore reproduces the state
// exactly; Close is idempotent and later calls fail with ErrClosed; the
// state machines' calling rules are kept.
package consensustest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
)

// Harness adapts an implementation to the suite.
type Harness struct {
	// New starts a cluster serving shards whose replicas make their state
	// machines with factory, and returns one Node per replica (one for a
	// single-replica implementation). It registers with t the cleanup
	// that closes the nodes and removes what they made.
	New func(t *testing.T, shards []uint64, factory consensus.Factory) []consensus.Node

	// Restart closes every node of a cluster made by New (or by Restart)
	// and starts it again with state machines from factory; the state must
	// come back through StateMachine.Save on the old state machines and
	// Restore on the new ones (the suite checks that Restore ran). It
	// returns the new nodes, whose cleanup it registers with t.
	Restart func(t *testing.T, nodes []consensus.Node, shards []uint64, factory consensus.Factory) []consensus.Node

	// Timeout bounds each operation the suite makes; 0 means 10 s.
	Timeout time.Duration
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, h Harness) {
	if h.New == nil || h.Restart == nil {
		t.Fatal("consensustest: Harness.New and Harness.Restart are required")
	}
	if h.Timeout == 0 {
		h.Timeout = 10 * time.Second
	}
	s := &suite{h: h, shards: []uint64{1, 2, 7}}
	factory, stats := NewFactory()
	nodes := h.New(t, s.shards, factory)
	if len(nodes) == 0 {
		t.Fatal("consensustest: Harness.New returned no nodes")
	}
	t.Run("Identity", func(t *testing.T) { s.identity(t, nodes) })
	t.Run("ProposeReturnsResult", func(t *testing.T) { s.proposeReturnsResult(t, nodes) })
	t.Run("EmptyCommand", func(t *testing.T) { s.emptyCommand(t, nodes) })
	t.Run("RejectedIsAResult", func(t *testing.T) { s.rejected(t, nodes, stats) })
	t.Run("QueryError", func(t *testing.T) { s.queryError(t, nodes) })
	t.Run("ReadAfterProposeOnAnyReplica", func(t *testing.T) { s.linearizable(t, nodes) })
	t.Run("ShardsAreIndependent", func(t *testing.T) { s.independent(t, nodes) })
	t.Run("LeaderEvents", func(t *testing.T) { s.leaderEvents(t, nodes) })
	t.Run("ConcurrentExactlyOnce", func(t *testing.T) { s.concurrent(t, nodes) })
	t.Run("Context", func(t *testing.T) { s.context(t, nodes) })
	t.Run("UnknownShard", func(t *testing.T) { s.unknownShard(t, nodes) })
	t.Run("SnapshotRestore", func(t *testing.T) { nodes = s.snapshotRestore(t, nodes, stats) })
	t.Run("Close", func(t *testing.T) { s.close(t, nodes) })
	if v := stats.Violations.Load(); v != 0 {
		t.Errorf("state machines saw %d breaches of their calling rules", v)
	}
}

type suite struct {
	h      Harness
	shards []uint64
	seq    uint64 // next sequence number for Seq commands, test goroutine only
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite) propose(t *testing.T, n consensus.Node, shard uint64, cmd []byte) []byte {
	t.Helper()
	res, err := n.Propose(s.ctx(t), shard, cmd)
	if err != nil {
		t.Fatalf("replica %d: Propose(shard %d, %q): %v", n.ID(), shard, cmd, err)
	}
	return res
}

func (s *suite) read(t *testing.T, n consensus.Node, shard uint64, q []byte) []byte {
	t.Helper()
	res, err := n.Read(s.ctx(t), shard, q)
	if err != nil {
		t.Fatalf("replica %d: Read(shard %d, %q): %v", n.ID(), shard, q, err)
	}
	return res
}

func (s *suite) identity(t *testing.T, nodes []consensus.Node) {
	ids := make(map[uint64]bool)
	for _, n := range nodes {
		if n.ID() == 0 || ids[n.ID()] {
			t.Errorf("replica IDs must be > 0 and distinct, got %d twice or 0", n.ID())
		}
		ids[n.ID()] = true
		got := n.Shards()
		if !slices.Equal(got, s.shards) {
			t.Errorf("replica %d: Shards() = %v, want %v", n.ID(), got, s.shards)
		}
		got[0] = 12345 // the caller's copy
		if n.Shards()[0] == 12345 {
			t.Errorf("replica %d: Shards() returned its internal slice", n.ID())
		}
	}
}

func (s *suite) proposeReturnsResult(t *testing.T, nodes []consensus.Node) {
	for i, n := range nodes {
		key := fmt.Sprintf("result-%d", i)
		if prev := s.propose(t, n, s.shards[0], Set(key, "one")); len(prev) != 0 {
			t.Errorf("replica %d: first Set returned %q, want empty", n.ID(), prev)
		}
		if prev := s.propose(t, n, s.shards[0], Set(key, "two")); string(prev) != "one" {
			t.Errorf("replica %d: second Set returned %q, want %q", n.ID(), prev, "one")
		}
		s.seq++
		if c := Uint64(s.propose(t, n, s.shards[0], Seq(s.seq))); c != 1 {
			t.Errorf("replica %d: Seq result %d, want 1", n.ID(), c)
		}
	}
}

func (s *suite) emptyCommand(t *testing.T, nodes []consensus.Node) {
	for _, n := range nodes {
		before := Uint64(s.read(t, n, s.shards[0], Count()))
		if res := s.propose(t, n, s.shards[0], nil); len(res) != 0 {
			t.Errorf("replica %d: empty command returned %q", n.ID(), res)
		}
		if after := Uint64(s.read(t, n, s.shards[0], Count())); after != before+1 {
			t.Errorf("replica %d: count %d after empty command, want %d", n.ID(), after, before+1)
		}
	}
}

func (s *suite) rejected(t *testing.T, nodes []consensus.Node, stats *Stats) {
	shard := s.shards[1]
	for _, n := range nodes {
		before := s.read(t, n, shard, Dump())
		_, err := n.Propose(s.ctx(t), shard, Reject("no ports left"))
		if !errors.Is(err, consensus.ErrRejected) {
			t.Fatalf("replica %d: rejected command returned %v, want ErrRejected", n.ID(), err)
		}
		var rej *consensus.RejectedError
		if !errors.As(err, &rej) {
			t.Fatalf("replica %d: %v is not a *RejectedError", n.ID(), err)
		}
		if rej.Msg != "no ports left" || rej.Shard != shard {
			t.Errorf("replica %d: RejectedError{Shard: %d, Msg: %q}, want shard %d, %q", n.ID(), rej.Shard, rej.Msg, shard, "no ports left")
		}
		if errors.Is(err, consensus.ErrTimeout) || errors.Is(err, consensus.ErrClosed) {
			t.Errorf("replica %d: a rejection must not look like a replication failure: %v", n.ID(), err)
		}
		if after := s.read(t, n, shard, Dump()); !bytes.Equal(before, after) {
			t.Errorf("replica %d: a rejected command changed the state", n.ID())
		}
		// Later proposals go on.
		s.propose(t, n, shard, Set("after-reject", fmt.Sprint(n.ID())))
		if got := s.read(t, n, shard, Get("after-reject")); string(got) != fmt.Sprint(n.ID()) {
			t.Errorf("replica %d: read %q after the rejected command, want %q", n.ID(), got, fmt.Sprint(n.ID()))
		}
	}
	if stats.Rejected.Load() == 0 {
		t.Errorf("no state machine counted a rejection")
	}
}

func (s *suite) queryError(t *testing.T, nodes []consensus.Node) {
	for _, n := range nodes {
		_, err := n.Read(s.ctx(t), s.shards[0], Get("no-such-key"))
		if !errors.Is(err, consensus.ErrRejected) || !errors.Is(err, ErrNotFound) {
			t.Errorf("replica %d: Read of a missing key returned %v, want ErrRejected wrapping ErrNotFound", n.ID(), err)
		}
	}
}

func (s *suite) linearizable(t *testing.T, nodes []consensus.Node) {
	shard := s.shards[2]
	for i := range 3 * len(nodes) {
		w := nodes[i%len(nodes)]
		value := fmt.Sprint(i)
		s.propose(t, w, shard, Set("lin", value))
		for _, r := range nodes {
			if got := s.read(t, r, shard, Get("lin")); string(got) != value {
				t.Fatalf("write %d acknowledged by replica %d; replica %d then read %q", i, w.ID(), r.ID(), got)
			}
		}
	}
}

func (s *suite) independent(t *testing.T, nodes []consensus.Node) {
	n := nodes[0]
	for _, shard := range s.shards {
		s.propose(t, n, shard, Set("own", fmt.Sprint("shard-", shard)))
	}
	s.propose(t, n, s.shards[0], Set("only-in-first", "x"))
	for _, r := range nodes {
		for _, shard := range s.shards {
			if got := s.read(t, r, shard, Get("own")); string(got) != fmt.Sprint("shard-", shard) {
				t.Errorf("replica %d shard %d: own = %q", r.ID(), shard, got)
			}
		}
		for _, shard := range s.shards[1:] {
			if _, err := r.Read(s.ctx(t), shard, Get("only-in-first")); !errors.Is(err, ErrNotFound) {
				t.Errorf("replica %d: a key set in shard %d is visible in shard %d (err %v)", r.ID(), s.shards[0], shard, err)
			}
		}
	}
}

func (s *suite) leaderEvents(t *testing.T, nodes []consensus.Node) {
	ids := make(map[uint64]bool)
	for _, n := range nodes {
		ids[n.ID()] = true
	}
	deadline := time.After(s.h.Timeout)
	for _, n := range nodes {
		ctx, cancel := context.WithCancel(context.Background())
		events := n.Watch(ctx)
		known := make(map[uint64]consensus.LeaderEvent)
		for len(known) < len(s.shards) {
			select {
			case ev, ok := <-events:
				if !ok {
					cancel()
					t.Fatalf("replica %d: Watch channel closed early", n.ID())
				}
				if !slices.Contains(s.shards, ev.Shard) {
					t.Errorf("replica %d: event for unknown shard %d", n.ID(), ev.Shard)
				}
				if ev.Leader != 0 && !ids[ev.Leader] {
					t.Errorf("replica %d: event names leader %d, not a replica", n.ID(), ev.Leader)
				}
				if ev.Local != (ev.Leader == n.ID()) {
					t.Errorf("replica %d: event %+v: Local disagrees with Leader", n.ID(), ev)
				}
				if ev.Leader != 0 {
					known[ev.Shard] = ev
				}
			case <-deadline:
				cancel()
				t.Fatalf("replica %d: no leader event for every shard in %s (got %v)", n.ID(), s.h.Timeout, known)
			}
		}
		cancel()
		// The channel closes once ctx is done; drain it.
		for range events {
		}
		for _, shard := range s.shards {
			if _, ok := n.Leader(shard); !ok {
				t.Errorf("replica %d: Leader(%d) unknown after an event named one", n.ID(), shard)
			}
		}
	}
	// Eventually every replica agrees on every shard's leader.
	end := time.Now().Add(s.h.Timeout)
	for _, shard := range s.shards {
		for {
			agree := true
			first, _ := nodes[0].Leader(shard)
			for _, n := range nodes {
				l, ok := n.Leader(shard)
				agree = agree && ok && l == first
			}
			if agree {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("replicas do not agree on the leader of shard %d", shard)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (s *suite) concurrent(t *testing.T, nodes []consensus.Node) {
	const workers, each = 8, 20
	base := s.seq
	s.seq += workers * each
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				seq := base + uint64(w*each+i) + 1
				n := nodes[(w+i)%len(nodes)]
				shard := s.shards[int(seq)%len(s.shards)]
				res, err := n.Propose(s.ctx(t), shard, Seq(seq))
				if err != nil {
					errs <- fmt.Errorf("replica %d: seq %d: %w", n.ID(), seq, err)
					continue
				}
				if c := Uint64(res); c != 1 {
					errs <- fmt.Errorf("replica %d: seq %d applied %d times", n.ID(), seq, c)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, r := range nodes {
		count := make(map[uint64]int)
		for _, shard := range s.shards {
			seqs, err := DecodeSeqs(s.read(t, r, shard, Seqs()))
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range seqs {
				if q > base && q <= base+workers*each {
					if int(q)%len(s.shards) != slices.Index(s.shards, shard) {
						t.Errorf("replica %d: seq %d landed in shard %d", r.ID(), q, shard)
					}
					count[q]++
				}
			}
		}
		for q := base + 1; q <= base+workers*each; q++ {
			if count[q] != 1 {
				t.Errorf("replica %d: seq %d applied %d times, want 1", r.ID(), q, count[q])
			}
		}
	}
}

func (s *suite) context(t *testing.T, nodes []consensus.Node) {
	shard := s.shards[0]
	for _, n := range nodes {
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		key := fmt.Sprint("canceled-", n.ID())
		if _, err := n.Propose(canceled, shard, Set(key, "x")); !errors.Is(err, context.Canceled) || errors.Is(err, consensus.ErrTimeout) {
			t.Errorf("replica %d: Propose with a canceled context returned %v, want context.Canceled", n.ID(), err)
		}
		if _, err := n.Read(canceled, shard, Get(key)); !errors.Is(err, context.Canceled) {
			t.Errorf("replica %d: Read with a canceled context returned %v, want context.Canceled", n.ID(), err)
		}
		past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		key2 := fmt.Sprint("past-", n.ID())
		if _, err := n.Propose(past, shard, Set(key2, "x")); !errors.Is(err, consensus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("replica %d: Propose past the deadline returned %v, want ErrTimeout and context.DeadlineExceeded", n.ID(), err)
		}
		if _, err := n.Read(past, shard, Get(key2)); !errors.Is(err, consensus.ErrTimeout) {
			t.Errorf("replica %d: Read past the deadline returned %v, want ErrTimeout", n.ID(), err)
		}
		// Nothing was proposed.
		for _, k := range []string{key, key2} {
			if _, err := n.Read(s.ctx(t), shard, Get(k)); !errors.Is(err, ErrNotFound) {
				t.Errorf("replica %d: a proposal with a done context was applied (read %q: %v)", n.ID(), k, err)
			}
		}
	}
}

func (s *suite) unknownShard(t *testing.T, nodes []consensus.Node) {
	const bogus = 999_999
	for _, n := range nodes {
		if _, err := n.Propose(s.ctx(t), bogus, Set("k", "v")); !errors.Is(err, consensus.ErrUnknownShard) {
			t.Errorf("replica %d: Propose to an unknown shard returned %v", n.ID(), err)
		}
		if _, err := n.Read(s.ctx(t), bogus, Dump()); !errors.Is(err, consensus.ErrUnknownShard) {
			t.Errorf("replica %d: Read of an unknown shard returned %v", n.ID(), err)
		}
		if l, ok := n.Leader(bogus); ok {
			t.Errorf("replica %d: Leader of an unknown shard = %d", n.ID(), l)
		}
	}
}

func (s *suite) snapshotRestore(t *testing.T, nodes []consensus.Node, stats *Stats) []consensus.Node {
	for i := range 40 {
		for _, shard := range s.shards {
			n := nodes[i%len(nodes)]
			s.propose(t, n, shard, Set(fmt.Sprint("snap-", i), fmt.Sprint(i*int(shard))))
			s.seq++
			s.propose(t, n, shard, Seq(s.seq))
			if i%10 == 0 {
				n.Propose(s.ctx(t), shard, Reject("still rejected"))
			}
		}
	}
	want := make(map[uint64][]byte)
	for _, shard := range s.shards {
		want[shard] = s.read(t, nodes[0], shard, Dump())
	}
	if v := stats.Violations.Load(); v != 0 {
		t.Errorf("state machines saw %d breaches of their calling rules before the restart", v)
	}
	factory, fresh := NewFactory()
	nodes = s.h.Restart(t, nodes, s.shards, factory)
	if fresh.Restores.Load() == 0 {
		// A replicated implementation may restore while it catches up:
		// wait until the reads below have passed before deciding.
		defer func() {
			if fresh.Restores.Load() == 0 {
				t.Errorf("the restarted cluster never called StateMachine.Restore")
			}
		}()
	}
	for _, n := range nodes {
		for _, shard := range s.shards {
			if got := s.read(t, n, shard, Dump()); !bytes.Equal(got, want[shard]) {
				t.Errorf("replica %d shard %d: state after restart differs from before", n.ID(), shard)
			}
		}
	}
	// The restored cluster goes on.
	for _, n := range nodes {
		s.seq++
		if c := Uint64(s.propose(t, n, s.shards[0], Seq(s.seq))); c != 1 {
			t.Errorf("replica %d: seq after restart applied %d times", n.ID(), c)
		}
	}
	if v := fresh.Violations.Load(); v != 0 {
		t.Errorf("restored state machines saw %d breaches of their calling rules", v)
	}
	return nodes
}

func (s *suite) close(t *testing.T, nodes []consensus.Node) {
	for _, n := range nodes {
		events := n.Watch(context.Background())
		if err := n.Close(); err != nil {
			t.Errorf("replica %d: Close: %v", n.ID(), err)
		}
		if err := n.Close(); err != nil {
			t.Errorf("replica %d: second Close: %v", n.ID(), err)
		}
		if _, err := n.Propose(s.ctx(t), s.shards[0], Set("closed", "x")); !errors.Is(err, consensus.ErrClosed) {
			t.Errorf("replica %d: Propose after Close returned %v", n.ID(), err)
		}
		if _, err := n.Read(s.ctx(t), s.shards[0], Dump()); !errors.Is(err, consensus.ErrClosed) {
			t.Errorf("replica %d: Read after Close returned %v", n.ID(), err)
		}
		if _, ok := n.Leader(s.shards[0]); ok {
			t.Errorf("replica %d: Leader known after Close", n.ID())
		}
		if !slices.Equal(n.Shards(), s.shards) {
			t.Errorf("replica %d: Shards() after Close = %v", n.ID(), n.Shards())
		}
		timeout := time.After(s.h.Timeout)
	drain:
		for {
			select {
			case _, ok := <-events:
				if !ok {
					break drain
				}
			case <-timeout:
				t.Fatalf("replica %d: Watch channel still open after Close", n.ID())
			}
		}
		if _, ok := <-n.Watch(context.Background()); ok {
			t.Errorf("replica %d: Watch after Close returned an open channel", n.ID())
		}
	}
}
