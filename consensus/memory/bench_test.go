package memory_test

import (
	"fmt"
	"testing"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/internal/benchutil"
	"github.com/ananta-go/ananta/consensus/memory"
)

// BenchmarkPropose: concurrent proposers (8 per GOMAXPROCS) over 1 and 2
// shards.
func BenchmarkPropose(b *testing.B) {
	for _, count := range []int{1, 2} {
		b.Run(fmt.Sprintf("shards=%d", count), func(b *testing.B) {
			var shards []uint64
			for i := range count {
				shards = append(shards, uint64(i+1))
			}
			n, err := memory.New(shards, benchutil.NewCounter)
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			benchutil.Propose(b, 8, shards, func(uint64) consensus.Node { return n })
		})
	}
}
