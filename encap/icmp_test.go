package encap

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestTooBigIPv4(t *testing.T) {
	mux := netip.MustParseAddr("198.19.0.1")
	for _, size := range []int{100, 576, 1500} {
		pkt := spec{src: v4a, dst: v4b, proto: 6, sport: 40000, dport: 80, df: true, payload: make([]byte, size-40)}.build()
		padded := append(bytes.Clone(pkt), 0xaa, 0xbb) // link padding is not quoted
		out := make([]byte, MaxTooBigIPv4+10)
		n, err := TooBig(out, padded, mux, 1480)
		if size <= 1480 {
			if !errors.Is(err, ErrBadLength) {
				t.Errorf("size %d fits in 1480: err %v", size, err)
			}
			n, err = TooBig(out, padded, mux, size-1)
		}
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		mtu := 1480
		if size <= 1480 {
			mtu = size - 1
		}
		quote := min(size, 548)
		if n != 28+quote {
			t.Fatalf("size %d: n = %d, want %d", size, n, 28+quote)
		}
		h := out[:n]
		checkField(t, "version/IHL", int(h[0]), 0x45)
		checkField(t, "TOS", int(h[1]), 0xc0)
		checkField(t, "total length", int(get16(h, 2)), n)
		checkField(t, "ID", int(get16(h, 4)), int(get16(h, 22)))
		checkField(t, "flags/fragment offset", int(get16(h, 6)), 0)
		checkField(t, "TTL", int(h[8]), 64)
		checkField(t, "protocol", int(h[9]), 1)
		checkField(t, "header checksum", int(get16(h, 10)), int(refIPv4HeaderChecksum(h)))
		checkAddr(t, "src", h[12:16], mux)
		checkAddr(t, "dst", h[16:20], v4a)
		checkField(t, "ICMP type", int(h[20]), 3)
		checkField(t, "ICMP code", int(h[21]), 4)
		checkField(t, "ICMP checksum", int(get16(h, 22)), int(refTransportChecksum(h, 20, n, 1, 2, false)))
		checkField(t, "unused", int(get16(h, 24)), 0)
		checkField(t, "next-hop MTU", int(get16(h, 26)), mtu)
		if !bytes.Equal(h[28:], pkt[:quote]) {
			t.Errorf("quote differs from the packet")
		}
		if n > MaxTooBigIPv4 {
			t.Errorf("answer of %d bytes exceeds %d", n, MaxTooBigIPv4)
		}
		var p, orig Packet
		_ = Parse(pkt, &orig)
		if err := Parse(h, &p); err != nil || !p.ICMPError || p.Inner != orig.Tuple {
			t.Errorf("answer parses to %+v, %v", p, err)
		}
		if NeedsTooBig(&p, 20, 100) {
			t.Errorf("NeedsTooBig(an ICMP error) = true")
		}
	}
}

func TestTooBigIPv6(t *testing.T) {
	mux := netip.MustParseAddr("2001:db8:ff::1")
	for _, size := range []int{1281, 1300, 1500, 9000} {
		pkt := spec{src: v6a, dst: v6b, proto: 17, sport: 4000, dport: 53, payload: make([]byte, size-48)}.build()
		out := make([]byte, MaxTooBigIPv6)
		n, err := TooBig(out, pkt, mux, 1280)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		quote := min(size, 1232)
		if n != 48+quote {
			t.Fatalf("size %d: n = %d, want %d", size, n, 48+quote)
		}
		h := out[:n]
		checkField(t, "version", int(h[0]>>4), 6)
		checkField(t, "traffic class", int(h[0]<<4|h[1]>>4), 0)
		checkField(t, "flow label", int(uint32(h[1]&0x0f)<<16|uint32(get16(h, 2))), 0)
		checkField(t, "payload length", int(get16(h, 4)), n-40)
		checkField(t, "next header", int(h[6]), 58)
		checkField(t, "hop limit", int(h[7]), 64)
		checkAddr(t, "src", h[8:24], mux)
		checkAddr(t, "dst", h[24:40], v6a)
		checkField(t, "ICMPv6 type", int(h[40]), 2)
		checkField(t, "ICMPv6 code", int(h[41]), 0)
		checkField(t, "ICMPv6 checksum", int(get16(h, 42)), int(refTransportChecksum(h, 40, n, 58, 2, true)))
		checkField(t, "MTU", int(uint32(get16(h, 44))<<16|uint32(get16(h, 46))), 1280)
		if !bytes.Equal(h[48:], pkt[:quote]) {
			t.Errorf("quote differs from the packet")
		}
		var p, orig Packet
		_ = Parse(pkt, &orig)
		if err := Parse(h, &p); err != nil || !p.ICMPError || p.Inner != orig.Tuple {
			t.Errorf("answer parses to %+v, %v", p, err)
		}
	}
}

