package encap

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
)

// verifyChecksums checks, by full recomputation with the reference code,
// the IPv4 header checksum and the transport checksum of a whole
// (unfragmented) packet. A UDP checksum of 0 is accepted in IPv4 only.
func verifyChecksums(t testing.TB, b []byte) {
	t.Helper()
	var p Packet
	if err := Parse(b, &p); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if p.Version == 4 {
		if got, want := get16(b, 10), refIPv4HeaderChecksum(b); got != want {
			t.Errorf("IPv4 header checksum %#04x, want %#04x", got, want)
		}
	}
	if p.Fragment != NotFragment || p.routing {
		return
	}
	var off int
	pseudo := true
	switch p.Tuple.Proto {
	case ananta.ProtocolTCP:
		off = 16
	case ananta.ProtocolUDP:
		off = 6
		if p.Version == 4 && get16(b, p.L4Offset+6) == 0 {
			return
		}
	case ananta.ProtocolICMP:
		off, pseudo = 2, false
	case ananta.ProtocolICMPv6:
		off = 2
	default:
		return
	}
	if got, want := get16(b, p.L4Offset+off), refTransportChecksum(b, p.L4Offset, p.TotalLen, uint8(p.Tuple.Proto), off, pseudo); got != want {
		t.Errorf("%v checksum %#04x, want %#04x", p.Tuple.Proto, got, want)
	}
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		f    Field
		addr netip.Addr
		port uint16
		want ananta.FiveTuple
	}{
		{"dnat-v4-tcp", spec{src: v4a, dst: v4b, proto: 6, sport: 40000, dport: 80, payload: []byte("abc")}.build(), Dst, v4c, 8080,
			ananta.FiveTuple{Src: v4a, Dst: v4c, SrcPort: 40000, DstPort: 8080, Proto: 6}},
		{"dnat-v4-tcp-keep-port", spec{src: v4a, dst: v4b, proto: 6, sport: 40000, dport: 80}.build(), Dst, v4c, 0,
			ananta.FiveTuple{Src: v4a, Dst: v4c, SrcPort: 40000, DstPort: 80, Proto: 6}},
		{"snat-v4-udp", spec{src: v4a, dst: v4b, proto: 17, sport: 40000, dport: 53, payload: []byte("abcde")}.build(), Src, v4c, 1024,
			ananta.FiveTuple{Src: v4c, Dst: v4b, SrcPort: 1024, DstPort: 53, Proto: 17}},
		{"snat-v4-udp-no-checksum", spec{src: v4a, dst: v4b, proto: 17, sport: 40000, dport: 53, noUDPCsum: true}.build(), Src, v4c, 1024,
			ananta.FiveTuple{Src: v4c, Dst: v4b, SrcPort: 1024, DstPort: 53, Proto: 17}},
		{"dnat-v6-udp", spec{src: v6a, dst: v6b, proto: 17, sport: 1, dport: 2, payload: []byte("z")}.build(), Dst, v6c, 3,
			ananta.FiveTuple{Src: v6a, Dst: v6c, SrcPort: 1, DstPort: 3, Proto: 17}},
		{"snat-v6-tcp", spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2}.build(), Src, v6c, 65535,
			ananta.FiveTuple{Src: v6c, Dst: v6b, SrcPort: 65535, DstPort: 2, Proto: 6}},
		{"v4-icmp-echo", icmpMsg(v4a, v4b, 8, 0, 0x00010001, []byte("ping")), Dst, v4c, 99,
			ananta.FiveTuple{Src: v4a, Dst: v4c, Proto: 1}},
		{"v6-icmp-echo", icmpMsg(v6a, v6b, 128, 0, 0x00010001, []byte("ping")), Src, v6c, 99,
			ananta.FiveTuple{Src: v6c, Dst: v6b, Proto: 58}},
		{"v6-icmp-error-outer", icmpMsg(v6d, v6b, 2, 0, 1280, spec{src: v6b, dst: v6a, proto: 6, sport: 80, dport: 4}.build()), Dst, v6c, 1,
			ananta.FiveTuple{Src: v6d, Dst: v6c, Proto: 58}},
		{"v4-gre", spec{src: v4a, dst: v4b, proto: 47, payload: make([]byte, 8)}.build(), Dst, v4c, 1,
			ananta.FiveTuple{Src: v4a, Dst: v4c, Proto: 47}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := Parse(tt.b, &p); err != nil {
				t.Fatal(err)
			}
			if err := Rewrite(tt.b, &p, tt.f, tt.addr, tt.port); err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			if p.Tuple != tt.want {
				t.Errorf("Tuple = %v, want %v", p.Tuple, tt.want)
			}
			var q Packet
			if err := Parse(tt.b, &q); err != nil || q.Tuple != tt.want {
				t.Errorf("Parse(rewritten) = %v, %v", q.Tuple, err)
			}
			verifyChecksums(t, tt.b)
			if tt.name == "snat-v4-udp-no-checksum" && get16(tt.b, 26) != 0 {
				t.Errorf("IPv4 UDP checksum 0 became %#x", get16(tt.b, 26))
			}
		})
	}
}

