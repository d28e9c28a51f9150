package snat

import (
	"math/bits"
	"math/rand/v2"
)

// flowTable is an open-addressing hash table (linear probing, backward-
// shift deletion, no tombstones) from flowKey to V. The Pool uses two: the
// flow set (V struct{}) and destinations (key with vport 0, V dstState). Compared
// with a Go map it hashes a key once per operation and finds-or-inserts in
// one pass, which halves the cost of Pool.Acquire.
//
// The hash is seeded per table from a random source, so that a tenant who
// picks its destinations cannot aim them at one probe chain of another
// tenant's table. The seed only affects speed: what Pool returns does not
// depend on it.
type flowTable[V any] struct {
	slots []flowSlot[V]
	mask  uint64
	n     int
	seed  uint64
}

type flowSlot[V any] struct {
	v V      // first: a zero-size V adds no padding
	h uint64 // hash | 1; 0 marks an empty slot
	k flowKey
}

const minTableSlots = 16

func newFlowTable[V any](hint int) flowTable[V] {
	n := minTableSlots
	for n*3/4 < hint {
		n *= 2
	}
	return flowTable[V]{slots: make([]flowSlot[V], n), mask: uint64(n - 1), seed: rand.Uint64()}
}

// mum is the wyhash mixing step: the folded 128-bit product.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func (t *flowTable[V]) hash(k *flowKey) uint64 {
	h := mum(k.hi^t.seed^0xa0761d6478bd642f, k.lo^0xe7037ed1a0b428db)
	return mum(h^k.meta^0x8ebc6af09c88c6e3, t.seed^0x589965cc75374cc3) | 1
}

// find returns the slot of k, or the empty slot where k would go, and
// k's hash.
func (t *flowTable[V]) find(k *flowKey) (i, h uint64, found bool) {
	h = t.hash(k)
	for i = h & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if s.h == 0 {
			return i, h, false
		}
		if s.h == h && s.k == *k {
			return i, h, true
		}
	}
}

// put stores k (of hash h) with v in the empty slot i returned by find,
// growing the table if needed.
func (t *flowTable[V]) put(i, h uint64, k *flowKey, v V) {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
		i, h, _ = t.find(k)
	}
	t.slots[i] = flowSlot[V]{h: h, k: *k, v: v}
	t.n++
}

func (t *flowTable[V]) grow() {
	old := t.slots
	t.slots = make([]flowSlot[V], 2*len(old))
	t.mask = uint64(len(t.slots) - 1)
	for _, s := range old {
		if s.h == 0 {
			continue
		}
		i := s.h & t.mask
		for t.slots[i].h != 0 {
			i = (i + 1) & t.mask
		}
		t.slots[i] = s
	}
}

// del empties slot i, shifting later entries of its probe chain back.
func (t *flowTable[V]) del(i uint64) {
	for {
		t.slots[i] = flowSlot[V]{}
		j := i
		for {
			j = (j + 1) & t.mask
			s := &t.slots[j]
			if s.h == 0 {
				t.n--
				return
			}
			// s may move to i if i lies cyclically between its home and j.
			if (j-s.h&t.mask)&t.mask >= (j-i)&t.mask {
				t.slots[i] = *s
				i = j
				break
			}
		}
	}
}

// has reports whether k is in the table.
func (t *flowTable[V]) has(k *flowKey) bool {
	_, _, ok := t.find(k)
	return ok
}
