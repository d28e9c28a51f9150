package manager_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
)

// slowNode adds a fixed commit latency to every proposal of a consensus
// node (proposals still run concurrently), standing in for the fsync and
// the round trip of a replicated log.
type slowNode struct {
	consensus.Node
	delay time.Duration
}

func (n slowNode) Propose(ctx context.Context, shard uint64, cmd []byte) ([]byte, error) {
	t := time.NewTimer(n.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return n.Node.Propose(ctx, shard, cmd)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestSNATFairness: a flood of allocation requests from one VIP (100
// requests always outstanding, from 100 DIPs, against one of the other
// VIP) leaves the other VIP's median allocation latency within 2x of its
// unloaded value.
func TestSNATFairness(t *testing.T) {
	if testing.Short() {
		t.Skip("fairness measurement skipped in -short mode")
	}
	if raceEnabled {
		t.Skip("fairness measurement skipped under the race detector: it measures latencies, and the detector's CPU cost under a 100-client flood swamps them")
	}
	testutil.CheckGoroutines(t)
	const delay = 5 * time.Millisecond
	tm := startManager(t, []uint64{1}, func(n consensus.Node) consensus.Node { return slowNode{n, delay} }, func(c *manager.Config) {
		c.SNATRate = 1e9 // the queues are under test, not the rate limit
		c.SNATBurst = 1e6
		c.SNATBatchSize = 16 // the flood is deeper than a batch
	})
	ctx := ctxT(t, 120*time.Second)
	const flooder, quiet = "198.19.0.1", "198.19.0.2"
	for _, v := range []string{flooder, quiet} {
		if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(v, true, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	// The quiet VIP allocates one range at a time and gives it back.
	measure := func(n int) []time.Duration {
		var out []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			r, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: quiet, Dip: "10.9.0.1", Host: "198.18.9.1", Hint: 8})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, time.Since(start))
			if _, err := tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: quiet, Dip: "10.9.0.1", Ranges: []*api.PortRange{r.Lease.Range}}); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	// Another tenant's configuration changes.
	const other = "198.19.0.3"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(other, false, 1)}); err != nil {
		t.Fatal(err)
	}
	configure := func(n int) []time.Duration {
		var out []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			if _, err := tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(other, false, 1+i%3)}); err != nil {
				t.Fatal(err)
			}
			out = append(out, time.Since(start))
		}
		return out
	}
	measure(20) // warm up
	unloaded := measure(100)
	cfgUnloaded := configure(30)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var flood atomic.Int64
	for d := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Successes and "exhausted" answers both went through the
				// queue and a proposal.
				tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: flooder, Dip: fmt.Sprintf("10.8.0.%d", d+1), Host: "198.18.8.1", Hint: 8})
				flood.Add(1)
			}
		}()
	}
	waitFor(t, 30*time.Second, "the flood to run", func() bool { return flood.Load() >= 2000 })
	f0 := flood.Load()
	loaded := measure(100)
	cfgLoaded := configure(30)
	f1 := flood.Load()
	close(stop)
	wg.Wait()

	mu, ml := median(unloaded), median(loaded)
	t.Logf("quiet VIP median allocation latency: unloaded %v, under flood %v (%.2fx); flood requests served meanwhile: %d (%.0fx the quiet VIP's)",
		mu, ml, float64(ml)/float64(mu), f1-f0, float64(f1-f0)/float64(len(loaded)))
	if f1-f0 < 50*int64(len(loaded)) {
		t.Fatalf("the flood served only %d requests while the quiet VIP made %d: not a flood", f1-f0, len(loaded))
	}
	if ml > 2*mu {
		t.Fatalf("median latency under flood %v is more than 2x the unloaded %v", ml, mu)
	}
	cu, cl := median(cfgUnloaded), median(cfgLoaded)
	t.Logf("another tenant's VIP update median latency: unloaded %v, under flood %v (%.2fx)", cu, cl, float64(cl)/float64(cu))
	if cl > 2*cu {
		t.Fatalf("VIP configuration under a SNAT flood: median %v, more than 2x the unloaded %v", cl, cu)
	}
}

// healthGate holds every health proposal until release is closed.
type healthGate struct {
	consensus.Node
	release chan struct{}
	held    atomic.Int64
}

func (n *healthGate) Propose(ctx context.Context, shard uint64, cmd []byte) ([]byte, error) {
	var c api.Command
	if err := proto.Unmarshal(cmd, &c); err == nil && c.GetHealth() != nil {
		n.held.Add(1)
		select {
		case <-n.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return n.Node.Propose(ctx, shard, cmd)
}

// TestSNATNotStarvedByPriorityWork: configuration and health proposals go
// before SNAT batches, but priority work that never ends (here a health
// report whose proposal hangs) does not stop SNAT: one batch at a time
// still goes.
func TestSNATNotStarvedByPriorityWork(t *testing.T) {
	testutil.CheckGoroutines(t)
	gate := &healthGate{release: make(chan struct{})}
	tm := startManager(t, []uint64{1}, func(n consensus.Node) consensus.Node { gate.Node = n; return gate }, nil)
	ctx := ctxT(t, 60*time.Second)
	const vip = "198.19.0.80"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 8)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := tm.agent.ReportHealth(ctx, &api.ReportHealthRequest{AgentId: "ha-1", Reports: []*api.HealthReport{{Vip: vip, Dip: "10.1.0.1", Port: 8080}}})
		done <- err
	}()
	waitFor(t, 10*time.Second, "the health proposal to hang", func() bool { return gate.held.Load() == 1 })
	for i := 0; i < 20; i++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := tm.snat.AllocatePorts(actx, &api.AllocatePortsRequest{Vip: vip, Dip: fmt.Sprintf("10.2.0.%d", i+1), Host: "198.18.0.1", Hint: 8})
		cancel()
		if err != nil {
			t.Fatalf("allocation %d while a health proposal is in progress: %v", i, err)
		}
	}
	close(gate.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