// TestRewriteUDPZeroResult finds a UDP packet whose rewritten checksum
// computes to 0 and checks that it is stored as 0xffff.
func TestRewriteUDPZeroResult(t *testing.T) {
	for port := uint16(1); port != 0; port++ {
		b := spec{src: v4a, dst: v4b, proto: 17, sport: 1000, dport: 53, payload: []byte{1, 2, 3, 4}}.build()
		var p Packet
		if err := Parse(b, &p); err != nil {
			t.Fatal(err)
		}
		if err := Rewrite(b, &p, Src, v4c, port); err != nil {
			t.Fatal(err)
		}
		if get16(b, 26) == 0xffff {
			verifyChecksums(t, b)
			return
		}
		if get16(b, 26) == 0 {
			t.Fatalf("port %d: UDP checksum 0 after rewrite", port)
		}
	}
	t.Fatal("no port gives a 0xffff checksum")
}

func TestRewriteFragments(t *testing.T) {
	// First fragment of a UDP datagram: the checksum covers the whole
	// datagram, so check it through the update of a whole packet.
	whole := spec{src: v4a, dst: v4b, proto: 17, sport: 1, dport: 2, payload: make([]byte, 40)}.build()
	first := bytes.Clone(whole[:20+24])
	put16(first, 2, 44)
	first[6] = 0x20 // MF
	put16(first, 10, refIPv4HeaderChecksum(first))
	later := append(bytes.Clone(whole[:20]), whole[44:]...)
	put16(later, 2, uint16(len(later)))
	put16(later, 6, 3) // offset 24 bytes
	put16(later, 10, refIPv4HeaderChecksum(later))

	for _, b := range [][]byte{whole, first, later} {
		var p Packet
		if err := Parse(b, &p); err != nil {
			t.Fatal(err)
		}
		if err := Rewrite(b, &p, Dst, v4c, 0); err != nil {
			t.Fatal(err)
		}
		verifyChecksums(t, b)
	}
	if !bytes.Equal(first[26:28], whole[26:28]) {
		t.Errorf("first fragment checksum %x, whole packet %x", first[26:28], whole[26:28])
	}
	// A later fragment ignores the port.
	var p Packet
	_ = Parse(later, &p)
	if err := Rewrite(later, &p, Dst, v4d, 9); err != nil || p.Tuple.DstPort != 0 || !bytes.Equal(later[20:], whole[44:]) {
		t.Errorf("later fragment: %v, %v", p.Tuple, err)
	}
}

