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

// TestNoAllocsOnTrackedFlows: packets of tracked flows, both directions and
// both kinds, allocate nothing.
func TestNoAllocsOnTrackedFlows(t *testing.T) {
	v := webVIP() // one backend: dip1 in VM 0
	v.SNAT.Enabled = true
	e := newEngine(t, v)
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 2048, Last: 2055}}); err != nil {
		t.Fatal(err)
	}
	client := ap("198.18.1.2:40000")
	in := build(pktSpec{src: client, dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpACK})
	reply := build(pktSpec{src: netip.AddrPortFrom(dip1, 8080), dst: client, proto: ananta.ProtocolTCP, flags: tcpACK})
	src, server := netip.AddrPortFrom(dip1, 40000), ap("198.18.50.2:443")
	if r, o := e.out(t, 0, build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN})); r.Verdict != ToUplink {
		t.Fatal(r)
	} else if p := parse(t, o); p.Tuple.SrcPort != 2048 {
		t.Fatalf("SYN left from port %d", p.Tuple.SrcPort)
	}
	out := build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpACK})
	ret := build(pktSpec{src: server, dst: netip.AddrPortFrom(vipAddr, 2048), proto: ananta.ProtocolTCP, flags: tcpACK})
	if r, _ := e.in(t, in); r.Verdict != ToVM {
		t.Fatal(r)
	}
	tin, s1 := tunnel(t, in, muxAddr, hostAddr)
	tret, s2 := tunnel(t, ret, muxAddr, hostAddr)
	bufs := [][]byte{make([]byte, len(tin)), make([]byte, len(reply)), make([]byte, len(out)), make([]byte, len(tret))}
	allocs := testing.AllocsPerRun(200, func() {
		copy(bufs[0], tin)
		copy(bufs[1], reply)
		copy(bufs[2], out)
		copy(bufs[3], tret)
		if r := e.ProcessInbound(bufs[0], s1, len(bufs[0])); r.Verdict != ToVM {
			t.Fatal(r)
		}
		if r := e.ProcessOutbound(0, bufs[1], 0, len(bufs[1])); r.Verdict != ToUplink {
			t.Fatal(r)
		}
		if r := e.ProcessOutbound(0, bufs[2], 0, len(bufs[2])); r.Verdict != ToUplink {
			t.Fatal(r)
		}
		if r := e.ProcessInbound(bufs[3], s2, len(bufs[3])); r.Verdict != ToVM {
			t.Fatal(r)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round of four packets of tracked flows", allocs)
	}
}