func TestTooBigRefuses(t *testing.T) {
	mux4, mux6 := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("2001:db8:ff::1")
	big4 := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, df: true, payload: make([]byte, 1460)}.build()
	big6 := spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2, payload: make([]byte, 1460)}.build()
	noDF := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, payload: make([]byte, 1460)}.build()
	later := bytes.Clone(big4)
	put16(later, 6, 0x4000|100)
	mcastSrc := spec{src: netip.MustParseAddr("224.0.0.1"), dst: v4b, proto: 17, sport: 1, dport: 2, df: true, payload: make([]byte, 1460)}.build()
	mcastDst := spec{src: v4a, dst: netip.MustParseAddr("239.1.2.3"), proto: 17, sport: 1, dport: 2, df: true, payload: make([]byte, 1460)}.build()
	bcastSrc := spec{src: netip.MustParseAddr("255.255.255.255"), dst: v4b, proto: 17, sport: 1, dport: 2, df: true, payload: make([]byte, 1460)}.build()
	unspec6 := spec{src: netip.IPv6Unspecified(), dst: v6b, proto: 17, sport: 1, dport: 2, payload: make([]byte, 1460)}.build()
	icmpErr4 := icmpMsg(v4a, v4b, 3, 4, 1400, big4)
	put16(icmpErr4, 6, 0x4000)
	put16(icmpErr4, 10, refIPv4HeaderChecksum(icmpErr4))
	icmpErr6 := icmpMsg(v6a, v6b, 1, 0, 0, big6)
	echo6 := icmpMsg(v6a, v6b, 128, 0, 0, make([]byte, 1400))

	out := make([]byte, 2000)
	tests := []struct {
		name string
		pkt  []byte
		from netip.Addr
		mtu  int
		out  []byte
		want error
	}{
		{"icmp-error-v4", icmpErr4, mux4, 1400, out, ErrICMPError},
		{"icmp-error-v6", icmpErr6, mux6, 1400, out, ErrICMPError},
		{"no-df", noDF, mux4, 1400, out, ErrNotDF},
		{"later-fragment", later, mux4, 1400, out, ErrNoReply},
		{"multicast-src", mcastSrc, mux4, 1400, out, ErrNoReply},
		{"multicast-dst", mcastDst, mux4, 1400, out, ErrNoReply},
		{"broadcast-src", bcastSrc, mux4, 1400, out, ErrNoReply},
		{"unspecified-src", unspec6, mux6, 1400, out, ErrNoReply},
		{"family-v4", big4, mux6, 1400, out, ErrFamily},
		{"family-v6", big6, mux4, 1400, out, ErrFamily},
		{"family-invalid", big6, netip.Addr{}, 1400, out, ErrFamily},
		{"mtu-small-v4", big4, mux4, 67, out, ErrBadLength},
		{"mtu-small-v6", big6, mux6, 1279, out, ErrBadLength},
		{"mtu-large", big4, mux4, 65536, out, ErrBadLength},
		{"fits", big4, mux4, 1500, out, ErrBadLength},
		{"short-buffer-v4", big4, mux4, 1400, out[:575], ErrShortBuffer},
		{"short-buffer-v6", big6, mux6, 1400, out[:1279], ErrShortBuffer},
		{"malformed", big4[:30], mux4, 1400, out, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := TooBig(tt.out, tt.pkt, tt.from, tt.mtu)
			if !errors.Is(err, tt.want) || n != 0 {
				t.Errorf("TooBig = %d, %v; want %v", n, err, tt.want)
			}
		})
	}
	// ICMPv6 informational messages are answered.
	if _, err := TooBig(out, echo6, mux6, 1280); err != nil {
		t.Errorf("echo request: %v", err)
	}
	// Small enough outputs are fine.
	if _, err := TooBig(out[:576], big4, mux4, 1400); err != nil {
		t.Errorf("576-byte buffer: %v", err)
	}
}

func TestNeedsTooBig(t *testing.T) {
	parse := func(b []byte) *Packet {
		var p Packet
		if err := Parse(b, &p); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	df := parse(spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, df: true, payload: make([]byte, 1460)}.build())
	noDF := parse(spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, payload: make([]byte, 1460)}.build())
	v6 := parse(spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2, payload: make([]byte, 1440)}.build())
	tests := []struct {
		name     string
		p        *Packet
		overhead int
		mtu      int
		want     bool
	}{
		{"df-too-big", df, 20, 1500, true},
		{"df-exact", df, 20, 1520, false},
		{"df-no-overhead", df, 0, 1500, false},
		{"no-df", noDF, 20, 1500, false},
		{"v6-too-big", v6, 40, 1500, true},
		{"v6-fits", v6, 40, 1540, false},
		{"v6-mtu-left-below-1280", v6, 40, 1319, false},
		{"v6-mtu-left-1280", v6, 40, 1320, true},
		{"v4-mtu-left-below-68", df, 20, 87, false},
		{"v4-mtu-left-68", df, 20, 88, true},
	}
	for _, tt := range tests {
		if got := NeedsTooBig(tt.p, tt.overhead, tt.mtu); got != tt.want {
			t.Errorf("%s: NeedsTooBig = %v, want %v", tt.name, got, tt.want)
		}
	}
}
