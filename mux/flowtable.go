package mux

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Flow table geometry. See the package documentation, "Flow table".
const (
	ways = 8 // entries per bucket
	// FlowEntryBytes is the memory one flow takes in the flow table: a
	// 48-byte entry (the packed key, the backend slot and generation, the
	// expiry time) and a 1-byte tag. Capacity = FlowTableBytes /
	// FlowEntryBytes, rounded down to whole buckets of 8.
	FlowEntryBytes = 49
	maxShards      = 64

	// A way's tag byte: 0 if the way is free, else trusted<<7 | t with t
	// in 1..127 from the flow hash.
	tagTrusted = 0x80
	tagMask    = 0x7f
	lsb8       = 0x0101010101010101
	msb8       = 0x8080808080808080
	low7       = 0x7f7f7f7f7f7f7f7f

	// entry.pw: key word 4 (ports and protocol) in bits 0-39, backend
	// slot in bits 40-63.
	pwKeyMask    = 1<<40 - 1
	pwSlotShift  = 40
	bucketMixMul = 0x9e3779b97f4a7c15
)

// entry is one tracked flow: the packed key, the backend slot and
// generation it is pinned to, and its expiry time. 48 bytes.
type entry struct {
	a   [4]uint64 // key words 0-3: the addresses
	pw  uint64    // key word 4 | slot<<40
	exp uint32    // expiry tick (ms), compared modulo 2^32
	gen uint16    // generation of the backend slot
	_   uint16
}

func (e *entry) matches(k *flowKey) bool {
	return e.a[0] == k.w[0] && e.a[1] == k.w[1] && e.a[2] == k.w[2] && e.a[3] == k.w[3] && e.pw&pwKeyMask == k.w[4]
}

func (e *entry) slot() uint32 { return uint32(e.pw >> pwSlotShift) }

// expired reports whether an expiry tick is at or before now. Ticks wrap
// after 49 days; differences are read as signed 32-bit values, which the
// sweeper keeps valid by visiting every entry every second.
func expired(exp, now uint32) bool { return int32(exp-now) <= 0 }

// shard is one independently locked part of the flow table.
type shard struct {
	// mu guards every field of the shard. The tags are also read without
	// it, atomically, to prefetch entries (ProcessBatch); they are written
	// atomically, with mu held.
	mu                       sync.Mutex
	tags                     []atomic.Uint64 // per bucket: byte i is way i's tag
	ents                     []entry         // buckets*ways
	nb                       uint64          // buckets
	trusted, untrusted       int
	maxTrusted, maxUntrusted int
	cursor                   uint64 // next bucket to sweep

	inserts, evictions, expirations, fallbacks uint64
	promotions, promotionsRefused, moves       uint64

	_ [64]byte // keep neighbouring shards' locks off this cache line
}

// prefetchMinBytes is the flow-table size from which ProcessBatch
// prefetches entries: smaller tables stay in the CPU caches, where the
// look-ahead only costs time.
const prefetchMinBytes = 4 << 20

// flowTable is the Mux's flow table: fixed capacity, sharded by flow hash.
type flowTable struct {
	shards   []shard
	mask     uint64 // len(shards)-1
	capacity int
	prefetch bool // the table is large enough for ProcessBatch to prefetch
}

// newFlowTable allocates a table within bytes of memory.
func newFlowTable(bytes int, nshards int, untrustedShare float64) *flowTable {
	buckets := bytes / (FlowEntryBytes * ways)
	if nshards == 0 {
		nshards = 1
		for nshards < maxShards && buckets/(nshards*2) >= 64 {
			nshards *= 2
		}
	}
	per := buckets / nshards
	t := &flowTable{shards: make([]shard, nshards), mask: uint64(nshards - 1)}
	// One allocation for all shards, so that huge pages can back it.
	tags := make([]atomic.Uint64, per*nshards)
	ents := make([]entry, per*ways*nshards)
	if len(ents) > 0 {
		adviseHugePages(unsafe.Pointer(&ents[0]), uintptr(len(ents))*unsafe.Sizeof(entry{}))
		adviseHugePages(unsafe.Pointer(&tags[0]), uintptr(len(tags))*unsafe.Sizeof(tags[0]))
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.nb = uint64(per)
		s.tags = tags[i*per : (i+1)*per : (i+1)*per]
		s.ents = ents[i*per*ways : (i+1)*per*ways : (i+1)*per*ways]
		c := per * ways
		s.maxUntrusted = max(1, int(float64(c)*untrustedShare))
		s.maxTrusted = max(1, c-s.maxUntrusted)
		t.capacity += c
	}
	t.prefetch = t.capacity*FlowEntryBytes >= prefetchMinBytes
	return t
}

func (t *flowTable) shard(h uint64) *shard { return &t.shards[(h>>8)&t.mask] }

// buckets returns the flow's two candidate buckets (they may be equal).
func (s *shard) buckets(h uint64) (uint64, uint64) {
	b1 := (h >> 32) * s.nb >> 32
	b2 := ((h * bucketMixMul) >> 32) * s.nb >> 32
	return b1, b2
}

