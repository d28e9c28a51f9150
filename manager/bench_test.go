package manager_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// benchRTT is the Raft tick of the benchmarks' clusters: elections after
// 300 to 600 ms. With three replicas and their clients sharing two cores,
// the tests' 10 ms tick (100 ms elections) lets heartbeats starve under
// load and leaders change in the middle of a measurement.
const benchRTT = 30

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkSNATAllocate: AllocatePorts through gRPC on three Manager
// replicas on Dragonboat with its normal (fsynced) log database, two
// shards with leaders on different replicas, N concurrent clients spread
// over the replicas and over 16 VIPs per shard. Reports p50 and p99
// latency and allocations per second. The disk/ variants keep the logs in
// the test's temporary directory (the machine's disk, fsync included);
// the tmpfs/ variants in /dev/shm, where fsync costs nothing, which shows
// what the software costs without the disk.
func BenchmarkSNATAllocate(b *testing.B) {
	for _, where := range []string{"disk", "tmpfs"} {
		for _, conc := range benchClients {
			b.Run(fmt.Sprintf("%s/clients=%d", where, conc), func(b *testing.B) {
				dir := b.TempDir()
				if where == "tmpfs" {
					d, err := os.MkdirTemp("/dev/shm", "ananta-bench-")
					if err != nil {
						b.Skip("no /dev/shm:", err)
					}
					b.Cleanup(func() { os.RemoveAll(d) })
					dir = d
				}
				benchAllocate(b, dir, conc, []uint64{1, 2})
			})
		}
	}
}

// BenchmarkSNATAllocateShards: BenchmarkSNATAllocate on disk with 256
// clients and 1, 2 or 4 shards (16 VIPs per shard), to show how throughput
// follows the number of shards when their leaders spread over the
// replicas.
func BenchmarkSNATAllocateShards(b *testing.B) {
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			var shards []uint64
			for i := range n {
				shards = append(shards, uint64(i+1))
			}
			benchAllocate(b, b.TempDir(), 256, shards)
		})
	}
}

func benchAllocate(b *testing.B, dir string, conc int, shards []uint64) {
	b.ReportAllocs()
	c := newClusterIn(b, dir, 3, shards, false, benchRTT, func(cfg *manager.Config) { cfg.SNATRate = 1e6; cfg.SNATBurst = 1e6 })
	c.waitSpread(30 * time.Second)
	ctx := ctxT(b, 10*time.Minute)
	var vips []string
	vc := api.NewVIPServiceClient(dial(b, c.reps[0].addr))
	for _, s := range shards {
		for _, v := range vipsInShard(b, c.reps[0].m, s, 16) {
			if _, err := vc.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(v, true, 1)}); err != nil {
				b.Fatal(err)
			}
			vips = append(vips, v)
		}
	}
	clients := make([]api.SNATServiceClient, len(c.reps))
	for i, r := range c.reps {
		clients[i] = api.NewSNATServiceClient(dial(b, r.addr))
	}
	var next atomic.Int64
	lat := make([][]time.Duration, conc)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := clients[w%len(clients)]
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				vip := vips[int(i)%len(vips)]
				dip := fmt.Sprintf("10.%d.%d.%d", 1+i/62500, (i/250)%250, i%250+1)
				t0 := time.Now()
				_, err := cl.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: dip, Host: "198.18.0.1", Hint: 8})
				if err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	b.ReportMetric(ms(percentile(all, 0.5)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "allocs/s")
}

// BenchmarkVIPProgram: a VIP change (UpdateVIP) until it is applied on 8
// Muxes and 16 Host Agents, agent clients (package agent) with in-memory
// Targets connected by gRPC to three Manager replicas on Dragonboat
// (normal log database). The latency is measured from the call until the
// last agent applied the change's version (observed in the agents'
// OnApplied hooks, in this process). The wait_for_agents variant measures
// the API call with wait_for_agents instead: the Manager answers once
// every agent reported the version applied (ReportApplied, replicated),
// and the benchmark checks that the answer says complete.
func BenchmarkVIPProgram(b *testing.B) {
	b.Run("observed", func(b *testing.B) { benchVIPProgram(b, false) })
	b.Run("wait_for_agents", func(b *testing.B) { benchVIPProgram(b, true) })
}

