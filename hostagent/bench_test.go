package hostagent

import (
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// BenchmarkInbound: decapsulation and DNAT of a packet of an established
// flow (a 64-byte TCP ACK in IPv4-in-IPv4).
func BenchmarkInbound(b *testing.B) {
	e := newEngine(b, webVIP())
	client := ap("198.18.1.2:40000")
	pkt := build(pktSpec{src: client, dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpACK, payload: make([]byte, 24)})
	if r, _ := e.in(b, pkt); r.Verdict != ToVM {
		b.Fatal(r)
	}
	buf := make([]byte, headroom+len(pkt))
	work := make([]byte, len(buf))
	copy(buf[headroom:], pkt)
	start, err := encap.Encap(buf, headroom, len(buf), muxAddr, hostAddr, encap.EncapOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		copy(work[start:], buf[start:]) // the rewrite is in place: restore the packet
		if r := e.ProcessInbound(work, start, len(work)); r.Verdict != ToVM {
			b.Fatal(r)
		}
	}
}

// BenchmarkOutboundSNAT: SNAT of a packet of an established outbound flow
// whose VIP port came from the local pool (no Manager round trip).
func BenchmarkOutboundSNAT(b *testing.B) {
	e := newEngine(b, snatVIP())
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 2048, Last: 3071}}); err != nil {
		b.Fatal(err)
	}
	src := netip.AddrPortFrom(dip1, 40000)
	server := ap("198.18.50.2:443")
	if r, _ := e.out(b, 0, build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN})); r.Verdict != ToUplink {
		b.Fatal(r)
	}
	pkt := build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpACK, payload: make([]byte, 24)})
	work := make([]byte, len(pkt))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		copy(work, pkt)
		if r := e.ProcessOutbound(0, work, 0, len(work)); r.Verdict != ToUplink {
			b.Fatal(r)
		}
	}
}

// BenchmarkOutboundSNATNewFlow: a new outbound connection taking a port
// from the local pool (the pool hit), then its flow ending (the expiry
// work Advance does), so that the table stays the same size.
func BenchmarkOutboundSNATNewFlow(b *testing.B) {
	e := newEngine(b, snatVIP())
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 2048, Last: 3071}}); err != nil {
		b.Fatal(err)
	}
	server := ap("198.18.50.2:443")
	const n = 256
	pkts := make([][]byte, n)
	for i := range pkts {
		pkts[i] = build(pktSpec{src: netip.AddrPortFrom(dip1, uint16(20000+i)), dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN})
	}
	work := make([]byte, len(pkts[0]))
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		copy(work, pkts[i%n])
		i++
		r := e.ProcessOutbound(0, work, 0, len(work))
		if r.Verdict != ToUplink {
			b.Fatal(r)
		}
		e.endFlow(work)
	}
}

// endFlow removes the flow of an outbound packet already translated (its
// source is VIP:port), as Advance does when it idles out.
func (e *Engine) endFlow(pkt []byte) {
	var p encap.Packet
	encap.Parse(pkt, &p)
	q := p.Tuple.Reverse()
	k := makeKey(&q, false)
	s, h := e.flows.locate(&k)
	s.mu.Lock()
	f, slot, ok := s.lookup(&k, h)
	if !ok {
		s.mu.Unlock()
		panic("no flow")
	}
	pool, proto, port := f.pool, ananta.Protocol(f.out.proto()), f.extPort
	dst := netip.AddrPortFrom(addrOf(f.out.src, f.v6()), f.out.sport())
	e.flows.remove(s, slot)
	s.mu.Unlock()
	e.mu.Lock()
	sp := e.poolIDs[pool]
	e.mu.Unlock()
	sp.release(proto, port, dst, e.now.Load())
}
