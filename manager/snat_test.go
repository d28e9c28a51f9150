package manager_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

// gateNode holds every proposal while its gate is closed.
type gateNode struct {
	consensus.Node
	mu   sync.Mutex
	gate chan struct{}
}

func (n *gateNode) Propose(ctx context.Context, shard uint64, cmd []byte) ([]byte, error) {
	n.mu.Lock()
	g := n.gate
	n.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return n.Node.Propose(ctx, shard, cmd)
}

func (n *gateNode) set(g chan struct{}) {
	n.mu.Lock()
	n.gate = g
	n.mu.Unlock()
}

// TestSNATJoin: a request of a DIP that has one pending joins it and gets
// the same lease.
func TestSNATJoin(t *testing.T) {
	testutil.CheckGoroutines(t)
	var gn *gateNode
	tm := startManager(t, []uint64{1}, func(n consensus.Node) consensus.Node { gn = &gateNode{Node: n}; return gn }, nil)
	ctx := ctxT(t, 20*time.Second)
	const vip = "198.19.0.60"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 1)}); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	gn.set(gate)
	req := &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.5", Host: "198.18.0.5", Hint: 16}
	res := make([]*api.AllocatePortsResponse, 2)
	var wg sync.WaitGroup
	call := func(i int) {
		defer wg.Done()
		r, err := tm.snat.AllocatePorts(ctx, req)
		if err != nil {
			t.Error(err)
		}
		res[i] = r
	}
	batches := tm.Stats().SNATBatches
	wg.Add(1)
	go call(0)
	waitFor(t, 10*time.Second, "the first request's proposal", func() bool { return tm.Stats().SNATBatches == batches+1 })
	wg.Add(1)
	go call(1)
	waitFor(t, 10*time.Second, "the second request to join", func() bool { return tm.Stats().SNATJoined == 1 })
	gn.set(nil)
	close(gate)
	wg.Wait()
	if res[0] == nil || res[1] == nil {
		t.FailNow()
	}
	if !proto.Equal(res[0].Lease, res[1].Lease) || res[0].Joined || !res[1].Joined {
		t.Fatalf("results %v and %v: want the same lease, the second joined", res[0], res[1])
	}
	if s := tm.Stats(); s.SNATBatches != batches+1 || s.SNATBatchItems != 1 {
		t.Fatalf("stats %+v: the joined request was proposed again", s)
	}
}

func TestSNATRateLimit(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1}, nil, func(c *manager.Config) { c.SNATRate = 1; c.SNATBurst = 2 })
	ctx := ctxT(t, 20*time.Second)
	const vip = "198.19.0.61"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 1)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.5", Host: "198.18.0.5", Hint: 8}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.5", Host: "198.18.0.5", Hint: 8})
	wantCode(t, err, codes.ResourceExhausted, "requests per second")
	// Another DIP has its own bucket.
	if _, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.6", Host: "198.18.0.5", Hint: 8}); err != nil {
		t.Fatal(err)
	}
	if s := tm.Stats(); s.SNATRateLimited != 1 {
		t.Fatalf("stats %+v", s)
	}
	// The per-DIP port limit of the state machine.
	_, err = tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.7", Host: "198.18.0.5", Hint: 32768})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.7", Host: "198.18.0.5", Hint: 8})
	wantCode(t, err, codes.ResourceExhausted, "limit")
}

