package encap

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
)

// icmpMsg builds an IPv4 ICMP or IPv6 ICMPv6 packet from src to dst with the
// given type, code, 4-byte rest-of-header and body, checksums by the
// reference code.
func icmpMsg(src, dst netip.Addr, typ, code uint8, rest uint32, body []byte) []byte {
	m := []byte{typ, code, 0, 0, byte(rest >> 24), byte(rest >> 16), byte(rest >> 8), byte(rest)}
	m = append(m, body...)
	if src.Is4() {
		b := spec{src: src, dst: dst, proto: 1, payload: m}.build()
		put16(b, 22, refTransportChecksum(b, 20, len(b), 1, 2, false))
		return b
	}
	b := spec{src: src, dst: dst, proto: 58, payload: m}.build()
	put16(b, 42, refTransportChecksum(b, 40, len(b), 58, 2, true))
	return b
}

// ext6 builds an IPv6 packet whose next-header chain is hdrs (each an
// extension header whose first byte is patched to the following header)
// ending in the transport protocol proto with segment l4.
func ext6(nhs []uint8, hdrs [][]byte, proto uint8, l4 []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[7] = 64
	copy(b[8:], v6a.AsSlice())
	copy(b[24:], v6b.AsSlice())
	if len(nhs) > 0 {
		b[6] = nhs[0]
	} else {
		b[6] = proto
	}
	for i, h := range hdrs {
		h = bytes.Clone(h)
		if i+1 < len(nhs) {
			h[0] = nhs[i+1]
		} else {
			h[0] = proto
		}
		b = append(b, h...)
	}
	b = append(b, l4...)
	put16(b, 4, uint16(len(b)-40))
	return b
}

func tcpSeg(sport, dport uint16) []byte {
	l4 := make([]byte, 20)
	put16(l4, 0, sport)
	put16(l4, 2, dport)
	l4[12] = 0x50
	l4[13] = TCPFlagSYN | TCPFlagACK
	return l4
}

func TestParseFields(t *testing.T) {
	b := spec{src: v4a, dst: v4b, proto: 6, sport: 1234, dport: 80, tos: 0x2e, df: true, ttl: 9,
		tcpFlags: TCPFlagSYN | TCPFlagECE, options: []byte{1, 1, 1, 0}, payload: []byte("abc")}.build()
	padded := append(bytes.Clone(b), 0, 0, 0, 0, 0, 0) // Ethernet minimum-size padding
	var p Packet
	if err := Parse(padded, &p); err != nil {
		t.Fatal(err)
	}
	want := Packet{
		Tuple:    ananta.FiveTuple{Src: v4a, Dst: v4b, SrcPort: 1234, DstPort: 80, Proto: ananta.ProtocolTCP},
		L4Offset: 24, TotalLen: len(b), Version: 4, DF: true, TTL: 9, TOS: 0x2e,
		TCPFlags: TCPFlagSYN | TCPFlagECE, csum: 24 + 16, ports: true,
	}
	if p != want {
		t.Errorf("Parse =\n%+v, want\n%+v", p, want)
	}

	b6 := spec{src: v6a, dst: v6b, proto: 17, sport: 53, dport: 5353, tos: 0xb8, ttl: 255}.build()
	if err := Parse(b6, &p); err != nil {
		t.Fatal(err)
	}
	want = Packet{
		Tuple:    ananta.FiveTuple{Src: v6a, Dst: v6b, SrcPort: 53, DstPort: 5353, Proto: ananta.ProtocolUDP},
		L4Offset: 40, TotalLen: 48, Version: 6, DF: true, TTL: 255, TOS: 0xb8, csum: 46, ports: true,
	}
	if p != want {
		t.Errorf("Parse =\n%+v, want\n%+v", p, want)
	}

	echo := icmpMsg(v4a, v4b, 8, 0, 0x12340001, []byte("ping"))
	if err := Parse(echo, &p); err != nil {
		t.Fatal(err)
	}
	if p.ICMPType != 8 || p.ICMPCode != 0 || p.ICMPError || p.Tuple.SrcPort != 0 || p.Tuple.DstPort != 0 || p.Tuple.Proto != ananta.ProtocolICMP {
		t.Errorf("echo: %+v", p)
	}
}

