package memory_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/consensustest"
	"github.com/ananta-go/ananta/consensus/memory"
	"github.com/ananta-go/ananta/internal/testutil"
)

func newCluster(t *testing.T, shards []uint64, factory consensus.Factory) []consensus.Node {
	t.Helper()
	n, err := memory.New(shards, factory)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return []consensus.Node{n}
}

// restart snapshots the node, closes it and restores the snapshot into a
// fresh node.
func restart(t *testing.T, nodes []consensus.Node, shards []uint64, factory consensus.Factory) []consensus.Node {
	t.Helper()
	old := nodes[0].(*memory.Node)
	var buf bytes.Buffer
	if err := old.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	fresh := newCluster(t, shards, factory)
	if err := fresh[0].(*memory.Node).Restore(&buf); err != nil {
		t.Fatal(err)
	}
	return fresh
}

func TestConformance(t *testing.T) {
	testutil.CheckGoroutines(t)
	consensustest.Run(t, consensustest.Harness{New: newCluster, Restart: restart})
}

func TestNewValidates(t *testing.T) {
	factory, _ := consensustest.NewFactory()
	for name, tc := range map[string]struct {
		shards  []uint64
		factory consensus.Factory
	}{
		"no shards":       {nil, factory},
		"duplicate shard": {[]uint64{1, 1}, factory},
		"nil factory":     {[]uint64{1}, nil},
		"nil machine":     {[]uint64{1}, func(uint64) consensus.StateMachine { return nil }},
	} {
		if _, err := memory.New(tc.shards, tc.factory); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

func TestRestoreRefusesOtherShards(t *testing.T) {
	factory, _ := consensustest.NewFactory()
	a, err := memory.New([]uint64{1, 2}, factory)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := memory.New([]uint64{1, 3}, factory)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var buf bytes.Buffer
	if err := a.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(bytes.NewReader(buf.Bytes())); !errors.Is(err, memory.ErrBadSnapshot) {
		t.Errorf("Restore of another shard set: %v, want ErrBadSnapshot", err)
	}
	if err := b.Restore(bytes.NewReader([]byte("garbage"))); !errors.Is(err, memory.ErrBadSnapshot) {
		t.Errorf("Restore of garbage: %v, want ErrBadSnapshot", err)
	}
	if err := a.Restore(bytes.NewReader(buf.Bytes()[:buf.Len()-1])); err == nil {
		t.Errorf("Restore of a truncated snapshot succeeded")
	}
}

func TestLeaderEventAtOnce(t *testing.T) {
	testutil.CheckGoroutines(t)
	factory, _ := consensustest.NewFactory()
	n, err := memory.New([]uint64{5}, factory)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ev := <-n.Watch(ctx)
	cancel()
	want := consensus.LeaderEvent{Shard: 5, Leader: memory.ReplicaID, Term: 1, Local: true}
	if ev != want {
		t.Errorf("first event %+v, want %+v", ev, want)
	}
}