func benchVIPProgram(b *testing.B, apiWait bool) {
	b.ReportAllocs()
	shards := []uint64{1, 2}
	c := newClusterRTT(b, 3, shards, false, benchRTT, nil)
	c.waitSpread(30 * time.Second)
	ctx := ctxT(b, 10*time.Minute)
	vc := api.NewVIPServiceClient(dial(b, c.reps[0].addr))
	const vip = "198.19.0.100"
	r, err := vc.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, false, 8)})
	if err != nil {
		b.Fatal(err)
	}
	shard := r.Vip.Shard

	const agents = 24
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	applied := make([]uint64, agents)
	for i := range agents {
		kind, id := agent.KindMux, fmt.Sprintf("mux-%d", i)
		if i >= 8 {
			kind, id = agent.KindHostAgent, fmt.Sprintf("ha-%d", i-8)
		}
		cl, err := agent.New(agent.Config{
			Addrs: []string{c.reps[i%3].addr}, ID: id, Kind: kind, Target: newMemTarget(), Logger: quietLogger,
			OnApplied: func(s, v uint64) {
				if s != shard {
					return
				}
				mu.Lock()
				applied[i] = v
				cond.Broadcast()
				mu.Unlock()
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); cl.Run(context.Background()) }()
		b.Cleanup(func() { cl.Close(); <-done })
	}
	waitAll := func(v uint64) {
		mu.Lock()
		defer mu.Unlock()
		for {
			ok := true
			for _, a := range applied {
				if a < v {
					ok = false
					break
				}
			}
			if ok {
				return
			}
			cond.Wait()
		}
	}
	waitAll(r.Distribution.Version)
	if apiWait { // every agent registered as connected in the VIP's shard
		ac := api.NewAgentServiceClient(dial(b, c.reps[0].addr))
		waitFor(b, 30*time.Second, "24 connected agents", func() bool {
			l, err := ac.ListAgents(ctx, &api.ListAgentsRequest{})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for _, a := range l.Agents {
				if a.Connected {
					n++
				}
			}
			return n == agents
		})
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		req := &api.UpdateVIPRequest{Config: vipConfig(vip, false, 8+i%2)}
		if apiWait {
			req.WaitForAgents = durationpb.New(10 * time.Second)
		}
		u, err := vc.UpdateVIP(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if apiWait {
			if d := u.Distribution; !d.Complete || d.Agents != agents {
				b.Fatalf("distribution %v: want complete on %d agents", d, agents)
			}
		} else {
			waitAll(u.Distribution.Version)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(lat, 0.5)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
}

// BenchmarkLeaderLoss: three replicas (disk, normal log database, Raft
// tick 30 ms: elections after 300 to 600 ms), clients allocating on every
// replica; each iteration stops the leader of shard 1 and measures the
// time from the stop until an allocation of a VIP of shard 1 that was sent
// after the stop succeeds; then the replica restarts and gets its
// leadership back before the next iteration.
func BenchmarkLeaderLoss(b *testing.B) {
	shards := []uint64{1, 2}
	c := newClusterRTT(b, 3, shards, false, benchRTT, func(cfg *manager.Config) { cfg.ProposeTimeout = time.Second })
	c.waitSpread(30 * time.Second)
	ctx := ctxT(b, 10*time.Minute)
	vip := vipsInShard(b, c.reps[0].m, 1, 1)[0]
	vc := api.NewVIPServiceClient(dial(b, c.reps[0].addr))
	if _, err := vc.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 1)}); err != nil {
		b.Fatal(err)
	}
	var resume []time.Duration
	var n atomic.Int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		leaders := c.waitSpread(30 * time.Second)
		victim := int(leaders[1] - 1)
		var live []api.SNATServiceClient
		for j, r := range c.reps {
			if j != victim {
				live = append(live, api.NewSNATServiceClient(dial(b, r.addr)))
			}
		}
		killed := time.Now()
		c.stop(victim)
		var first atomic.Int64 // ns after killed of the first success
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for first.Load() == 0 {
					k := n.Add(1)
					cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					_, err := live[w%len(live)].AllocatePorts(cctx, &api.AllocatePortsRequest{Vip: vip, Dip: fmt.Sprintf("10.%d.%d.%d", 1+k/62500, (k/250)%250, k%250+1), Host: "198.18.0.1", Hint: 8})
					cancel()
					if err == nil {
						first.CompareAndSwap(0, int64(time.Since(killed)))
					}
				}
			}()
		}
		wg.Wait()
		resume = append(resume, time.Duration(first.Load()))
		c.start(victim)
	}
	b.StopTimer()
	var sum time.Duration
	for _, d := range resume {
		sum += d
	}
	b.ReportMetric(ms(sum/time.Duration(len(resume))), "mean-resume-ms")
	b.ReportMetric(ms(slices.Max(resume)), "max-resume-ms")
}

