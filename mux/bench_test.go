package mux

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// benchPatch is what differs between the packets of a benchmark: the
// client address and port, with the checksums that cover them.
type benchPatch struct {
	src          [4]byte
	sport        uint16
	ipSum, l4Sum uint16
}

// benchRing is a ring of packet buffers built from one TCP template; each
// iteration patches a flow into the next buffer and processes it, so every
// iteration processes a valid packet (checksums included) while the
// buffers stay in cache.
type benchRing struct {
	bufs  [][]byte
	n     int // packet length
	tmpl  []byte
	ipSum uint16
	l4Sum uint16
}

const benchRingSize = 256

func newBenchRing(tmpl []byte) *benchRing {
	r := &benchRing{n: len(tmpl), tmpl: tmpl}
	r.ipSum = binary.BigEndian.Uint16(tmpl[10:])
	r.l4Sum = binary.BigEndian.Uint16(tmpl[20+16:])
	backing := make([]byte, benchRingSize*256)
	for i := range benchRingSize {
		b := backing[i*256 : (i+1)*256]
		copy(b[Headroom:], tmpl)
		r.bufs = append(r.bufs, b)
	}
	return r
}

// patchFor computes the patch of a flow from the template incrementally.
func (r *benchRing) patchFor(src netip.Addr, sport uint16) benchPatch {
	old4 := [4]byte(r.tmpl[12:16])
	s := src.As4()
	oldA, newA := binary.BigEndian.Uint32(old4[:]), binary.BigEndian.Uint32(s[:])
	oldP := binary.BigEndian.Uint16(r.tmpl[20:])
	return benchPatch{
		src:   s,
		sport: sport,
		ipSum: encap.UpdateChecksum32(r.ipSum, oldA, newA),
		l4Sum: encap.UpdateChecksum(encap.UpdateChecksum32(r.l4Sum, oldA, newA), oldP, sport),
	}
}

// apply writes patch p into ring buffer i and returns it.
func (r *benchRing) apply(i int, p *benchPatch) []byte {
	b := r.bufs[i&(benchRingSize-1)]
	pk := b[Headroom:]
	copy(pk[12:16], p.src[:])
	binary.BigEndian.PutUint16(pk[10:], p.ipSum)
	binary.BigEndian.PutUint16(pk[20:], p.sport)
	binary.BigEndian.PutUint16(pk[20+16:], p.l4Sum)
	return b
}

func benchClient(i int) (netip.Addr, uint16) {
	return netip.AddrFrom4([4]byte{198, 18, byte(128 + i>>24&0x7f), byte(i >> 16)}), uint16(i)
}

func benchMux(b *testing.B, tableBytes int) *Mux {
	m := newMux(b, testConfig(func(c *Config) { c.FlowTableBytes = tableBytes }))
	mustSetVIP(b, m, simpleVIP(vip4, 80, backends4(1, 100)))
	return m
}

// establish sends two packets of every flow, so that all are trusted.
func establish(b *testing.B, m *Mux, r *benchRing, patches []benchPatch) {
	for i := range patches {
		for range 2 {
			buf := r.apply(i, &patches[i])
			if v, _, _ := m.Process(buf, Headroom, Headroom+r.n); v != verdictForward {
				b.Fatalf("setup: %v", v)
			}
		}
	}
	st := m.Stats().Flows
	if st.Trusted != len(patches) {
		b.Fatalf("setup: %d trusted flows, want %d (%+v)", st.Trusted, len(patches), st)
	}
}

func benchEstablished(b *testing.B, flows, tableBytes int) {
	m := benchMux(b, tableBytes)
	r := newBenchRing(tcp4(client, 1, vip4, 80, encap.TCPFlagACK))
	rng := rand.New(rand.NewPCG(1, 2))
	patches := make([]benchPatch, flows)
	for i, j := range rng.Perm(flows) {
		src, sport := benchClient(j)
		patches[i] = r.patchFor(src, sport)
	}
	establish(b, m, r, patches)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		buf := r.apply(i, &patches[i%flows])
		if v, _, _ := m.Process(buf, Headroom, Headroom+r.n); v.Action != ActionForward {
			b.Fatal(v)
		}
		i++
	}
}

// BenchmarkForward measures Process per packet. established-*: random
// packets of 1K or 1M trusted flows; new-flow: a flow never seen before in
// every iteration (the table fills up, then untrusted entries are evicted);
// snat-return: packets to ports of a VIP's SNAT ranges (stateless).
func BenchmarkForward(b *testing.B) {
	b.Run("established-1K", func(b *testing.B) { benchEstablished(b, 1<<10, 1<<20) })
	b.Run("established-1M", func(b *testing.B) { benchEstablished(b, 1<<20, 128<<20) })
	b.Run("new-flow", func(b *testing.B) {
		m := benchMux(b, 64<<20)
		r := newBenchRing(tcp4(client, 1, vip4, 80, encap.TCPFlagSYN))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			src, sport := benchClient(i)
			p := r.patchFor(src, sport)
			buf := r.apply(i, &p)
			if v, _, _ := m.Process(buf, Headroom, Headroom+r.n); v.Action != ActionForward {
				b.Fatal(v)
			}
			i++
		}
	})
	b.Run("snat-return", func(b *testing.B) {
		m := benchMux(b, 1<<20)
		var ranges []SNATRange
		for i := range 512 { // 512 DIPs with 64 ports each: ports 1024-33791
			ranges = append(ranges, SNATRange{
				Range: ananta.PortRange{First: uint16(1024 + 64*i), Last: uint16(1024 + 64*i + 63)},
				DIP:   dip4(i % 250), Host: host4(i % 250),
			})
		}
		if err := m.SetSNATRanges(vip4, ranges); err != nil {
			b.Fatal(err)
		}
		// A server on the internet answers connections the DIPs opened:
		// src server:443, dst VIP:port.
		tmpl := tcp4(netip.MustParseAddr("198.18.77.7"), 443, vip4, 1024, encap.TCPFlagACK)
		r := newBenchRing(tmpl)
		rng := rand.New(rand.NewPCG(3, 4))
		ports := make([][]byte, 4096)
		for i := range ports {
			port := uint16(1024 + rng.IntN(512*64))
			pkt := tcp4(netip.MustParseAddr("198.18.77.7"), 443, vip4, port, encap.TCPFlagACK)
			buf := make([]byte, 256)
			copy(buf[Headroom:], pkt)
			ports[i] = buf
		}
		_ = r
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			buf := ports[i&4095]
			if v, _, _ := m.Process(buf, Headroom, Headroom+len(tmpl)); v.Action != ActionForward {
				b.Fatal(v)
			}
			i++
		}
	})
}