func TestRewriteErrors(t *testing.T) {
	udp6zero := spec{src: v6a, dst: v6b, proto: 17, sport: 1, dport: 2}.build()
	put16(udp6zero, 46, 0)
	routing := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0x20, 1, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	rh := ext6([]uint8{43}, [][]byte{routing}, 6, tcpSeg(7, 9))
	v4 := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2}.build()
	tests := []struct {
		name string
		b    []byte
		f    Field
		addr netip.Addr
		want error
	}{
		{"family-v4", v4, Dst, v6c, ErrFamily},
		{"family-v6", udp6zero, Dst, v4c, ErrFamily},
		{"family-invalid", v4, Dst, netip.Addr{}, ErrFamily},
		{"udp6-zero", udp6zero, Dst, v6c, ErrBadChecksum},
		{"routing-dst", rh, Dst, v6c, ErrUnsupported},
		{"field", v4, Field(2), v4c, ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := Parse(tt.b, &p); err != nil {
				t.Fatal(err)
			}
			orig, origP := bytes.Clone(tt.b), p
			if err := Rewrite(tt.b, &p, tt.f, tt.addr, 5); !errors.Is(err, tt.want) {
				t.Errorf("Rewrite = %v, want %v", err, tt.want)
			}
			if !bytes.Equal(tt.b, orig) || p != origP {
				t.Errorf("Rewrite changed the packet on error")
			}
		})
	}
	// A source rewrite with a routing header is fine.
	var p Packet
	_ = Parse(rh, &p)
	if err := Rewrite(rh, &p, Src, v6c, 5); err != nil {
		t.Errorf("source rewrite with routing header: %v", err)
	}
	// A Packet that does not describe the slice.
	_ = Parse(v4, &p)
	if err := Rewrite(v4[:30], &p, Dst, v4c, 5); !errors.Is(err, ErrBadHeader) {
		t.Errorf("short slice: %v", err)
	}
	var zero Packet
	if err := Rewrite(v4, &zero, Dst, v4c, 5); !errors.Is(err, ErrBadHeader) {
		t.Errorf("zero Packet: %v", err)
	}
}

// verifyICMPError checks the ICMP checksum of an ICMP error in full, the
// quoted IPv4 header checksum, and the quoted transport checksum when the
// quote holds the whole quoted packet.
func verifyICMPError(t *testing.T, b []byte) {
	t.Helper()
	verifyChecksums(t, b)
	var p Packet
	if err := Parse(b, &p); err != nil || !p.ICMPError {
		t.Fatalf("Parse: %+v, %v", p, err)
	}
	q := b[p.InnerOffset:p.TotalLen]
	if p.Version == 4 {
		if got, want := get16(q, 10), refIPv4HeaderChecksum(q); got != want {
			t.Errorf("quoted IPv4 header checksum %#04x, want %#04x", got, want)
		}
	}
	var qp Packet
	if Parse(q, &qp) == nil {
		verifyChecksums(t, q)
	}
}