// tagOf returns the flow's tag, 1..127, from bits 0-6 of its hash.
func tagOf(h uint64) uint64 {
	if t := h & tagMask; t != 0 {
		return t
	}
	return 1
}

// matchTag returns a mask with the high bit set in each byte of tags whose
// tag may equal t: every equal byte, and possibly bytes above an equal one
// (callers verify the key). Free ways never match (t != 0).
func matchTag(tags, t uint64) uint64 {
	x := tags&low7 ^ lsb8*t
	return (x - lsb8) &^ x & msb8
}

// usedWays returns a mask with the high bit set in each used byte.
func usedWays(tags uint64) uint64 { return (tags&low7 + low7 | tags) & msb8 }

// untrustedWays returns a mask with the high bit set in each used byte
// that is not trusted.
func untrustedWays(tags uint64) uint64 { return (tags&low7 + low7) &^ tags & msb8 }

// prefetch hints the CPU to load the entry flow h will use: the first way
// of its buckets whose tag matches, else, if insert, the ways an insert
// would take (a free way, and the way it would replace). It reads the tags
// without s.mu; a stale read costs only a useless prefetch.
func (s *shard) prefetch(h uint64, insert bool) {
	b1, b2 := s.buckets(h)
	t := tagOf(h)
	t1, t2 := s.tags[b1].Load(), s.tags[b2].Load()
	if m := matchTag(t1, t); m != 0 {
		prefetch(unsafe.Pointer(&s.ents[int(b1*ways)+bits.TrailingZeros64(m)>>3]))
		return
	}
	if m := matchTag(t2, t); m != 0 {
		prefetch(unsafe.Pointer(&s.ents[int(b2*ways)+bits.TrailingZeros64(m)>>3]))
		return
	}
	if !insert {
		return
	}
	if i := freeWay(b1, b2, t1, t2); i >= 0 {
		prefetch(unsafe.Pointer(&s.ents[i]))
	}
	if i := victimWay(b1, b2, t1, t2, h); i >= 0 {
		prefetch(unsafe.Pointer(&s.ents[i]))
	}
}

// find returns the index in s.ents of the live entry of k, or -1. An
// expired entry of k is freed (lazy expiry) and reported as missing. s.mu
// must be held.
func (s *shard) find(k *flowKey, h uint64, now uint32) int {
	b1, b2 := s.buckets(h)
	t := tagOf(h)
	if i := s.findIn(b1, k, t, now); i >= 0 || b1 == b2 {
		return i
	}
	return s.findIn(b2, k, t, now)
}

func (s *shard) findIn(b uint64, k *flowKey, t uint64, now uint32) int {
	for m := matchTag(s.tags[b].Load(), t); m != 0; m &= m - 1 {
		idx := int(b*ways) + bits.TrailingZeros64(m)>>3
		e := &s.ents[idx]
		if !e.matches(k) {
			continue
		}
		if expired(e.exp, now) {
			s.remove(idx)
			s.expirations++
			return -1
		}
		return idx
	}
	return -1
}

// remove frees the entry at idx. s.mu must be held.
func (s *shard) remove(idx int) {
	b, sh := idx/ways, 8*(idx%ways)
	tags := s.tags[b].Load()
	if tags>>sh&tagTrusted != 0 {
		s.trusted--
	} else {
		s.untrusted--
	}
	s.tags[b].Store(tags &^ (0xff << sh))
}

// insert adds k as an untrusted flow pinned to the backend slot and gen,
// expiring at exp, and returns its index. While the untrusted quota
// allows, it takes a free way of the less loaded of the flow's two
// buckets. Otherwise (quota or both buckets full) it replaces an untrusted
// entry of the two buckets (an eviction), chosen by the flow hash among
// them; trusted entries are never replaced. It reads only the dense tag
// words to decide. It returns -1 when there is no room: the caller
// balances the packet statelessly (a fallback). k must not be in the
// table. s.mu must be held.
func (s *shard) insert(k *flowKey, h uint64, slot uint32, gen uint16, exp uint32) int {
	b1, b2 := s.buckets(h)
	t := tagOf(h)
	t1, t2 := s.tags[b1].Load(), s.tags[b2].Load()
	if s.untrusted < s.maxUntrusted {
		if idx := freeWay(b1, b2, t1, t2); idx >= 0 {
			b, i := uint64(idx/ways), idx%ways
			s.tags[b].Store(s.tags[b].Load() | t<<(8*i))
			s.untrusted++
			return s.fill(idx, k, slot, gen, exp)
		}
	}
	idx := victimWay(b1, b2, t1, t2, h)
	if idx < 0 {
		s.fallbacks++
		return -1
	}
	b, i := uint64(idx/ways), idx%ways
	s.tags[b].Store(s.tags[b].Load()&^(0xff<<(8*i)) | t<<(8*i))
	s.evictions++
	return s.fill(idx, k, slot, gen, exp)
}