// TestLeaseExpiry: the shard leader reclaims expired leases (by the
// proposer's clock, here a fake one) and agents see the ranges go.
func TestLeaseExpiry(t *testing.T) {
	testutil.CheckGoroutines(t)
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	tm := startManager(t, []uint64{1}, nil, func(c *manager.Config) {
		c.Now = func() time.Time { return time.Unix(0, now.Load()) }
		c.LeaseTTL = time.Minute
		c.ExpireInterval = 10 * time.Millisecond
	})
	ctx := ctxT(t, 20*time.Second)
	const vip = "198.19.0.62"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 1)}); err != nil {
		t.Fatal(err)
	}
	target := newMemTarget()
	startAgent(t, "mux-1", agent.KindMux, target, tm.addr)
	a, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.5", Host: "198.18.0.5", Hint: 8})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.Lease.Expiry.AsTime().UnixNano(), now.Load()+int64(time.Minute); got != want {
		t.Fatalf("expiry %d, want now + LeaseTTL = %d", got, want)
	}
	ranges := func() int {
		target.mu.Lock()
		defer target.mu.Unlock()
		return len(target.snat[mustParse(vip)])
	}
	waitFor(t, 10*time.Second, "the agent to have the preallocation and the lease", func() bool { return ranges() == 2 })
	// 30 s later the preallocation is renewed; at 70 s only it remains.
	now.Add(int64(30 * time.Second))
	if _, err := tm.snat.RenewLeases(ctx, &api.RenewLeasesRequest{Vip: vip, Dip: "10.1.0.1"}); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(40 * time.Second))
	waitFor(t, 10*time.Second, "the lease to expire", func() bool {
		l, err := tm.snat.ListLeases(ctx, &api.ListLeasesRequest{Vip: vip})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Leases) == 1 && l.Leases[0].Dip == "10.1.0.1"
	})
	waitFor(t, 10*time.Second, "the agent to drop the expired range", func() bool { return ranges() == 1 })
}

// TestSNATAbandoned: a queued request whose caller gives up is dropped and
// leases nothing.
func TestSNATAbandoned(t *testing.T) {
	testutil.CheckGoroutines(t)
	var gn *gateNode
	tm := startManager(t, []uint64{1}, func(n consensus.Node) consensus.Node { gn = &gateNode{Node: n}; return gn }, func(c *manager.Config) { c.SNATInflight = 1 })
	ctx := ctxT(t, 20*time.Second)
	const vip = "198.19.0.63"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 1)}); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	gn.set(gate)
	done := make(chan error, 1)
	go func() {
		_, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.5", Host: "198.18.0.5", Hint: 8})
		done <- err
	}()
	waitFor(t, 10*time.Second, "the first request's proposal", func() bool { return tm.Stats().SNATBatches == 1 })
	// The VIP has a batch in flight and the only slot is taken: the second
	// request waits in the queue until its deadline.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := tm.snat.AllocatePorts(short, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.6", Host: "198.18.0.6", Hint: 8})
	cancel()
	wantCode(t, err, codes.DeadlineExceeded, "")
	waitFor(t, 10*time.Second, "the request to be dropped", func() bool { return tm.Stats().SNATAbandoned == 1 })
	gn.set(nil)
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l, err := tm.snat.ListLeases(ctx, &api.ListLeasesRequest{Vip: vip, Dip: "10.1.0.6"})
	if err != nil || len(l.Leases) != 0 {
		t.Fatalf("the abandoned request leased %v (%v)", l, err)
	}
	if s := tm.Stats(); s.SNATBatches != 1 || s.SNATQueued != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSNATVIPRateLimit(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1}, nil, func(c *manager.Config) { c.SNATVIPRate = 0.5; c.SNATVIPBurst = 2 })
	ctx := ctxT(t, 20*time.Second)
	for _, v := range []string{"198.19.0.64", "198.19.0.65"} {
		if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(v, true, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, dip := range []string{"10.1.0.5", "10.1.0.6"} {
		if _, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: "198.19.0.64", Dip: dip, Host: "198.18.0.5", Hint: 8}); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	_, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: "198.19.0.64", Dip: "10.1.0.7", Host: "198.18.0.5", Hint: 8})
	wantCode(t, err, codes.ResourceExhausted, "vip 198.19.0.64 exceeds")
	// Another VIP has its own bucket.
	if _, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: "198.19.0.65", Dip: "10.1.0.7", Host: "198.18.0.5", Hint: 8}); err != nil {
		t.Fatal(err)
	}
}