func TestParseIPv6Extensions(t *testing.T) {
	hbh := []byte{0, 0, 1, 4, 0, 0, 0, 0}
	dst16 := []byte{0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	ah := make([]byte, 24) // AH: length field 4 -> (4+2)*4 = 24 bytes
	ah[1] = 4
	atomicFrag := []byte{0, 0, 0, 0, 0, 0, 0, 7}
	firstFrag := []byte{0, 0, 0, 1, 0, 0, 0, 7}
	routing := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0x20, 1, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	tests := []struct {
		name    string
		b       []byte
		proto   uint8
		l4      int
		frag    FragmentKind
		ports   bool
		routing bool
	}{
		{"hbh-dst-tcp", ext6([]uint8{0, 60}, [][]byte{hbh, dst16}, 6, tcpSeg(7, 9)), 6, 64, NotFragment, true, false},
		{"ah-tcp", ext6([]uint8{51}, [][]byte{ah}, 6, tcpSeg(7, 9)), 6, 64, NotFragment, true, false},
		{"atomic-fragment", ext6([]uint8{44}, [][]byte{atomicFrag}, 6, tcpSeg(7, 9)), 6, 48, NotFragment, true, false},
		{"first-fragment", ext6([]uint8{44}, [][]byte{firstFrag}, 6, tcpSeg(7, 9)), 6, 48, FirstFragment, true, false},
		{"routing-segments-left", ext6([]uint8{43}, [][]byte{routing}, 6, tcpSeg(7, 9)), 6, 64, NotFragment, true, true},
		{"esp", ext6([]uint8{0}, [][]byte{hbh}, 50, make([]byte, 16)), 50, 48, NotFragment, false, false},
		{"no-next-header", ext6(nil, nil, 59, nil), 59, 40, NotFragment, false, false},
		{"max-extensions", ext6([]uint8{0, 60, 60, 60, 60, 60, 60, 60}, [][]byte{hbh, hbh, hbh, hbh, hbh, hbh, hbh, hbh}, 17, []byte{0, 1, 0, 2, 0, 8, 0, 0}), 17, 40 + 64, NotFragment, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := Parse(tt.b, &p); err != nil {
				t.Fatal(err)
			}
			if uint8(p.Tuple.Proto) != tt.proto || p.L4Offset != tt.l4 || p.Fragment != tt.frag || p.ports != tt.ports || p.routing != tt.routing {
				t.Errorf("Parse = %+v", p)
			}
			if tt.ports && (p.Tuple.SrcPort == 0 || p.Tuple.DstPort == 0) {
				t.Errorf("ports missing: %v", p.Tuple)
			}
			if !tt.ports && (p.Tuple.SrcPort != 0 || p.Tuple.DstPort != 0) {
				t.Errorf("ports reported: %v", p.Tuple)
			}
		})
	}
	// One more than MaxExtensionHeaders.
	nhs := []uint8{0, 60, 60, 60, 60, 60, 60, 60, 60}
	var hs [][]byte
	for range nhs {
		hs = append(hs, hbh)
	}
	var p Packet
	if err := Parse(ext6(nhs, hs, 17, []byte{0, 1, 0, 2, 0, 8, 0, 0}), &p); !errors.Is(err, ErrUnsupported) {
		t.Errorf("too many extension headers: %v, want ErrUnsupported", err)
	}
}