// freeWay returns the entry index of the first free way of the less
// loaded of buckets b1 and b2 (b1 on a tie), given their tags, or -1.
func freeWay(b1, b2, t1, t2 uint64) int {
	f1, f2 := msb8&^usedWays(t1), msb8&^usedWays(t2)
	b, f := b1, f1
	if bits.OnesCount64(f2) > bits.OnesCount64(f1) {
		b, f = b2, f2
	}
	if f == 0 {
		return -1
	}
	return int(b*ways) + bits.TrailingZeros64(f)>>3
}

// victimWay returns the entry index of the untrusted way of buckets b1 and
// b2 that flow h replaces, or -1 if they hold none: the j-th of their n
// untrusted ways, j = n * (bits 16-31 of h) / 2^16, bits the bucket and
// tag do not use.
func victimWay(b1, b2, t1, t2, h uint64) int {
	u1, u2 := untrustedWays(t1), untrustedWays(t2)
	if b1 == b2 {
		u2 = 0
	}
	n1, n := bits.OnesCount64(u1), bits.OnesCount64(u1)+bits.OnesCount64(u2)
	if n == 0 {
		return -1
	}
	j := int((h >> 16 & 0xffff) * uint64(n) >> 16)
	b, u := b1, u1
	if j >= n1 {
		b, u, j = b2, u2, j-n1
	}
	for range j {
		u &= u - 1
	}
	return int(b*ways) + bits.TrailingZeros64(u)>>3
}

// fill writes the entry at idx, whose tag is in place.
func (s *shard) fill(idx int, k *flowKey, slot uint32, gen uint16, exp uint32) int {
	e := &s.ents[idx]
	e.a = [4]uint64{k.w[0], k.w[1], k.w[2], k.w[3]}
	e.pw = k.w[4] | uint64(slot)<<pwSlotShift
	e.exp, e.gen = exp, gen
	s.inserts++
	return idx
}

// pinned returns the backend slot and generation of the entry at idx.
func (s *shard) pinned(idx int) (uint32, uint16) {
	e := &s.ents[idx]
	return e.slot(), e.gen
}

// touch records a packet of the tracked flow at idx: an untrusted flow
// becomes trusted if the trusted quota allows, and the expiry moves to now
// plus the idle timeout of the flow's class. s.mu must be held.
func (s *shard) touch(idx int, now, idleTrusted, idleUntrusted uint32) {
	b, bit := idx/ways, uint64(tagTrusted)<<(8*(idx%ways))
	e := &s.ents[idx]
	tags := s.tags[b].Load()
	switch {
	case tags&bit != 0:
		e.exp = now + idleTrusted
	case s.trusted < s.maxTrusted:
		s.tags[b].Store(tags | bit)
		s.trusted++
		s.untrusted--
		s.promotions++
		e.exp = now + idleTrusted
	default:
		s.promotionsRefused++
		e.exp = now + idleUntrusted
	}
}

// repin moves the tracked flow at idx to another backend (its backend went
// down or was removed).
func (s *shard) repin(idx int, slot uint32, gen uint16) {
	e := &s.ents[idx]
	e.pw = e.pw&pwKeyMask | uint64(slot)<<pwSlotShift
	e.gen = gen
	s.moves++
}

// sweep frees the expired entries of the next n buckets. It takes s.mu.
func (s *shard) sweep(now uint32, n uint64) {
	s.mu.Lock()
	for range min(n, s.nb) {
		b := s.cursor
		for m := usedWays(s.tags[b].Load()); m != 0; m &= m - 1 {
			idx := int(b*ways) + bits.TrailingZeros64(m)>>3
			if expired(s.ents[idx].exp, now) {
				s.remove(idx)
				s.expirations++
			}
		}
		if s.cursor++; s.cursor == s.nb {
			s.cursor = 0
		}
	}
	s.mu.Unlock()
}

// FlowStats are the flow table's counters.
type FlowStats struct {
	// Capacity is the number of entries the quota allows; MaxTrusted and
	// MaxUntrusted are the two classes' quotas (they add up to Capacity).
	Capacity, MaxTrusted, MaxUntrusted int
	// Trusted and Untrusted are the entries now in use, expired entries
	// not yet swept included.
	Trusted, Untrusted int
	// Inserts counts new entries; Evictions untrusted entries replaced by
	// newer ones; Expirations entries freed after their idle timeout;
	// Fallbacks packets of untracked flows balanced statelessly because
	// there was no room; Promotions flows that became trusted, and
	// PromotionsRefused second packets that found the trusted quota full;
	// Moves flows re-pinned because their backend went down or was removed.
	Inserts, Evictions, Expirations, Fallbacks uint64
	Promotions, PromotionsRefused, Moves       uint64
}

func (t *flowTable) stats() FlowStats {
	var st FlowStats
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		st.Capacity += int(s.nb) * ways
		st.MaxTrusted += s.maxTrusted
		st.MaxUntrusted += s.maxUntrusted
		st.Trusted += s.trusted
		st.Untrusted += s.untrusted
		st.Inserts += s.inserts
		st.Evictions += s.evictions
		st.Expirations += s.expirations
		st.Fallbacks += s.fallbacks
		st.Promotions += s.promotions
		st.PromotionsRefused += s.promotionsRefused
		st.Moves += s.moves
		s.mu.Unlock()
	}
	return st
}
