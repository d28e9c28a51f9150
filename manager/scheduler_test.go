package manager

import (
	"net/netip"
	"testing"
)

// TestTakeRoundRobin checks batch composition directly: round-robin across
// VIPs, and beyond the in-flight limit one request of each idle VIP.
func TestTakeRoundRobin(t *testing.T) {
	m := &Manager{cfg: Config{SNATInflight: 1, SNATBatchSize: 4}.withDefaults()}
	m.cfg.SNATInflight, m.cfg.SNATBatchSize = 1, 4
	m.shards = []uint64{1}
	s := newScheduler(m)
	sh := s.shards[1]
	add := func(vip string, n int) {
		v := netip.MustParseAddr(vip)
		q := sh.queues[v]
		if q == nil {
			q = &vipQueue{vip: v}
			sh.queues[v] = q
			sh.ring = append(sh.ring, q)
		}
		for i := 0; i < n; i++ {
			r := &allocReq{key: dipKey{v, netip.AddrFrom4([4]byte{10, 0, byte(len(q.reqs)), byte(i)})}, queued: true, waiters: 1, done: make(chan struct{})}
			q.reqs = append(q.reqs, r)
		}
	}
	vips := func(b []*allocReq) (out []string) {
		for _, r := range b {
			out = append(out, r.key.vip.String())
		}
		return out
	}
	add("198.19.0.1", 5) // A: a flood
	add("198.19.0.2", 1) // B
	add("198.19.0.3", 2) // C
	b, extra := s.take(sh)
	if got := vips(b); extra || len(got) != 4 || got[0] != "198.19.0.1" || got[1] != "198.19.0.2" || got[2] != "198.19.0.3" || got[3] != "198.19.0.1" {
		t.Fatalf("first batch %v (extra %v): want A, B, C, A", got, extra)
	}
	// The regular slot is taken; A and C have requests in flight, D is
	// idle: an extra batch takes D's request only.
	add("198.19.0.4", 3)
	b, extra = s.take(sh)
	if got := vips(b); !extra || len(got) != 1 || got[0] != "198.19.0.4" {
		t.Fatalf("second batch %v (extra %v): want only the idle VIP D", got, extra)
	}
	// Every slot taken now.
	if b, _ := s.take(sh); b != nil {
		t.Fatalf("a third batch %v started beyond the limits", vips(b))
	}
	// Priority work holds SNAT to one batch in flight.
	release := s.hold(1)
	sh.inflight, sh.extra, sh.busy = 0, 0, map[netip.Addr]int{}
	if b, _ := s.take(sh); b == nil {
		t.Fatal("no batch at all during priority work")
	}
	if b, _ := s.take(sh); b != nil {
		t.Fatal("a second batch during priority work")
	}
	release()
}

// TestTakeIdleAfterRemoval: in the extra pass, removing an emptied VIP
// from the ring does not skip the next idle VIP.
func TestTakeIdleAfterRemoval(t *testing.T) {
	m := &Manager{cfg: Config{}.withDefaults()}
	m.cfg.SNATInflight = 1
	m.shards = []uint64{1}
	s := newScheduler(m)
	sh := s.shards[1]
	for _, v := range []string{"198.19.0.1", "198.19.0.2", "198.19.0.3"} {
		a := netip.MustParseAddr(v)
		q := &vipQueue{vip: a, reqs: []*allocReq{{key: dipKey{a, netip.MustParseAddr("10.0.0.1")}, queued: true, waiters: 1, done: make(chan struct{})}}}
		if v == "198.19.0.3" {
			q.reqs = append(q.reqs, &allocReq{key: dipKey{a, netip.MustParseAddr("10.0.0.2")}, queued: true, waiters: 1, done: make(chan struct{})})
		}
		sh.queues[a] = q
		sh.ring = append(sh.ring, q)
	}
	sh.inflight = 1 // the regular slot is busy
	sh.busy[netip.MustParseAddr("198.19.0.1")] = 1
	b, extra := s.take(sh)
	if !extra || len(b) != 2 || b[0].key.vip.String() != "198.19.0.2" || b[1].key.vip.String() != "198.19.0.3" {
		t.Fatalf("extra batch of %d (extra %v): want one request of each idle VIP (2 and 3)", len(b), extra)
	}
}