func TestParseErrors(t *testing.T) {
	good := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2}.build()
	good6 := spec{src: v6a, dst: v6b, proto: 17, sport: 1, dport: 2, payload: []byte("xy")}.build()
	mod := func(b []byte, f func([]byte)) []byte { b = bytes.Clone(b); f(b); return b }
	quote := spec{src: v4b, dst: v4a, proto: 6, sport: 80, dport: 4000, df: true}.build()
	quote6 := spec{src: v6b, dst: v6a, proto: 6, sport: 80, dport: 4000}.build()
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"version0", mod(good, func(b []byte) { b[0] = 0x05 }), ErrBadVersion},
		{"v4-19", good[:19], ErrTruncated},
		{"ihl4", mod(good, func(b []byte) { b[0] = 0x44 }), ErrBadHeader},
		{"ihl-past-end", mod(good[:23], func(b []byte) { b[0] = 0x46; put16(b, 2, 23) }), ErrTruncated},
		{"total-below-ihl", mod(good, func(b []byte) { put16(b, 2, 19) }), ErrBadLength},
		{"total-past-end", good[:len(good)-1], ErrTruncated},
		{"tcp-short", mod(good[:39], func(b []byte) { put16(b, 2, 39) }), ErrTruncated},
		{"tcp-doff-small", mod(good, func(b []byte) { b[32] = 0x40 }), ErrBadHeader},
		{"tcp-doff-past-end", mod(good, func(b []byte) { b[32] = 0x60 }), ErrTruncated},
		{"tcp-doff-past-total-into-padding", mod(append(bytes.Clone(good), 0, 0, 0, 0), func(b []byte) { b[32] = 0x60 }), ErrTruncated},
		{"udp-short", mod(good6[:47], func(b []byte) { put16(b, 4, 7) }), ErrTruncated},
		{"udp-length-small", mod(good6, func(b []byte) { put16(b, 44, 7) }), ErrBadLength},
		{"udp-length-large", mod(good6, func(b []byte) { put16(b, 44, 11) }), ErrBadLength},
		{"v6-39", good6[:39], ErrTruncated},
		{"v6-payload-past-end", good6[:len(good6)-1], ErrTruncated},
		{"v6-ext-past-end", ext6([]uint8{60}, [][]byte{{0, 2, 0, 0, 0, 0, 0, 0}}, 59, nil), ErrTruncated},
		{"v6-frag-short", mod(ext6(nil, nil, 44, []byte{6, 0, 0, 0}), nil2), ErrTruncated},
		{"icmp-short", mod(icmpMsg(v4a, v4b, 8, 0, 0, nil)[:27], func(b []byte) { put16(b, 2, 27) }), ErrTruncated},
		{"icmp-error-no-quote", icmpMsg(v4a, v4b, 3, 4, 1400, nil), ErrTruncated},
		{"quote-ihl-small", icmpMsg(v4d, v4b, 3, 4, 1400, mod(quote, func(b []byte) { b[0] = 0x44 })), ErrBadHeader},
		{"quote-ihl-past-end", icmpMsg(v4d, v4b, 3, 4, 1400, mod(quote[:24], func(b []byte) { b[0] = 0x47 })), ErrTruncated},
		{"quote-total-below-ihl", icmpMsg(v4d, v4b, 3, 4, 1400, mod(quote, func(b []byte) { put16(b, 2, 10) })), ErrBadLength},
		{"quote-version", icmpMsg(v4d, v4b, 3, 4, 1400, quote6), ErrBadVersion},
		{"quote6-short", icmpMsg(v6d, v6b, 2, 0, 1400, quote6[:39]), ErrTruncated},
		{"quote6-ext-past-end", icmpMsg(v6d, v6b, 1, 0, 0, ext6([]uint8{0}, [][]byte{{0, 3, 0, 0, 0, 0, 0, 0}}, 6, make([]byte, 16))[:60]), ErrTruncated},
		{"ipip-inner-bad", spec{src: v4d, dst: v4c, proto: 4, payload: mod(good, func(b []byte) { b[0] = 0x44 })}.build(), ErrBadHeader},
		{"ipip-inner-version", spec{src: v4d, dst: v4c, proto: 4, payload: good6}.build(), ErrBadVersion},
		{"ip6ip6-inner-version", spec{src: v6d, dst: v6c, proto: 41, payload: good}.build(), ErrBadVersion},
		{"ipip-empty", spec{src: v4d, dst: v4c, proto: 4}.build(), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			err := Parse(tt.b, &p)
			if !errors.Is(err, tt.want) {
				t.Errorf("Parse = %v, want %v", err, tt.want)
			}
		})
	}
}

func nil2([]byte) {}

