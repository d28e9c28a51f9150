package manager_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/dragonboat"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

// replica is one Manager replica on Dragonboat, on disk.
type replica struct {
	cfg  dragonboat.Config
	m    *manager.Manager
	addr string // gRPC, the same across restarts
	done chan error
}

// rcluster is a set of Manager replicas on loopback in this process, each
// with its own Raft port, gRPC port and data directory.
type rcluster struct {
	t      testing.TB
	shards []uint64
	reps   []*replica
	mod    func(*manager.Config)
	peers  map[uint64]string // gRPC addresses: Config.Peers
}

func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var ls []net.Listener
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// newCluster starts n replicas serving shards. lightweight selects
// Dragonboat's small footprint (the log is fsynced either way).
func newCluster(t testing.TB, n int, shards []uint64, lightweight bool, mod func(*manager.Config)) *rcluster {
	return newClusterRTT(t, n, shards, lightweight, 10, mod)
}

// newClusterRTT is newCluster with a Raft tick of rtt milliseconds
// (elections after 10 to 20 ticks).
func newClusterRTT(t testing.TB, n int, shards []uint64, lightweight bool, rtt uint64, mod func(*manager.Config)) *rcluster {
	return newClusterIn(t, t.TempDir(), n, shards, lightweight, rtt, mod)
}

// newClusterIn is newClusterRTT with the replicas' data directories in
// dir.
func newClusterIn(t testing.TB, dir string, n int, shards []uint64, lightweight bool, rtt uint64, mod func(*manager.Config)) *rcluster {
	t.Helper()
	raft := freeAddrs(t, n)
	members := make(map[uint64]string)
	for i, a := range raft {
		members[uint64(i+1)] = a
	}
	c := &rcluster{t: t, shards: shards, mod: mod, peers: make(map[uint64]string)}
	grpcAddrs := freeAddrs(t, n)
	for i := range n {
		c.peers[uint64(i+1)] = grpcAddrs[i]
		c.reps = append(c.reps, &replica{addr: grpcAddrs[i], cfg: dragonboat.Config{
			ReplicaID:      uint64(i + 1),
			Members:        members,
			Shards:         shards,
			DataDir:        filepath.Join(dir, fmt.Sprint("replica-", i+1)),
			RTTMillisecond: rtt,
			ElectionRTT:    10,
			HeartbeatRTT:   1,
			SpreadLeaders:  true,
			Lightweight:    lightweight,
		}})
	}
	t.Cleanup(c.stopAll)
	for i := range c.reps {
		c.start(i)
	}
	return c
}

