package hostagent

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
)

// TestShardIndexModel checks the open-addressing index against a map under
// random inserts and deletes, with hashes cut to a few bits so that long
// collision runs, wrap-around and backward shifts all happen.
func TestShardIndexModel(t *testing.T) {
	for _, c := range []struct {
		bitsOfHash uint
		maxLive    int
	}{{3, 150}, {6, 300}, {32, 3000}} {
		bitsOfHash := c.bitsOfHash
		rng := rand.New(rand.NewPCG(1, uint64(bitsOfHash)))
		s := &shard{index: make([]uint64, minIndex), mask: minIndex - 1}
		model := map[flowKey]uint32{}
		hashOf := func(k *flowKey) uint64 {
			h := uint64(k.sport())*0x9e3779b97f4a7c15 ^ uint64(k.dport())
			return h & (1<<bitsOfHash - 1)
		}
		var live []flowKey
		for op := range 20000 {
			if len(live) > 0 && (rng.IntN(3) == 0 || len(live) > c.maxLive) {
				i := rng.IntN(len(live))
				k := live[i]
				live[i] = live[len(live)-1]
				live = live[:len(live)-1]
				s.del(&k, hashOf(&k))
				delete(model, k)
			} else {
				k := flowKey{meta: keyMeta(uint16(rng.Uint32()), uint16(op), 6, 0)}
				if _, dup := model[k]; dup {
					continue
				}
				slot := uint32(len(s.slots))
				s.slots = append(s.slots, flow{out: k, live: true})
				s.put(hashOf(&k), slot<<1|sideOut)
				model[k] = slot
				live = append(live, k)
			}
			if op%997 == 0 || op == 19999 {
				if s.n != len(model) {
					t.Fatalf("bits %d op %d: index holds %d entries, model %d", bitsOfHash, op, s.n, len(model))
				}
				for k, slot := range model {
					_, got, ok := s.lookup(&k, hashOf(&k))
					if !ok || got != slot {
						t.Fatalf("bits %d op %d: key %+v: got slot %d %v, want %d", bitsOfHash, op, k, got, ok, slot)
					}
				}
				for range 50 {
					k := flowKey{meta: keyMeta(uint16(rng.Uint32()), uint16(rng.Uint32()), 17, 0)}
					if _, _, ok := s.lookup(&k, hashOf(&k)); ok {
						t.Fatalf("bits %d: found absent key %+v", bitsOfHash, k)
					}
				}
			}
		}
	}
}

func TestPackedKeys(t *testing.T) {
	for _, s := range []string{"198.18.1.2", "255.0.0.1", "2001:db8::1", "::ffff:198.18.1.2", "::"} {
		a := netip.MustParseAddr(s)
		if got := addrOf(pack(a), a.Is6()); got != a {
			t.Errorf("%s: round trip gives %s", a, got)
		}
	}
	// A packet's key equals the key made from its parsed tuple, and IPv4
	// never meets IPv4-mapped IPv6.
	for _, spec := range []pktSpec{
		{src: ap("198.18.1.2:1000"), dst: ap("198.19.0.10:80"), proto: ananta.ProtocolTCP},
		{src: ap("[2001:db8::1]:1000"), dst: ap("[2001:db8::2]:80"), proto: ananta.ProtocolUDP},
	} {
		pkt := build(spec)
		p := parse(t, pkt)
		var k flowKey
		if packetKey(&k, pkt, &p, true); k != makeKey(&p.Tuple, true) {
			t.Errorf("%s: packetKey and makeKey differ", p.Tuple)
		}
	}
	v4 := ananta.FiveTuple{Src: netip.MustParseAddr("198.18.1.2"), Dst: netip.MustParseAddr("198.19.0.10"), Proto: 6}
	v6 := ananta.FiveTuple{Src: netip.MustParseAddr("::ffff:198.18.1.2"), Dst: netip.MustParseAddr("::ffff:198.19.0.10"), Proto: 6}
	if makeKey(&v4, false) == makeKey(&v6, false) {
		t.Error("IPv4 and IPv4-mapped IPv6 tuples share a key")
	}
}
