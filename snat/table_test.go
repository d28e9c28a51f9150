package snat

import (
	"math/rand/v2"
	"testing"
)

// TestFlowTableAgainstMap drives the table with random inserts and deletes
// over a small key space (long probe chains, wrap-around, growth) and
// compares it with a Go map after every step.
func TestFlowTableAgainstMap(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		rng := rand.New(rand.NewPCG(seed, 99))
		tab := newFlowTable[dstState](0)
		if seed == 3 {
			tab.seed = 0 // any seed must work
		}
		ref := map[flowKey]int32{}
		keys := make([]flowKey, 300)
		for i := range keys {
			keys[i] = flowKey{hi: uint64(rng.IntN(3)), lo: uint64(i), meta: uint64(rng.IntN(4)) | uint64(i%7)<<vportShift | 6<<32 | 4<<40}
		}
		for step := range 20000 {
			k := keys[rng.IntN(len(keys))]
			i, h, found := tab.find(&k)
			v, inRef := ref[k]
			if found != inRef || (found && tab.slots[i].v.n != v) {
				t.Fatalf("seed %d step %d: find(%v) = %v, map has %v", seed, step, k, found, inRef)
			}
			switch {
			case !found && rng.IntN(3) > 0:
				tab.put(i, h, &k, dstState{n: int32(step)})
				ref[k] = int32(step)
			case found:
				tab.del(i)
				delete(ref, k)
			}
			if tab.n != len(ref) {
				t.Fatalf("seed %d step %d: n %d, map %d", seed, step, tab.n, len(ref))
			}
		}
		// Every stored key is reachable from its home slot.
		for k, v := range ref {
			i, _, found := tab.find(&k)
			if !found || tab.slots[i].v.n != v {
				t.Fatalf("seed %d: key %v lost", seed, k)
			}
		}
		if len(tab.slots) > 4*minTableSlots*((len(keys)+minTableSlots-1)/minTableSlots) {
			t.Fatalf("seed %d: table grew to %d slots for %d keys", seed, len(tab.slots), len(keys))
		}
	}
}