func (c *rcluster) start(i int) {
	c.t.Helper()
	r := c.reps[i]
	var lis net.Listener
	var err error
	for try := 0; ; try++ { // the port may linger briefly after a stop
		if lis, err = net.Listen("tcp", r.addr); err == nil || try == 100 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	cfg := manager.Config{
		Listener: lis,
		Peers:    c.peers,
		Consensus: func(f consensus.Factory) (consensus.Node, error) {
			return dragonboat.New(r.cfg, f)
		},
		Logger: quietLogger,
	}
	if c.mod != nil {
		c.mod(&cfg)
	}
	m, err := manager.New(cfg)
	if err != nil {
		c.t.Fatalf("replica %d: %v", i+1, err)
	}
	r.m, r.done = m, make(chan error, 1)
	go func() { r.done <- m.Run(context.Background()) }()
}

func (c *rcluster) stop(i int) {
	r := c.reps[i]
	if r.m == nil {
		return
	}
	r.m.Close()
	if err := <-r.done; err != nil {
		c.t.Errorf("replica %d: Run: %v", i+1, err)
	}
	r.m = nil
}

func (c *rcluster) stopAll() {
	for i := range c.reps {
		c.stop(i)
	}
}

// waitLeaders waits until every shard has a leader known to the live
// replicas and returns the leaders.
func (c *rcluster) waitLeaders(d time.Duration) map[uint64]uint64 {
	c.t.Helper()
	var out map[uint64]uint64
	waitFor(c.t, d, "shard leaders", func() bool {
		out = make(map[uint64]uint64)
		for _, s := range c.shards {
			for i, r := range c.reps {
				if r.m == nil {
					continue
				}
				l, ok := r.m.Node().Leader(s)
				if !ok || c.reps[l-1].m == nil || (out[s] != 0 && out[s] != l) {
					return false
				}
				out[s] = l
				_ = i
			}
		}
		return true
	})
	return out
}

// waitSpread waits until every shard is led by its preferred replica
// (SpreadLeaders moved the leaderships), so that measurements do not
// include the transfers.
func (c *rcluster) waitSpread(d time.Duration) map[uint64]uint64 {
	c.t.Helper()
	var leaders map[uint64]uint64
	waitFor(c.t, d, "shard leaders on their preferred replicas", func() bool {
		leaders = c.waitLeaders(d)
		for s, l := range leaders {
			n := c.reps[l-1].m.Node().(*dragonboat.Node)
			if p, ok := n.PreferredLeader(s); !ok || p != l {
				return false
			}
		}
		return true
	})
	return leaders
}

// states returns each live replica's saved state of every shard.
func (c *rcluster) states() map[int][]byte {
	out := make(map[int][]byte)
	for i, r := range c.reps {
		if r.m == nil {
			continue
		}
		var b bytes.Buffer
		for _, s := range c.shards {
			if err := r.m.SaveShard(s, &b); err != nil {
				c.t.Fatal(err)
			}
		}
		out[i] = b.Bytes()
	}
	return out
}

// converged waits until every live replica holds the same state and
// returns it.
func (c *rcluster) converged(d time.Duration) []byte {
	c.t.Helper()
	var state []byte
	waitFor(c.t, d, "replicas to converge", func() bool {
		state = nil
		for _, b := range c.states() {
			if state == nil {
				state = b
			} else if !bytes.Equal(state, b) {
				return false
			}
		}
		return true
	})
	return state
}

type ackedLease struct {
	vip, dip    string
	first, last uint32
	at          time.Time
}

// TestReplicatedSNATLeaderLoss: three replicas on Dragonboat (on disk);
// the leader of a shard is stopped during a stream of allocations sent to
// every replica. No port is ever leased twice, every acknowledged lease is
// in the final state, and after stopping and restarting every replica from
// disk the state is byte-identical.
func TestReplicatedSNATLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("replicated test skipped in -short mode")
	}
	shards := []uint64{1, 2}
	c := newCluster(t, 3, shards, true, func(cfg *manager.Config) { cfg.ProposeTimeout = time.Second })
	leaders := c.waitSpread(20 * time.Second)
	ctx := ctxT(t, 120*time.Second)

	addrs := make([]string, len(c.reps))
	clients := make([]api.SNATServiceClient, len(c.reps))
	for i, r := range c.reps {
		addrs[i] = r.addr
		clients[i] = api.NewSNATServiceClient(dial(t, r.addr))
	}
	// One SNAT VIP in each shard.
	vipOf := make(map[uint64]string)
	for _, s := range shards {
		vipOf[s] = vipsInShard(t, c.reps[0].m, s, 1)[0]
		vc := api.NewVIPServiceClient(dial(t, addrs[0]))
		if _, err := vc.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vipOf[s], true, 2)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "every replica to know the VIPs", func() bool {
		for _, r := range c.reps {
			for _, s := range shards {
				if v, _ := r.m.ShardVersion(s); v < 3 {
					return false
				}
			}
		}
		return true
	})

	// A Mux follows the cluster from the replica that will be stopped; it
	// must move to another replica and resume there from its versions.
	victim := int(leaders[1] - 1)
	target := newMemTarget()
	muxAgent := startAgent(t, "mux-1", agent.KindMux, target, addrs[victim], addrs[(victim+1)%3], addrs[(victim+2)%3])
	waitFor(t, 10*time.Second, "the Mux to get its snapshots", func() bool { return muxAgent.Stats().Snapshots == 2 })

	var (
		mu      sync.Mutex
		acked   []ackedLease
		killed  time.Time
		resumed = make(map[uint64]time.Time)
		errs    = make(map[codes.Code]int)
	)
	stopWorkers := make(chan struct{})
	var wg sync.WaitGroup
	const workers = 12
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := w % len(clients)
			for i := 0; ; i++ {
				select {
				case <-stopWorkers:
					return
				default:
				}
				s := shards[i%len(shards)]
				vip := vipOf[s]
				dip := fmt.Sprintf("10.2.%d.%d", w, i%50+1)
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				start := time.Now()
				r, err := clients[rep].AllocatePorts(cctx, &api.AllocatePortsRequest{Vip: vip, Dip: dip, Host: "198.18.1.1", Hint: 8})
				cancel()
				if err != nil {
					mu.Lock()
					errs[status.Code(err)]++
					mu.Unlock()
					rep = (rep + 1) % len(clients) // try another replica
					continue
				}
				now := time.Now()
				mu.Lock()
				acked = append(acked, ackedLease{vip: vip, dip: dip, first: r.Lease.Range.First, last: r.Lease.Range.Last, at: now})
				if !killed.IsZero() && start.After(killed) && resumed[s].IsZero() {
					resumed[s] = now
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitFor(t, 30*time.Second, "500 allocations", func() bool { return count() >= 500 })
	if l := c.waitLeaders(10 * time.Second); l[1] != leaders[1] {
		t.Logf("the leadership of shard 1 moved to replica %d", l[1])
		victim = int(l[1] - 1)
	}
	mu.Lock()
	killed = time.Now()
	mu.Unlock()
	c.stop(victim)
	t.Logf("stopped replica %d, leader of shard 1 (leaders %v) after %d allocations", victim+1, leaders, count())
	n0 := count()
	waitFor(t, 30*time.Second, "allocations to resume on both shards", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !resumed[1].IsZero() && !resumed[2].IsZero() && len(acked) >= n0+500
	})
	close(stopWorkers)
	wg.Wait()
	// Followers handed their requests to the shard leaders (Config.Peers).
	var forwarded uint64
	for _, r := range c.reps {
		if r.m != nil {
			forwarded += r.m.Stats().SNATForwarded
		}
	}
	if forwarded == 0 {
		t.Fatal("no allocation was forwarded to a shard leader")
	}
	mu.Lock()
	t.Logf("%d allocations acknowledged; resumed after leader loss: shard 1 %v, shard 2 %v; errors by code %v",
		len(acked), resumed[1].Sub(killed).Round(time.Millisecond), resumed[2].Sub(killed).Round(time.Millisecond), errs)
	mu.Unlock()

	// No port leased twice among the acknowledged leases.
	checkDisjoint := func(what string, ls []ackedLease) {
		t.Helper()
		byVIP := make(map[string][]ackedLease)
		for _, l := range ls {
			byVIP[l.vip] = append(byVIP[l.vip], l)
		}
		for vip, ls := range byVIP {
			sort.Slice(ls, func(i, j int) bool { return ls[i].first < ls[j].first })
			for i := 1; i < len(ls); i++ {
				if ls[i].first <= ls[i-1].last {
					t.Fatalf("%s: vip %s: %d-%d (%s) overlaps %d-%d (%s)", what, vip, ls[i].first, ls[i].last, ls[i].dip, ls[i-1].first, ls[i-1].last, ls[i-1].dip)
				}
			}
		}
	}
	checkDisjoint("acknowledged leases", acked)

	// Every acknowledged lease is in the final state, held by its DIP.
	live := c.reps[(victim+1)%3]
	sc := api.NewSNATServiceClient(dial(t, live.addr))
	var final []ackedLease
	have := make(map[string]string)
	for _, s := range shards {
		ls, err := sc.ListLeases(ctx, &api.ListLeasesRequest{Vip: vipOf[s]})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls.Leases {
			final = append(final, ackedLease{vip: l.Vip, dip: l.Dip, first: l.Range.First, last: l.Range.Last})
			have[fmt.Sprintf("%s %d-%d", l.Vip, l.Range.First, l.Range.Last)] = l.Dip
		}
	}
	checkDisjoint("final state", final)
	for _, a := range acked {
		if dip := have[fmt.Sprintf("%s %d-%d", a.vip, a.first, a.last)]; dip != a.dip {
			t.Fatalf("acknowledged lease %s %d-%d of %s is %q in the final state", a.vip, a.first, a.last, a.dip, dip)
		}
	}
	t.Logf("final state: %d leases (%d acknowledged; the rest are preallocations and allocations whose answer was lost with the leader)", len(final), len(acked))

	// The Mux moved to a live replica, resumed without a snapshot, and
	// holds exactly the final state.
	want := expectedFrom(t, api.NewVIPServiceClient(dial(t, live.addr)), sc)
	waitFor(t, 20*time.Second, "the Mux to converge", func() bool { return target.summary() == want })
	if s := muxAgent.Stats(); s.Connects < 2 || s.Snapshots != 2 {
		t.Fatalf("Mux stats %+v: want a reconnection that resumed (no snapshot after the first two)", s)
	}

	// The stopped replica comes back and catches up; then every replica
	// stops and restarts from disk with the same state.
	c.start(victim)
	before := c.converged(30 * time.Second)
	c.stopAll()
	for i := range c.reps {
		c.start(i)
	}
	waitFor(t, 30*time.Second, "restarted replicas to recover their state", func() bool {
		st := c.states()
		for _, b := range st {
			if !bytes.Equal(b, before) {
				return false
			}
		}
		return len(st) == 3
	})
}