// benchVIPRate is BenchmarkSNATFairness's per-VIP request limit
// (Config.SNATVIPRate; 0: none).
var benchVIPRate = 0.0

// benchClients are the client counts of BenchmarkSNATAllocate.
var benchClients = []int{1, 8, 64, 256, 1024}

// BenchmarkSNATFairness: TestSNATFairness on three replicas on Dragonboat
// (disk): the quiet VIP's median allocation latency alone and under a
// flood of 100 outstanding requests from 100 DIPs of another VIP of the
// same shard, all sent to the shard leader's replica. Reports both
// medians and their ratio (the test asserts <= 2 on a fixed-latency log).
func BenchmarkSNATFairness(b *testing.B) {
	shards := []uint64{1, 2}
	c := newClusterRTT(b, 3, shards, false, benchRTT, func(cfg *manager.Config) { cfg.SNATRate = 1e9; cfg.SNATBurst = 1e6; cfg.SNATVIPRate = benchVIPRate })
	leaders := c.waitSpread(30 * time.Second)
	ctx := ctxT(b, 10*time.Minute)
	vs := vipsInShard(b, c.reps[0].m, 1, 2)
	flooder, quiet := vs[0], vs[1]
	r := c.reps[leaders[1]-1]
	conn := dial(b, r.addr)
	vc, sc := api.NewVIPServiceClient(conn), api.NewSNATServiceClient(conn)
	for _, v := range vs {
		if _, err := vc.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(v, true, 1)}); err != nil {
			b.Fatal(err)
		}
	}
	measure := func(n int) []time.Duration {
		var out []time.Duration
		for i := 0; i < n; i++ {
			t0 := time.Now()
			a, err := sc.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: quiet, Dip: "10.9.0.1", Host: "198.18.9.1", Hint: 8})
			if err != nil {
				b.Fatal(err)
			}
			out = append(out, time.Since(t0))
			if _, err := sc.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: quiet, Dip: "10.9.0.1", Ranges: []*api.PortRange{a.Lease.Range}}); err != nil {
				b.Fatal(err)
			}
		}
		return out
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		measure(20)
		unloaded := measure(100)
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
					sc.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: flooder, Dip: fmt.Sprintf("10.8.%d.%d", i, d+1), Host: "198.18.8.1", Hint: 8})
					flood.Add(1)
				}
			}()
		}
		waitFor(b, 30*time.Second, "the flood", func() bool { return flood.Load() >= 1000 })
		f0 := flood.Load()
		loaded := measure(100)
		f1 := flood.Load()
		close(stop)
		wg.Wait()
		mu, ml := median(unloaded), median(loaded)
		b.ReportMetric(ms(mu), "unloaded-p50-ms")
		b.ReportMetric(ms(ml), "flood-p50-ms")
		b.ReportMetric(float64(ml)/float64(mu), "ratio")
		b.ReportMetric(float64(f1-f0)/float64(len(loaded)), "flood-x")
	}
}
