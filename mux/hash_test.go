package mux

import (
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
)

// TestFlowHashGolden pins the flow hash: every Mux of a pool, and the eBPF
// data path, must compute these values. A change here splits a fleet
// running mixed versions.
func TestFlowHashGolden(t *testing.T) {
	for _, tc := range []struct {
		t    ananta.FiveTuple
		seed uint64
		want uint64
	}{
		{ananta.FiveTuple{Src: client, Dst: vip4, SrcPort: 40000, DstPort: 80, Proto: ananta.ProtocolTCP}, 0, 0xed48d050b95fb0b9},
		{ananta.FiveTuple{Src: client, Dst: vip4, SrcPort: 40001, DstPort: 80, Proto: ananta.ProtocolTCP}, 0, 0x2bbd7ffef6825886},
		{ananta.FiveTuple{Src: client, Dst: vip4, SrcPort: 40000, DstPort: 80, Proto: ananta.ProtocolUDP}, 0, 0xd5c4a0b5d31cbacc},
		{ananta.FiveTuple{Src: client, Dst: vip4, Proto: ananta.ProtocolICMP}, 0, 0x163d8ddad0cfd15c},
		{ananta.FiveTuple{Src: netip.MustParseAddr("2001:db8:5::7"), Dst: vip6, SrcPort: 40000, DstPort: 443, Proto: ananta.ProtocolTCP}, 0, 0xb4c46a07ef8b6e77},
		{ananta.FiveTuple{Src: client, Dst: vip4, SrcPort: 40000, DstPort: 80, Proto: ananta.ProtocolTCP}, 1, 0x72f54f68c58639c3},
	} {
		got := FlowHash(tc.t, tc.seed)
		if got != tc.want {
			t.Errorf("FlowHash(%v, %#x) = %#016x, want %#016x", tc.t, tc.seed, got, tc.want)
		}
	}
}

// TestFlowHashSpec recomputes the hash from the package documentation's
// description, word by word, for random tuples of both families.
func TestFlowHashSpec(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	spec := func(tu ananta.FiveTuple, seed uint64) uint64 {
		s, d := tu.Src.As16(), tu.Dst.As16()
		le := func(b []byte) uint64 {
			var v uint64
			for i := 7; i >= 0; i-- {
				v = v<<8 | uint64(b[i])
			}
			return v
		}
		w := [5]uint64{le(s[0:8]), le(s[8:16]), le(d[0:8]), le(d[8:16]),
			uint64(tu.SrcPort) | uint64(tu.DstPort)<<16 | uint64(tu.Proto)<<32}
		a := (seed ^ w[0]) * 0xff51afd7ed558ccd
		b := (seed ^ w[1]) * 0xc4ceb9fe1a85ec53
		a = (a ^ a>>32 ^ w[2]) * 0xff51afd7ed558ccd
		b = (b ^ b>>32 ^ w[3]) * 0xc4ceb9fe1a85ec53
		a = (a ^ a>>32 ^ w[4]) * 0xff51afd7ed558ccd
		h := a ^ bits.RotateLeft64(b, 32)
		h = (h ^ h>>30) * 0xbf58476d1ce4e5b9
		h = (h ^ h>>27) * 0x94d049bb133111eb
		return h ^ h>>31
	}
	for i := range 10000 {
		tu := randomTuple(rng, i%2 == 0)
		seed := rng.Uint64() | 1
		if got, want := FlowHash(tu, seed), spec(tu, seed); got != want {
			t.Fatalf("FlowHash(%v) = %#x, spec says %#x", tu, got, want)
		}
		// The packet path packs keys from the bytes: same key.
		var a, b flowKey
		keyFrom(&a, tu.Src, tu.Dst, tu.SrcPort, tu.DstPort, tu.Proto)
		pkt := pktSpec{src: tu.Src, dst: tu.Dst, sport: tu.SrcPort, dport: tu.DstPort, proto: tu.Proto}.build()
		keyFromPacket(&b, pkt, uint8(pkt[0]>>4), tu.SrcPort, tu.DstPort, tu.Proto)
		if a != b {
			t.Fatalf("keyFrom %v != keyFromPacket %v", a, b)
		}
	}
	if FlowHash(ananta.FiveTuple{Src: client, Dst: vip4}, 0) != FlowHash(ananta.FiveTuple{Src: client, Dst: vip4}, DefaultFlowHashSeed) {
		t.Error("seed 0 is not DefaultFlowHashSeed")
	}
}

// TestFlowHashMixing checks that every input bit flips about half of the
// output bits (avalanche), so that Maglev's high bits and the outer source's
// low bits are both well mixed.
func TestFlowHashMixing(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	const n = 2000
	var k flowKey
	for word := range 5 {
		for bit := range 64 {
			if word == 4 && bit >= 40 {
				break
			}
			flips := 0
			for range n {
				for i := range k.w {
					k.w[i] = rng.Uint64()
				}
				k.w[4] &= 1<<40 - 1
				h1 := k.hash(DefaultFlowHashSeed)
				k.w[word] ^= 1 << bit
				flips += bits.OnesCount64(h1 ^ k.hash(DefaultFlowHashSeed))
			}
			if avg := float64(flips) / n; avg < 30 || avg > 34 {
				t.Errorf("flipping key word %d bit %d flips %.1f output bits on average, want about 32", word, bit, avg)
			}
		}
	}
}

func randomTuple(rng *rand.Rand, v4 bool) ananta.FiveTuple {
	var src, dst netip.Addr
	if v4 {
		src = netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(256)), byte(rng.IntN(256))})
		dst = vip4
	} else {
		var a [16]byte
		copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8})
		for i := 4; i < 16; i++ {
			a[i] = byte(rng.IntN(256))
		}
		src, dst = netip.AddrFrom16(a), vip6
	}
	proto := ananta.ProtocolTCP
	if rng.IntN(2) == 0 {
		proto = ananta.ProtocolUDP
	}
	return ananta.FiveTuple{Src: src, Dst: dst, SrcPort: uint16(1024 + rng.IntN(60000)), DstPort: 80, Proto: proto}
}
