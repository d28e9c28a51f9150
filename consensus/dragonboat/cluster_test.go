package dragonboat_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/dragonboat"
)

// freePorts returns n distinct loopback addresses whose ports were free a
// moment ago.
func freePorts(t testing.TB, n int) []string {
	t.Helper()
	var ls []net.Listener
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

// cluster is a set of replicas on loopback in this process.
type cluster struct {
	t     testing.TB
	cfgs  []dragonboat.Config
	nodes []*dragonboat.Node // nil where stopped
}

// testConfigs returns the configs of a cluster of size replicas: fast
// ticks (10 ms, election after 100-200 ms) and a light footprint.
func testConfigs(t testing.TB, size int, shards []uint64, tweak func(*dragonboat.Config)) []dragonboat.Config {
	t.Helper()
	addrs := freePorts(t, size)
	members := make(map[uint64]string)
	for i, a := range addrs {
		members[uint64(i+1)] = a
	}
	dir := t.TempDir()
	var cfgs []dragonboat.Config
	for i := range size {
		c := dragonboat.Config{
			ReplicaID:      uint64(i + 1),
			Members:        members,
			Shards:         shards,
			DataDir:        filepath.Join(dir, fmt.Sprint("replica-", i+1)),
			RTTMillisecond: 10,
			ElectionRTT:    10,
			HeartbeatRTT:   1,
			Lightweight:    true,
		}
		if tweak != nil {
			tweak(&c)
		}
		cfgs = append(cfgs, c)
	}
	return cfgs
}

// startCluster starts every replica of cfgs; the nodes close when the test
// ends.
func startCluster(t testing.TB, cfgs []dragonboat.Config, factory func(replica uint64) consensus.Factory) *cluster {
	t.Helper()
	c := &cluster{t: t, cfgs: cfgs, nodes: make([]*dragonboat.Node, len(cfgs))}
	t.Cleanup(c.stopAll)
	for i := range cfgs {
		c.start(i, factory(cfgs[i].ReplicaID))
	}
	return c
}

func (c *cluster) start(i int, f consensus.Factory) {
	c.t.Helper()
	n, err := dragonboat.New(c.cfgs[i], f)
	if err != nil {
		c.t.Fatalf("start replica %d: %v", c.cfgs[i].ReplicaID, err)
	}
	c.nodes[i] = n
}

func (c *cluster) stop(i int) {
	if c.nodes[i] != nil {
		c.nodes[i].Close()
		c.nodes[i] = nil
	}
}

func (c *cluster) stopAll() {
	for i := range c.nodes {
		c.stop(i)
	}
}

// live returns the running nodes.
func (c *cluster) live() []consensus.Node {
	var out []consensus.Node
	for _, n := range c.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// index returns the position of replica in the cluster.
func (c *cluster) index(replica uint64) int {
	for i, cfg := range c.cfgs {
		if cfg.ReplicaID == replica {
			return i
		}
	}
	c.t.Fatalf("no replica %d", replica)
	return -1
}

// waitLeaders waits until every live replica knows the same leader for
// every shard, among the live replicas, and returns them.
func (c *cluster) waitLeaders(timeout time.Duration) map[uint64]uint64 {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		leaders := make(map[uint64]uint64)
		ok := true
		for _, shard := range c.cfgs[0].Shards {
			for _, n := range c.live() {
				l, known := n.Leader(shard)
				if !known || c.nodes[c.index(l)] == nil || (leaders[shard] != 0 && leaders[shard] != l) {
					ok = false
				}
				leaders[shard] = l
			}
		}
		if ok {
			return leaders
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no agreed live leader for every shard within %s", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// snapshotAll makes every live replica snapshot every shard.
func (c *cluster) snapshotAll(ctx context.Context) {
	c.t.Helper()
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		for _, shard := range n.Shards() {
			if _, err := n.RequestSnapshot(ctx, shard); err != nil && !errors.Is(err, dragonboat.ErrSnapshotUpToDate) {
				c.t.Fatalf("replica %d shard %d: snapshot: %v", n.ID(), shard, err)
			}
		}
	}
}
