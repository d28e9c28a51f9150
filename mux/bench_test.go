package mux

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/packetio"
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

// benchCase is one of the BenchmarkForward cases: a Mux and a generator
// that patches packet i of the run into a ring buffer.
type benchCase struct {
	m       *Mux
	r       *benchRing
	patches []benchPatch
	next    func(i int) []byte // returns the buffer holding packet i
}

// runSingle processes one packet per iteration with Process.
func (c *benchCase) runSingle(b *testing.B) {
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		buf := c.next(i)
		if v, _, _ := c.m.Process(buf, Headroom, Headroom+c.r.n); v.Action != ActionForward {
			b.Fatal(v)
		}
		i++
	}
}

// runBatch processes the packets in batches of 64 with ProcessBatch, as
// Run's workers do; ns/op is per packet. Batch k uses the ring buffers
// 64k mod 256 onwards, whose messages are built once.
func (c *benchCase) runBatch(b *testing.B) {
	const batch = 64
	all := make([]packetio.Message, benchRingSize)
	verdicts := make([]Verdict, batch)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for i < b.N {
		n := min(batch, b.N-i)
		msgs := all[i%benchRingSize : i%benchRingSize+n]
		for j := range msgs {
			msgs[j] = packetio.Message{Buf: c.next(i + j), Off: Headroom, N: c.r.n}
		}
		c.m.ProcessBatch(msgs, verdicts)
		for _, v := range verdicts[:n] {
			if v.Action != ActionForward {
				b.Fatal(v)
			}
		}
		i += n
	}
}

func establishedCase(b *testing.B, flows, tableBytes int) *benchCase {
	m := benchMux(b, tableBytes)
	r := newBenchRing(tcp4(client, 1, vip4, 80, encap.TCPFlagACK))
	rng := rand.New(rand.NewPCG(1, 2))
	patches := make([]benchPatch, flows)
	for i, j := range rng.Perm(flows) {
		src, sport := benchClient(j)
		patches[i] = r.patchFor(src, sport)
	}
	establish(b, m, r, patches)
	if flows <= prebuiltMax {
		// Few enough flows to build every packet once: the benchmark then
		// measures the Mux alone, not the patching of a ring buffer
		// (BenchmarkPacketPatch). Processing a packet writes only into its
		// headroom, so a buffer can be processed again and again.
		bufs := make([][]byte, flows)
		for i := range bufs {
			bufs[i] = make([]byte, 256)
			copy(bufs[i], r.apply(i, &patches[i]))
		}
		return &benchCase{m: m, r: r, patches: patches, next: func(i int) []byte { return bufs[i%flows] }}
	}
	return &benchCase{m: m, r: r, patches: patches, next: func(i int) []byte { return r.apply(i, &patches[i%flows]) }}
}

// prebuiltMax is the largest flow count whose packets the benchmarks build
// once up front (256 bytes each) instead of patching a ring per packet.
const prebuiltMax = 1 << 12

func newFlowCase(b *testing.B) *benchCase {
	m := benchMux(b, 64<<20)
	r := newBenchRing(tcp4(client, 1, vip4, 80, encap.TCPFlagSYN))
	return &benchCase{m: m, r: r, next: func(i int) []byte {
		src, sport := benchClient(i)
		p := r.patchFor(src, sport)
		return r.apply(i, &p)
	}}
}

func snatCase(b *testing.B) *benchCase {
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
	// server:443 -> VIP:port, random ports of the ranges.
	server := netip.MustParseAddr("198.18.77.7")
	r := newBenchRing(tcp4(server, 443, vip4, 1024, encap.TCPFlagACK))
	rng := rand.New(rand.NewPCG(3, 4))
	bufs := make([][]byte, 4096)
	for i := range bufs {
		pkt := tcp4(server, 443, vip4, uint16(1024+rng.IntN(512*64)), encap.TCPFlagACK)
		bufs[i] = make([]byte, 256)
		copy(bufs[i][Headroom:], pkt)
	}
	return &benchCase{m: m, r: r, next: func(i int) []byte { return bufs[i&4095] }}
}

// BenchmarkForward measures the data path per packet as Run's workers
// drive it (ProcessBatch, batches of 64). established-*: random packets of
// 1K or 1M trusted flows; new-flow: a flow never seen before in every
// iteration (the table fills up, then untrusted entries are replaced);
// snat-return: packets to ports of a VIP's SNAT ranges (stateless).
func BenchmarkForward(b *testing.B) {
	b.Run("established-1K", func(b *testing.B) { establishedCase(b, 1<<10, 1<<20).runBatch(b) })
	b.Run("established-1M", func(b *testing.B) { establishedCase(b, 1<<20, 128<<20).runBatch(b) })
	b.Run("new-flow", func(b *testing.B) { newFlowCase(b).runBatch(b) })
	b.Run("snat-return", func(b *testing.B) { snatCase(b).runBatch(b) })
}

// BenchmarkForwardDefaultTable is established-1K with the default 64 MiB
// table, for which ProcessBatch prefetches: the look-ahead's cost when the
// working set is in cache anyway.
func BenchmarkForwardDefaultTable(b *testing.B) {
	b.Run("established-1K", func(b *testing.B) { establishedCase(b, 1<<10, DefaultFlowTableBytes).runBatch(b) })
}

// BenchmarkProcess measures the same cases one packet at a time
// (Process), without batching or prefetching.
func BenchmarkProcess(b *testing.B) {
	b.Run("established-1K", func(b *testing.B) { establishedCase(b, 1<<10, 1<<20).runSingle(b) })
	b.Run("established-1M", func(b *testing.B) { establishedCase(b, 1<<20, 128<<20).runSingle(b) })
	b.Run("new-flow", func(b *testing.B) { newFlowCase(b).runSingle(b) })
	b.Run("snat-return", func(b *testing.B) { snatCase(b).runSingle(b) })
}

// BenchmarkForwardParallel runs ProcessBatch from GOMAXPROCS goroutines
// (go test -cpu 1,2) over 64K established flows, each goroutine with its
// own buffers: how throughput grows with workers sharing one Mux.
func BenchmarkForwardParallel(b *testing.B) {
	c := establishedCase(b, 1<<16, 16<<20)
	b.ReportAllocs()
	b.ResetTimer()
	var seed atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		r := newBenchRing(c.r.tmpl)
		const batch = 64
		msgs := make([]packetio.Message, batch)
		verdicts := make([]Verdict, batch)
		i := int(seed.Add(1)) * 7919
		n := 0
		flush := func() {
			c.m.ProcessBatch(msgs[:n], verdicts)
			for _, v := range verdicts[:n] {
				if v.Action != ActionForward {
					panic(v.String())
				}
			}
			n = 0
		}
		for pb.Next() {
			msgs[n] = packetio.Message{Buf: r.apply(n, &c.patches[i%len(c.patches)]), Off: Headroom, N: r.n}
			i++
			if n++; n == batch {
				flush()
			}
		}
		flush()
	})
}

// BenchmarkPacketPatch is the benchmarks' own cost per packet: patching a
// flow into a ring buffer (subtract it from BenchmarkForward figures).
func BenchmarkPacketPatch(b *testing.B) {
	r := newBenchRing(tcp4(client, 1, vip4, 80, encap.TCPFlagACK))
	patches := make([]benchPatch, 1024)
	for i := range patches {
		src, sport := benchClient(i)
		patches[i] = r.patchFor(src, sport)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r.apply(i, &patches[i&1023])
		i++
	}
}
