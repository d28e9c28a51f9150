package encap

import (
	"net/netip"
	"testing"
)

// benchPacket is a 64-byte IPv4 TCP packet: 20 bytes IP, 20 bytes TCP, 24
// bytes payload.
func benchPacket() []byte {
	return spec{src: v4a, dst: v4b, proto: 6, sport: 40000, dport: 80, df: true, tcpFlags: TCPFlagACK, payload: make([]byte, 24)}.build()
}

func TestZeroAllocs(t *testing.T) {
	pkt := benchPacket()
	var p Packet
	buf := make([]byte, 40+len(pkt))
	copy(buf[40:], pkt)
	tunnel := encapsulated(t, pkt, v4d, v4c)
	icmp := icmpMsg(v4d, v4b, 3, 4, 1400, pkt)
	out := make([]byte, MaxTooBigIPv6)
	big := spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2, payload: make([]byte, 1500)}.build()
	var sink error
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"Parse", func() { sink = Parse(pkt, &p) }},
		{"ParseError", func() { sink = Parse(pkt[:30], &p) }},
		{"Encap4", func() { _, sink = Encap(buf, 40, len(buf), v4d, v4c, EncapOptions{}) }},
		{"Encap6", func() { _, sink = Encap(buf, 40, len(buf), v6d, v6c, EncapOptions{FlowLabel: 5}) }},
		{"Decap", func() { _, _, sink = Decap(tunnel) }},
		{"Rewrite", func() { _ = Parse(pkt, &p); sink = Rewrite(pkt, &p, Dst, v4c, 8080) }},
		{"RewriteQuoted", func() { _ = Parse(icmp, &p); sink = RewriteQuoted(icmp, &p, Src, v4c, 8080) }},
		{"TooBig", func() { _, sink = TooBig(out, big, v6d, 1280) }},
		{"Checksum", func() { _ = Checksum(big) }},
	} {
		if n := testing.AllocsPerRun(100, c.f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", c.name, n)
		}
	}
	_ = sink
}

func BenchmarkParse(b *testing.B) {
	pkt := benchPacket()
	var p Packet
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if err := Parse(pkt, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseIPv6(b *testing.B) {
	pkt := spec{src: v6a, dst: v6b, proto: 6, sport: 40000, dport: 80, payload: make([]byte, 24)}.build()
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		if err := Parse(pkt, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncapIPv4(b *testing.B) {
	pkt := benchPacket()
	buf := make([]byte, OverheadIPv4+len(pkt))
	copy(buf[OverheadIPv4:], pkt)
	src, dst := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.10.2")
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, err := Encap(buf, OverheadIPv4, len(buf), src, dst, EncapOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncapIPv6(b *testing.B) {
	pkt := benchPacket()
	buf := make([]byte, OverheadIPv6+len(pkt))
	copy(buf[OverheadIPv6:], pkt)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encap(buf, OverheadIPv6, len(buf), v6d, v6c, EncapOptions{FlowLabel: 0x12345}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecapIPv4(b *testing.B) {
	pkt := benchPacket()
	buf := make([]byte, OverheadIPv4+len(pkt))
	copy(buf[OverheadIPv4:], pkt)
	start, err := Encap(buf, OverheadIPv4, len(buf), v4d, v4c, EncapOptions{})
	if err != nil {
		b.Fatal(err)
	}
	tunnel := buf[start:]
	b.ReportAllocs()
	b.SetBytes(int64(len(tunnel)))
	for b.Loop() {
		if _, _, err := Decap(tunnel); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDNAT(b *testing.B) {
	pkt := benchPacket()
	var p Packet
	if err := Parse(pkt, &p); err != nil {
		b.Fatal(err)
	}
	dips := [2]netip.Addr{netip.MustParseAddr("198.18.10.5"), netip.MustParseAddr("198.18.10.6")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := Rewrite(pkt, &p, Dst, dips[i&1], 8080); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkDNATIPv6(b *testing.B) {
	pkt := spec{src: v6a, dst: v6b, proto: 6, sport: 40000, dport: 80, payload: make([]byte, 24)}.build()
	var p Packet
	if err := Parse(pkt, &p); err != nil {
		b.Fatal(err)
	}
	dips := [2]netip.Addr{v6c, v6d}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := Rewrite(pkt, &p, Dst, dips[i&1], 8080); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkChecksum1500(b *testing.B) {
	pkt := make([]byte, 1500)
	b.ReportAllocs()
	b.SetBytes(1500)
	for b.Loop() {
		_ = Checksum(pkt)
	}
}