func TestRewriteQuoted(t *testing.T) {
	// The reply VIP:80 -> client left the host as VIP; a router answers
	// with an error to the VIP. The Host Agent translates it back for the DIP.
	vip4, dip4, client4, router4 := v4b, v4c, v4a, v4d
	vip6, dip6, client6, router6 := v6b, v6c, v6a, v6d
	tests := []struct {
		name      string
		b         []byte
		dip       netip.Addr
		port      uint16
		wantInner ananta.FiveTuple
	}{
		{"v4-tcp-8-bytes",
			icmpMsg(router4, vip4, 3, 4, 1400, spec{src: vip4, dst: client4, proto: 6, sport: 80, dport: 40000, df: true, payload: []byte("data")}.build()[:28]),
			dip4, 8080, ananta.FiveTuple{Src: dip4, Dst: client4, SrcPort: 8080, DstPort: 40000, Proto: 6}},
		{"v4-tcp-whole",
			icmpMsg(router4, vip4, 3, 4, 1400, spec{src: vip4, dst: client4, proto: 6, sport: 80, dport: 40000, df: true, payload: []byte("data")}.build()),
			dip4, 8080, ananta.FiveTuple{Src: dip4, Dst: client4, SrcPort: 8080, DstPort: 40000, Proto: 6}},
		{"v4-udp-whole",
			icmpMsg(router4, vip4, 11, 0, 0, spec{src: vip4, dst: client4, proto: 17, sport: 53, dport: 40000, payload: []byte("data!")}.build()),
			dip4, 5353, ananta.FiveTuple{Src: dip4, Dst: client4, SrcPort: 5353, DstPort: 40000, Proto: 17}},
		{"v4-udp-no-checksum",
			icmpMsg(router4, vip4, 11, 0, 0, spec{src: vip4, dst: client4, proto: 17, sport: 53, dport: 40000, noUDPCsum: true}.build()),
			dip4, 5353, ananta.FiveTuple{Src: dip4, Dst: client4, SrcPort: 5353, DstPort: 40000, Proto: 17}},
		{"v4-keep-port",
			icmpMsg(router4, vip4, 3, 1, 0, spec{src: vip4, dst: client4, proto: 6, sport: 80, dport: 40000}.build()),
			dip4, 0, ananta.FiveTuple{Src: dip4, Dst: client4, SrcPort: 80, DstPort: 40000, Proto: 6}},
		{"v4-quote-without-ports",
			icmpMsg(router4, vip4, 3, 1, 0, spec{src: vip4, dst: client4, proto: 6, sport: 80, dport: 40000}.build()[:24]),
			dip4, 8080, ananta.FiveTuple{Src: dip4, Dst: client4, Proto: 6}},
		{"v4-quoted-echo",
			icmpMsg(router4, vip4, 11, 0, 0, icmpMsg(vip4, client4, 8, 0, 7, []byte("ping"))),
			dip4, 8080, ananta.FiveTuple{Src: dip4, Dst: client4, Proto: 1}},
		{"v6-tcp-whole",
			icmpMsg(router6, vip6, 2, 0, 1280, spec{src: vip6, dst: client6, proto: 6, sport: 80, dport: 40000, payload: []byte("data")}.build()),
			dip6, 8080, ananta.FiveTuple{Src: dip6, Dst: client6, SrcPort: 8080, DstPort: 40000, Proto: 6}},
		{"v6-udp-truncated",
			icmpMsg(router6, vip6, 1, 4, 0, spec{src: vip6, dst: client6, proto: 17, sport: 53, dport: 40000, payload: []byte("data")}.build()[:48]),
			dip6, 5353, ananta.FiveTuple{Src: dip6, Dst: client6, SrcPort: 5353, DstPort: 40000, Proto: 17}},
		{"v6-quoted-echo",
			icmpMsg(router6, vip6, 3, 0, 0, icmpMsg(vip6, client6, 128, 0, 7, []byte("ping"))),
			dip6, 1, ananta.FiveTuple{Src: dip6, Dst: client6, Proto: 58}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			var p Packet
			if err := Parse(b, &p); err != nil {
				t.Fatal(err)
			}
			if err := Rewrite(b, &p, Dst, tt.dip, 0); err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			if err := RewriteQuoted(b, &p, Src, tt.dip, tt.port); err != nil {
				t.Fatalf("RewriteQuoted: %v", err)
			}
			if p.Inner != tt.wantInner || p.Tuple.Dst != tt.dip {
				t.Errorf("Tuple %v Inner %v, want inner %v", p.Tuple, p.Inner, tt.wantInner)
			}
			var q Packet
			if err := Parse(b, &q); err != nil || q.Inner != tt.wantInner {
				t.Errorf("Parse(rewritten).Inner = %v, %v", q.Inner, err)
			}
			verifyICMPError(t, b)
			if tt.name == "v4-udp-no-checksum" && get16(b, 28+26) != 0 {
				t.Errorf("quoted UDP checksum 0 became %#x", get16(b, 28+26))
			}
			// The destination of the quote, too.
			if err := RewriteQuoted(b, &p, Dst, tt.wantInner.Dst, 0); err != nil {
				t.Fatal(err)
			}
			verifyICMPError(t, b)
		})
	}
}

func TestRewriteQuotedErrors(t *testing.T) {
	v4 := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2}.build()
	icmp := icmpMsg(v4d, v4b, 3, 4, 1400, v4)
	var p Packet
	_ = Parse(v4, &p)
	if err := RewriteQuoted(v4, &p, Src, v4c, 1); !errors.Is(err, ErrUnsupported) {
		t.Errorf("not an ICMP error: %v", err)
	}
	_ = Parse(icmp, &p)
	orig := bytes.Clone(icmp)
	if err := RewriteQuoted(icmp, &p, Src, v6c, 1); !errors.Is(err, ErrFamily) {
		t.Errorf("family: %v", err)
	}
	if err := RewriteQuoted(icmp, &p, Field(9), v4c, 1); !errors.Is(err, ErrUnsupported) {
		t.Errorf("field: %v", err)
	}
	if err := RewriteQuoted(icmp[:40], &p, Src, v4c, 1); !errors.Is(err, ErrBadHeader) {
		t.Errorf("short slice: %v", err)
	}
	if !bytes.Equal(icmp, orig) {
		t.Error("packet changed on error")
	}
}
