package manager

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ananta-go/ananta/api"
)

// The SNAT scheduler of one replica. Allocation requests that reach this
// replica wait in one FIFO queue per VIP; per shard, a loop takes batches
// from the queues round-robin across VIPs (one request of each VIP in turn,
// so that a VIP with a thousand queued requests and a VIP with one share a
// batch evenly) and proposes each batch as one command. At most
// SNATInflight batches per shard are in flight; while a configuration or
// health proposal of the shard is in progress no new batch starts
// (priority stages) beyond a single one, so that priority work never waits
// for more than one batch and SNAT never starves. A DIP has at most one
// pending request: another request
// of the same (VIP, DIP) joins it and gets the same lease. Each (VIP, DIP)
// has a token bucket of SNATRate requests per second.

type dipKey struct{ vip, dip netip.Addr }

// allocReq is one pending allocation; joined requests share it.
type allocReq struct {
	key  dipKey
	host netip.Addr
	size uint32
	// deadline is the latest deadline of its callers.
	deadline time.Time
	done     chan struct{} // closed when res or err is set
	res      *api.AllocateResult
	err      error
	// waiters is the number of callers still waiting; queued is true
	// until the request is taken into a batch. Guarded by the shard's mu.
	waiters int
	queued  bool
}

type vipQueue struct {
	vip  netip.Addr
	reqs []*allocReq
}

type bucket struct {
	tokens float64
	last   time.Time
}

// snatShard is the scheduler state of one shard.
type snatShard struct {
	id   uint64
	wake chan struct{} // capacity 1

	// mu guards the fields below.
	mu       sync.Mutex
	queues   map[netip.Addr]*vipQueue
	ring     []*vipQueue // VIPs with queued requests, in round-robin order
	next     int         // ring position of the next VIP to serve
	pending  map[dipKey]*allocReq
	buckets  map[dipKey]*bucket
	vipRate  map[netip.Addr]*bucket
	inflight int                // batches in flight
	extra    int                // of which started beyond SNATInflight for idle VIPs
	busy     map[netip.Addr]int // VIP -> requests in flight
	prio     int                // configuration/health proposals in progress
}

type scheduler struct {
	m      *Manager
	shards map[uint64]*snatShard
	wg     sync.WaitGroup
}

func newScheduler(m *Manager) *scheduler {
	s := &scheduler{m: m, shards: make(map[uint64]*snatShard)}
	for _, id := range m.shards {
		s.shards[id] = &snatShard{
			id:      id,
			wake:    make(chan struct{}, 1),
			queues:  make(map[netip.Addr]*vipQueue),
			pending: make(map[dipKey]*allocReq),
			buckets: make(map[dipKey]*bucket),
			busy:    make(map[netip.Addr]int),
			vipRate: make(map[netip.Addr]*bucket),
		}
	}
	return s
}

func (sh *snatShard) signal() {
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

// run runs one dispatch loop per shard until the Manager closes, then
// waits for the batches in flight.
func (s *scheduler) run() {
	var wg sync.WaitGroup
	for _, sh := range s.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(sh)
		}()
	}
	wg.Wait()
	s.wg.Wait()
}

func (s *scheduler) loop(sh *snatShard) {
	for {
		select {
		case <-s.m.ctx.Done():
			s.failAll(sh, status.Error(codes.Unavailable, "manager replica is closing"))
			return
		case <-sh.wake:
		}
		for {
			batch, extra := s.take(sh)
			if batch == nil {
				break
			}
			s.wg.Add(1)
			go s.propose(sh, batch, extra)
		}
	}
}

