package mux

import (
	"bytes"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/packetio"
)

func fuzzSeeds(f *testing.F) {
	f.Add(tcp4(client, 40000, vip4, 80, encap.TCPFlagSYN))
	f.Add(pktSpec{src: client, dst: vip4, sport: 1, dport: 53, proto: ananta.ProtocolUDP, payload: 20}.build())
	f.Add(pktSpec{src: client, dst: vip4, sport: 1, dport: 53, proto: ananta.ProtocolUDP, frag: 1, payload: 20}.build())
	f.Add(pktSpec{src: dip6(1), dst: vip6, sport: 1, dport: 80, proto: ananta.ProtocolTCP, payload: 20}.build())
	f.Add(pktSpec{src: dip6(1), dst: vip6, sport: 1, dport: 80, proto: ananta.ProtocolTCP, frag: 2, payload: 20}.build())
	f.Add(icmpError(client, tcp4(vip4, 80, client, 40000, 0), 1300, 28))
	f.Add([]byte{0x45})
}

// FuzzFastParse: whenever the fast parser accepts a packet, encap.Parse
// accepts it too and reports the same length, ports and protocol, an
// unfragmented packet and no ICMP error.
func FuzzFastParse(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var pi pktInfo
		if !fastParse(b, &pi) {
			return
		}
		var p encap.Packet
		if err := encap.Parse(b, &p); err != nil {
			t.Fatalf("fastParse accepted what encap.Parse refuses (%v): %x", err, b)
		}
		if p.TotalLen != pi.totalLen || p.Tuple.SrcPort != pi.sport || p.Tuple.DstPort != pi.dport ||
			p.Tuple.Proto != pi.proto || p.Version != pi.version || p.Fragment != encap.NotFragment || p.ICMPError ||
			p.TCPFlags != pi.tcpFlags {
			t.Fatalf("fastParse %+v, encap.Parse %+v: %x", pi, p, b)
		}
	})
}

// FuzzProcess: Process never panics on any input, writes only inside the
// buffer, and ProcessBatch agrees with it.
func FuzzProcess(f *testing.F) {
	fuzzSeeds(f)
	clk := newFakeClock(0)
	cfg := testConfig(func(c *Config) { c.Clock = clk.now; c.FlowTableBytes = MinFlowTableBytes })
	a, b := newMux(f, cfg), newMux(f, cfg)
	for _, m := range []*Mux{a, b} {
		for _, v := range twoVIPs(nil) {
			v.Endpoints = append(v.Endpoints, ananta.EndpointConfig{Protocol: ananta.ProtocolAny, Backends: v.Endpoints[0].Backends})
			mustSetVIP(f, m, v)
		}
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		buf := make([]byte, Headroom+len(pkt))
		copy(buf[Headroom:], pkt)
		buf2 := bytes.Clone(buf)
		v, s, e := a.Process(buf, Headroom, len(buf))
		if v.Action != ActionDrop && (s < 0 || e > len(buf) || s >= e) {
			t.Fatalf("%v with bounds %d:%d of %d", v, s, e, len(buf))
		}
		msgs := []packetio.Message{{Buf: buf2, Off: Headroom, N: len(pkt)}}
		if len(pkt) == 0 {
			return // a Message needs a packet
		}
		vs := make([]Verdict, 1)
		b.ProcessBatch(msgs, vs)
		if vs[0] != v || (v.Action != ActionDrop && !bytes.Equal(buf[s:e], msgs[0].Packet())) {
			t.Fatalf("Process %v, ProcessBatch %v", v, vs[0])
		}
	})
}