func TestParseICMPErrorQuotes(t *testing.T) {
	quote := spec{src: v4b, dst: v4a, proto: 17, sport: 53, dport: 4000, df: true, payload: make([]byte, 100)}.build()
	inner := ananta.FiveTuple{Src: v4b, Dst: v4a, SrcPort: 53, DstPort: 4000, Proto: ananta.ProtocolUDP}
	for _, n := range []int{20, 27, 28, 40, len(quote)} {
		b := icmpMsg(v4d, v4b, 11, 0, 0, quote[:n])
		var p Packet
		if err := Parse(b, &p); err != nil {
			t.Fatalf("quote of %d bytes: %v", n, err)
		}
		want := inner
		if n < 28 {
			want.SrcPort, want.DstPort = 0, 0
		}
		if !p.ICMPError || p.Inner != want || p.InnerOffset != 28 || p.InnerL4Offset != 48 || p.ICMPType != 11 {
			t.Errorf("quote of %d bytes: %+v", n, p)
		}
		if p.innerPorts != (n >= 28) {
			t.Errorf("quote of %d bytes: innerPorts %v", n, p.innerPorts)
		}
	}
	// A later fragment of an ICMP error carries no ICMP header.
	b := icmpMsg(v4d, v4b, 3, 4, 0, quote)
	b[7] = 10
	var p Packet
	if err := Parse(b, &p); err != nil || p.ICMPError || p.Fragment != LaterFragment {
		t.Errorf("later fragment: %+v, %v", p, err)
	}
	// ICMPv6 in IPv4 is just an unknown protocol.
	b = spec{src: v4a, dst: v4b, proto: 58, payload: []byte{1, 0, 0, 0, 0, 0, 0, 0}}.build()
	if err := Parse(b, &p); err != nil || p.ICMPError || p.Tuple.Proto != 58 {
		t.Errorf("ICMPv6 in IPv4: %+v, %v", p, err)
	}
	// An ICMP error quoting an ICMP error is reported, without recursion.
	q := icmpMsg(v4b, v4a, 3, 3, 0, quote[:28])
	b = icmpMsg(v4d, v4b, 3, 4, 0, q)
	if err := Parse(b, &p); err != nil || !p.ICMPError || p.Inner.Proto != ananta.ProtocolICMP {
		t.Errorf("error about an error: %+v, %v", p, err)
	}
}

func TestParseTunnels(t *testing.T) {
	in4 := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, df: true}.build()
	in6 := spec{src: v6a, dst: v6b, proto: 17, sport: 3, dport: 4}.build()
	tests := []struct {
		name  string
		b     []byte
		inner ananta.FiveTuple
		off   int
	}{
		{"4in4", spec{src: v4d, dst: v4c, proto: 4, payload: in4}.build(), ananta.FiveTuple{Src: v4a, Dst: v4b, SrcPort: 1, DstPort: 2, Proto: 6}, 20},
		{"6in4", spec{src: v4d, dst: v4c, proto: 41, payload: in6}.build(), ananta.FiveTuple{Src: v6a, Dst: v6b, SrcPort: 3, DstPort: 4, Proto: 17}, 20},
		{"4in6", spec{src: v6d, dst: v6c, proto: 4, payload: in4}.build(), ananta.FiveTuple{Src: v4a, Dst: v4b, SrcPort: 1, DstPort: 2, Proto: 6}, 40},
		{"6in6", spec{src: v6d, dst: v6c, proto: 41, payload: in6}.build(), ananta.FiveTuple{Src: v6a, Dst: v6b, SrcPort: 3, DstPort: 4, Proto: 17}, 40},
		{"4in4in4", spec{src: v4d, dst: v4c, proto: 4, payload: spec{src: v4a, dst: v4b, proto: 4, payload: in4}.build()}.build(), ananta.FiveTuple{Src: v4a, Dst: v4b, Proto: 4}, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := Parse(tt.b, &p); err != nil {
				t.Fatal(err)
			}
			if !p.Encapsulated || p.Inner != tt.inner || p.InnerOffset != tt.off || p.L4Offset != tt.off {
				t.Errorf("Parse = %+v", p)
			}
		})
	}
	// A fragmented tunnel packet is not looked into.
	b := spec{src: v4d, dst: v4c, proto: 4, payload: in4}.build()
	b[6] = 0x20
	var p Packet
	if err := Parse(b, &p); err != nil || p.Encapsulated || p.Fragment != FirstFragment {
		t.Errorf("fragmented tunnel: %+v, %v", p, err)
	}
}

func TestFragmentKindString(t *testing.T) {
	if NotFragment.String() != "none" || FirstFragment.String() != "first" || LaterFragment.String() != "later" {
		t.Error("FragmentKind.String")
	}
	if Src.String() != "src" || Dst.String() != "dst" {
		t.Error("Field.String")
	}
}