// take returns the next batch, or nil when there is none or no batch may
// start now. Up to SNATInflight batches are in flight; besides those, up
// to SNATInflight more may start with one request of each VIP that has
// nothing in flight, so that a VIP whose flood keeps the pipeline full
// cannot make a quiet VIP wait for it.
func (s *scheduler) take(sh *snatShard) ([]*allocReq, bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	limit := s.m.cfg.SNATInflight
	if sh.prio > 0 {
		// Configuration or health work is being proposed: SNAT gets one
		// batch in flight at most, so that the priority work waits for at
		// most one batch and SNAT still moves when priority work never
		// stops (many Host Agents reporting health).
		limit = 1
		if sh.inflight > 0 {
			return nil, false
		}
	}
	if len(sh.ring) == 0 || (sh.inflight-sh.extra >= limit && sh.extra >= limit) {
		return nil, false
	}
	onlyIdle := sh.inflight-sh.extra >= limit
	max := s.m.cfg.SNATBatchSize
	var batch []*allocReq
	// i counts the VIPs visited in onlyIdle mode: one pass over the ring.
	for i, n := 0, len(sh.ring); len(batch) < max && len(sh.ring) > 0 && i < n; {
		if sh.next >= len(sh.ring) {
			sh.next = 0
		}
		q := sh.ring[sh.next]
		if onlyIdle && sh.busy[q.vip] > 0 {
			sh.next++
			i++ // one pass over the ring
			continue
		}
		q.reqs[0].queued = false
		batch = append(batch, q.reqs[0])
		q.reqs[0] = nil
		q.reqs = q.reqs[1:]
		if len(q.reqs) == 0 {
			delete(sh.queues, q.vip)
			sh.ring = append(sh.ring[:sh.next], sh.ring[sh.next+1:]...)
		} else {
			sh.next++
		}
		if onlyIdle {
			i++ // one request per idle VIP
		}
	}
	if len(batch) == 0 {
		return nil, false
	}
	for _, r := range batch {
		sh.busy[r.key.vip]++
	}
	s.m.stats.snatBatches.Add(1)
	s.m.stats.snatBatchItems.Add(uint64(len(batch)))
	sh.inflight++
	if onlyIdle {
		sh.extra++
	}
	return batch, onlyIdle
}

// propose proposes one batch and hands out the results.
func (s *scheduler) propose(sh *snatShard, batch []*allocReq, extra bool) {
	defer s.wg.Done()
	m := s.m
	var deadline time.Time
	cmd := &api.AllocateCommand{Ttl: int64(m.cfg.LeaseTTL), Items: make([]*api.AllocateItem, len(batch))}
	for i, r := range batch {
		cmd.Items[i] = &api.AllocateItem{Vip: addrBytes(r.key.vip), Dip: addrBytes(r.key.dip), Host: addrBytes(r.host), Size: r.size}
		if r.deadline.After(deadline) {
			deadline = r.deadline
		}
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(m.cfg.RequestTimeout)
	}
	ctx, cancel := context.WithDeadline(m.ctx, deadline)
	res, err := m.propose(ctx, sh.id, &api.Command{Id: newID(), Op: &api.Command_Allocate{Allocate: cmd}})
	cancel()
	if err == nil && len(res.Items) != len(batch) {
		err = status.Errorf(codes.Internal, "state machine returned %d results for %d requests", len(res.Items), len(batch))
	}
	sh.mu.Lock()
	for i, r := range batch {
		if err != nil {
			r.err = err
		} else {
			r.res = res.Items[i]
		}
		delete(sh.pending, r.key)
		if sh.busy[r.key.vip]--; sh.busy[r.key.vip] == 0 {
			delete(sh.busy, r.key.vip)
		}
		close(r.done)
	}
	sh.inflight--
	if extra {
		sh.extra--
	}
	sh.mu.Unlock()
	sh.signal()
}

func (s *scheduler) failAll(sh *snatShard, err error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, q := range sh.ring {
		for _, r := range q.reqs {
			r.queued = false
			r.err = err
			delete(sh.pending, r.key)
			close(r.done)
		}
	}
	sh.ring, sh.queues = nil, make(map[netip.Addr]*vipQueue)
}

