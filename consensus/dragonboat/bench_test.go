package dragonboat_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/dragonboat"
	"github.com/ananta-go/ananta/consensus/internal/benchutil"
)

// BenchmarkPropose: three replicas on loopback in this process with
// Dragonboat's default engine and log database (on disk, fsynced), shard
// leaders spread over the replicas (SpreadLeaders), 32 proposers per
// GOMAXPROCS over 1 and 2 shards, each proposing on its shard's leader.
func BenchmarkPropose(b *testing.B) {
	for _, count := range []int{1, 2} {
		var shards []uint64
		for i := range count {
			shards = append(shards, uint64(i+1))
		}
		cfgs := testConfigs(b, 3, shards, func(c *dragonboat.Config) {
			c.Lightweight = false // Dragonboat's defaults
			c.SpreadLeaders = true
		})
		c := startCluster(b, cfgs, func(uint64) consensus.Factory { return benchutil.NewCounter })
		deadline := time.Now().Add(30 * time.Second)
		for !placed(c, shards) {
			if time.Now().After(deadline) {
				b.Fatal("shard leaders not on their preferred replicas")
			}
			time.Sleep(10 * time.Millisecond)
		}
		leaderOf := func(shard uint64) consensus.Node {
			l, _ := c.nodes[0].Leader(shard)
			return c.nodes[c.index(l)]
		}
		b.Run(fmt.Sprintf("shards=%d", count), func(b *testing.B) {
			benchutil.Propose(b, 32, shards, leaderOf)
		})
		c.stopAll()
	}
}
