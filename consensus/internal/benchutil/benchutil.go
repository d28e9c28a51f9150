// Package benchutil drives the Propose benchmarks of the consensus
// implementations the same way: concurrent proposers spread over shards,
// with latency percentiles and throughput reported as benchmark metrics.
package benchutil

import (
	"context"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
)

// Counter is the state machine of the benchmarks: it counts commands, so
// that what is measured is the replication, not the state machine.
type Counter struct{ n uint64 }

// NewCounter is a consensus.Factory of Counters.
func NewCounter(uint64) consensus.StateMachine { return new(Counter) }

// Apply implements consensus.StateMachine.
func (c *Counter) Apply([]byte) ([]byte, error) { c.n++; return nil, nil }

// Query implements consensus.StateMachine.
func (c *Counter) Query([]byte) ([]byte, error) { return nil, nil }

// Save implements consensus.StateMachine.
func (c *Counter) Save(w io.Writer) error {
	var b [8]byte
	for i := range b {
		b[i] = byte(c.n >> (8 * i))
	}
	_, err := w.Write(b[:])
	return err
}

// Restore implements consensus.StateMachine.
func (c *Counter) Restore(r io.Reader) error {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return err
	}
	c.n = 0
	for i := range b {
		c.n |= uint64(b[i]) << (8 * i)
	}
	return nil
}

// Propose runs b.N proposals from goroutines (b.RunParallel with the given
// parallelism), goroutine g proposing to shards[g mod len(shards)] through
// pick(shard). It reports p50-ms and p99-ms (latency of one Propose) and
// proposals/s.
func Propose(b *testing.B, parallelism int, shards []uint64, pick func(shard uint64) consensus.Node) {
	b.ReportAllocs()
	var (
		next  atomic.Int64
		mu    sync.Mutex
		lat   []time.Duration
		fails atomic.Int64
	)
	cmd := []byte("lease 198.19.0.1:1024-1031")
	b.SetParallelism(parallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		g := next.Add(1) - 1
		shard := shards[int(g)%len(shards)]
		n := pick(shard)
		local := make([]time.Duration, 0, 1024)
		// One deadline for the goroutine's whole run, so that what is
		// measured is Propose, not the making of contexts.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		for pb.Next() {
			t0 := time.Now()
			_, err := n.Propose(ctx, shard, cmd)
			local = append(local, time.Since(t0))
			if err != nil {
				fails.Add(1)
			}
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if f := fails.Load(); f > 0 {
		b.Errorf("%d of %d proposals failed", f, b.N)
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
		b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "proposals/s")
}