// take1 takes a token of bucket b (refilled at rate up to burst).
func take1(b *bucket, now time.Time, rate, burst float64) bool {
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// allowVIP takes a token of the VIP's bucket, if VIPs are limited.
func (s *scheduler) allowVIP(sh *snatShard, vip netip.Addr, now time.Time) bool {
	rate, burst := s.m.cfg.SNATVIPRate, float64(s.m.cfg.SNATVIPBurst)
	if rate == 0 {
		return true
	}
	b := sh.vipRate[vip]
	if b == nil {
		if len(sh.vipRate) >= 1<<16 {
			clear(sh.vipRate) // forget them all: they refill at once anyway
		}
		b = &bucket{tokens: burst, last: now}
		sh.vipRate[vip] = b
	}
	return take1(b, now, rate, burst)
}

// allow takes a token of key's bucket.
func (s *scheduler) allow(sh *snatShard, key dipKey, now time.Time) bool {
	rate, burst := s.m.cfg.SNATRate, float64(s.m.cfg.SNATBurst)
	b := sh.buckets[key]
	if b == nil {
		if len(sh.buckets) >= 1<<16 { // forget full (idle) buckets
			for k, o := range sh.buckets {
				if o.tokens+now.Sub(o.last).Seconds()*rate >= burst {
					delete(sh.buckets, k)
				}
			}
		}
		b = &bucket{tokens: burst, last: now}
		sh.buckets[key] = b
	}
	return take1(b, now, rate, burst)
}

// allocate queues a request (or joins the DIP's pending one) and waits for
// its result. joined reports whether it joined.
func (s *scheduler) allocate(ctx context.Context, shard uint64, key dipKey, host netip.Addr, size uint32) (res *api.AllocateResult, joined bool, err error) {
	sh := s.shards[shard]
	deadline, _ := ctx.Deadline()
	sh.mu.Lock()
	s.m.stats.snatRequests.Add(1)
	r := sh.pending[key]
	if r != nil {
		s.m.stats.snatJoined.Add(1)
		r.waiters++
		joined = true
		if deadline.After(r.deadline) {
			r.deadline = deadline // a batch not yet proposed uses it
		}
	} else {
		if s.m.ctx.Err() != nil {
			sh.mu.Unlock()
			return nil, false, status.Error(codes.Unavailable, "manager replica is closing")
		}
		now := time.Now()
		if !s.allow(sh, key, now) {
			sh.mu.Unlock()
			s.m.stats.snatRateLimited.Add(1)
			return nil, false, status.Errorf(codes.ResourceExhausted, "dip %s of vip %s exceeds %g allocation requests per second", key.dip, key.vip, s.m.cfg.SNATRate)
		}
		if !s.allowVIP(sh, key.vip, now) {
			sh.mu.Unlock()
			s.m.stats.snatRateLimited.Add(1)
			return nil, false, status.Errorf(codes.ResourceExhausted, "vip %s exceeds %g allocation requests per second", key.vip, s.m.cfg.SNATVIPRate)
		}
		q := sh.queues[key.vip]
		if q == nil {
			q = &vipQueue{vip: key.vip}
			sh.queues[key.vip] = q
			sh.ring = append(sh.ring, q)
		}
		if len(q.reqs) >= s.m.cfg.SNATQueueLimit {
			sh.mu.Unlock()
			s.m.stats.snatQueueFull.Add(1)
			return nil, false, status.Errorf(codes.ResourceExhausted, "vip %s has %d allocation requests queued", key.vip, len(q.reqs))
		}
		r = &allocReq{key: key, host: host, size: size, deadline: deadline, done: make(chan struct{}), waiters: 1, queued: true}
		q.reqs = append(q.reqs, r)
		sh.pending[key] = r
	}
	sh.mu.Unlock()
	sh.signal()
	select {
	case <-r.done:
		return r.res, joined, r.err
	case <-ctx.Done():
		s.abandon(sh, r)
		return nil, joined, status.FromContextError(ctx.Err()).Err()
	}
}

// abandon notes that a caller of r stopped waiting. A request that nobody
// waits for any more and that is still queued is dropped, so that callers
// that give up do not leave leases behind (a request already proposed
// still completes; its lease expires unless renewed).
func (s *scheduler) abandon(sh *snatShard, r *allocReq) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r.waiters--
	if r.waiters > 0 || !r.queued {
		return
	}
	r.queued = false
	q := sh.queues[r.key.vip]
	if q != nil {
		if i := slices.Index(q.reqs, r); i >= 0 {
			q.reqs = slices.Delete(q.reqs, i, i+1)
		}
		if len(q.reqs) == 0 {
			delete(sh.queues, q.vip)
			if i := slices.Index(sh.ring, q); i >= 0 {
				sh.ring = slices.Delete(sh.ring, i, i+1)
				if sh.next > i {
					sh.next--
				}
			}
		}
	}
	delete(sh.pending, r.key)
	r.err = status.Error(codes.Canceled, "abandoned by its callers")
	close(r.done)
	s.m.stats.snatAbandoned.Add(1)
}

// hold marks a priority proposal in progress in shard: no new SNAT batch
// starts until the returned function is called.
func (s *scheduler) hold(shard uint64) func() {
	sh := s.shards[shard]
	if sh == nil {
		return func() {}
	}
	sh.mu.Lock()
	sh.prio++
	sh.mu.Unlock()
	return func() {
		sh.mu.Lock()
		sh.prio--
		sh.mu.Unlock()
		sh.signal()
	}
}

// queued returns the number of requests waiting in the queues.
func (s *scheduler) queued() int {
	n := 0
	for _, sh := range s.shards {
		sh.mu.Lock()
		for _, q := range sh.ring {
			n += len(q.reqs)
		}
		sh.mu.Unlock()
	}
	return n
}
