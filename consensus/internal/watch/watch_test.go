package watch

import (
	"context"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/internal/testutil"
)

func recv(t *testing.T, ch <-chan consensus.LeaderEvent) consensus.LeaderEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return consensus.LeaderEvent{}
}

func TestCurrentStateFirstThenChanges(t *testing.T) {
	testutil.CheckGoroutines(t)
	h := New([]uint64{2, 1})
	defer h.Close()
	h.Publish(consensus.LeaderEvent{Shard: 2, Leader: 3, Term: 4})
	ch := h.Watch(context.Background())
	if ev := recv(t, ch); ev != (consensus.LeaderEvent{Shard: 1}) {
		t.Errorf("first event %+v, want shard 1 without leader", ev)
	}
	if ev := recv(t, ch); ev != (consensus.LeaderEvent{Shard: 2, Leader: 3, Term: 4}) {
		t.Errorf("second event %+v", ev)
	}
	h.Publish(consensus.LeaderEvent{Shard: 1, Leader: 1, Term: 1, Local: true})
	if ev := recv(t, ch); ev.Shard != 1 || ev.Leader != 1 || !ev.Local {
		t.Errorf("change %+v", ev)
	}
	if ev, ok := h.Current(1); !ok || ev.Leader != 1 {
		t.Errorf("Current(1) = %+v, %v", ev, ok)
	}
	if _, ok := h.Current(9); ok {
		t.Errorf("Current of an unknown shard")
	}
}

func TestSlowReceiverGetsLatestPerShard(t *testing.T) {
	testutil.CheckGoroutines(t)
	h := New([]uint64{1, 2})
	defer h.Close()
	ch := h.Watch(context.Background())
	// Nobody reads while a hundred changes happen: the publisher must not
	// block, and the receiver ends with the latest state of each shard.
	for term := uint64(1); term <= 100; term++ {
		h.Publish(consensus.LeaderEvent{Shard: 1, Leader: term%3 + 1, Term: term})
		h.Publish(consensus.LeaderEvent{Shard: 2, Leader: 1, Term: term})
	}
	last := make(map[uint64]consensus.LeaderEvent)
	var prevTerm = map[uint64]uint64{}
	for len(last) < 2 || last[1].Term != 100 || last[2].Term != 100 {
		ev := recv(t, ch)
		if ev.Term < prevTerm[ev.Shard] {
			t.Fatalf("shard %d went back from term %d to %d", ev.Shard, prevTerm[ev.Shard], ev.Term)
		}
		prevTerm[ev.Shard] = ev.Term
		last[ev.Shard] = ev
	}
}

func TestDuplicatesAndUnknownShardsIgnored(t *testing.T) {
	h := New([]uint64{1})
	defer h.Close()
	ch := h.Watch(context.Background())
	recv(t, ch) // initial state
	ev := consensus.LeaderEvent{Shard: 1, Leader: 2, Term: 3}
	h.Publish(ev)
	h.Publish(ev)
	h.Publish(consensus.LeaderEvent{Shard: 7, Leader: 2, Term: 3})
	if got := recv(t, ch); got != ev {
		t.Errorf("got %+v", got)
	}
	select {
	case got := <-ch:
		t.Errorf("unexpected event %+v", got)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestCancelAndClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	h := New([]uint64{1})
	ctx, cancel := context.WithCancel(context.Background())
	a := h.Watch(ctx)
	b := h.Watch(context.Background())
	cancel()
	for range a { // closes once ctx is done
	}
	h.Close()
	for range b { // closes with the hub
	}
	h.Close() // idempotent
	if _, ok := <-h.Watch(context.Background()); ok {
		t.Error("Watch after Close returned an open channel")
	}
	h.Publish(consensus.LeaderEvent{Shard: 1, Leader: 1}) // no effect, no panic
}
