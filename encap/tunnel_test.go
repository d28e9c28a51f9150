package encap

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestEncapDecapFamilies(t *testing.T) {
	inner4 := spec{src: v4a, dst: v4b, proto: 6, sport: 40000, dport: 80, tos: 0xb9, df: true, id: 0x1234, payload: []byte("hello")}.build()
	inner4NoDF := spec{src: v4a, dst: v4b, proto: 17, sport: 5353, dport: 53, tos: 0x02, id: 0xbeef, payload: []byte("q")}.build()
	inner6 := spec{src: v6a, dst: v6b, proto: 17, sport: 1, dport: 2, tos: 0xb9, payload: []byte("hello6")}.build()
	outer4s, outer4d := v4d, netip.MustParseAddr("198.18.20.2")
	outer6s, outer6d := v6d, netip.MustParseAddr("2001:db8:3::1")

	tests := []struct {
		name     string
		inner    []byte
		src, dst netip.Addr
		opts     EncapOptions
		// expected outer fields
		proto   uint8
		tos     uint8
		df      bool
		id      uint16
		ttl     uint8
		flowLbl uint32
	}{
		{"4in4", inner4, outer4s, outer4d, EncapOptions{}, 4, 0xb9, true, 0, 64, 0},
		{"4in4-nodf", inner4NoDF, outer4s, outer4d, EncapOptions{TTL: 7}, 4, 0x02, false, 0xbeef, 7, 0},
		{"4in4-id", inner4NoDF, outer4s, outer4d, EncapOptions{ID: 77}, 4, 0x02, false, 77, 64, 0},
		{"6in4", inner6, outer4s, outer4d, EncapOptions{TTL: 200}, 41, 0xb9, true, 0, 200, 0},
		{"6in6", inner6, outer6s, outer6d, EncapOptions{FlowLabel: 0xabcde}, 41, 0xb9, true, 0, 64, 0xabcde},
		{"6in6-flow-masked", inner6, outer6s, outer6d, EncapOptions{FlowLabel: 0xfff12345}, 41, 0xb9, true, 0, 64, 0x12345},
		{"4in6", inner4, outer6s, outer6d, EncapOptions{TTL: 1}, 4, 0xb9, true, 0, 1, 0},
		{"4in6-nodf", inner4NoDF, outer6s, outer6d, EncapOptions{}, 4, 0x02, false, 0, 64, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const headroom = 64
			buf := make([]byte, headroom+len(tt.inner)+7) // trailing bytes stand for link padding
			for i := range buf {
				buf[i] = 0xee
			}
			copy(buf[headroom:], tt.inner)
			end := headroom + len(tt.inner)
			start, err := Encap(buf, headroom, end, tt.src, tt.dst, tt.opts)
			if err != nil {
				t.Fatalf("Encap: %v", err)
			}
			if !bytes.Equal(buf[headroom:end], tt.inner) {
				t.Fatalf("inner bytes changed")
			}
			if !bytes.Equal(buf[:start], bytes.Repeat([]byte{0xee}, start)) || !bytes.Equal(buf[end:], bytes.Repeat([]byte{0xee}, 7)) {
				t.Fatalf("bytes outside the outer packet changed")
			}
			o := buf[start:headroom]
			if tt.src.Is4() {
				if start != headroom-20 {
					t.Fatalf("start = %d, want %d", start, headroom-20)
				}
				checkField(t, "version/IHL", int(o[0]), 0x45)
				checkField(t, "TOS", int(o[1]), int(tt.tos))
				checkField(t, "total length", int(get16(o, 2)), 20+len(tt.inner))
				checkField(t, "ID", int(get16(o, 4)), int(tt.id))
				wantFrag := 0
				if tt.df {
					wantFrag = 0x4000
				}
				checkField(t, "flags/fragment offset", int(get16(o, 6)), wantFrag)
				checkField(t, "TTL", int(o[8]), int(tt.ttl))
				checkField(t, "protocol", int(o[9]), int(tt.proto))
				checkField(t, "header checksum", int(get16(o, 10)), int(refIPv4HeaderChecksum(o)))
				checkAddr(t, "src", o[12:16], tt.src)
				checkAddr(t, "dst", o[16:20], tt.dst)
			} else {
				if start != headroom-40 {
					t.Fatalf("start = %d, want %d", start, headroom-40)
				}
				checkField(t, "version", int(o[0]>>4), 6)
				checkField(t, "traffic class", int(o[0]<<4|o[1]>>4), int(tt.tos))
				checkField(t, "flow label", int(uint32(o[1]&0x0f)<<16|uint32(get16(o, 2))), int(tt.flowLbl))
				checkField(t, "payload length", int(get16(o, 4)), len(tt.inner))
				checkField(t, "next header", int(o[6]), int(tt.proto))
				checkField(t, "hop limit", int(o[7]), int(tt.ttl))
				checkAddr(t, "src", o[8:24], tt.src)
				checkAddr(t, "dst", o[24:40], tt.dst)
			}
			// The tunnel packet parses as encapsulated with the inner tuple.
			var p, pi Packet
			if err := Parse(buf[start:end], &p); err != nil {
				t.Fatalf("Parse(outer): %v", err)
			}
			if err := Parse(tt.inner, &pi); err != nil {
				t.Fatal(err)
			}
			if !p.Encapsulated || p.Inner != pi.Tuple || p.InnerOffset != headroom-start {
				t.Errorf("Parse(outer) = %+v, want encapsulated %v at %d", p, pi.Tuple, headroom-start)
			}
			// Decap, with link padding after the packet, returns the inner bytes.
			in, src, err := Decap(buf[start:])
			if err != nil {
				t.Fatalf("Decap: %v", err)
			}
			if !bytes.Equal(in, tt.inner) || src != tt.src {
				t.Errorf("Decap = %x, %v; want %x, %v", in, src, tt.inner, tt.src)
			}
			if off := cap(buf[start:]) - cap(in); off != headroom-start {
				t.Errorf("inner starts at %d, want %d", off, headroom-start)
			}
		})
	}
}

func checkField(t *testing.T, name string, got, want int) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %#x, want %#x", name, got, want)
	}
}

func checkAddr(t *testing.T, name string, got []byte, want netip.Addr) {
	t.Helper()
	if a, _ := netip.AddrFromSlice(got); a != want {
		t.Errorf("%s = %v, want %v", name, a, want)
	}
}

func TestEncapErrors(t *testing.T) {
	inner4 := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, df: true}.build()
	inner6 := spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2}.build()
	mk := func(headroom int, inner []byte) []byte {
		return append(make([]byte, headroom), inner...)
	}
	tests := []struct {
		name       string
		b          []byte
		start, end int
		src, dst   netip.Addr
		want       error
	}{
		{"headroom4", mk(19, inner4), 19, 19 + len(inner4), v4d, v4c, ErrNoHeadroom},
		{"headroom6", mk(39, inner4), 39, 39 + len(inner4), v6d, v6c, ErrNoHeadroom},
		{"family-mixed", mk(40, inner4), 40, 40 + len(inner4), v4d, v6c, ErrFamily},
		{"family-invalid", mk(40, inner4), 40, 40 + len(inner4), netip.Addr{}, netip.Addr{}, ErrFamily},
		{"bounds-end", mk(40, inner4), 40, 41 + len(inner4), v4d, v4c, ErrBadLength},
		{"bounds-start", mk(40, inner4), -1, 40, v4d, v4c, ErrBadLength},
		{"bounds-reversed", mk(40, inner4), 41, 40, v4d, v4c, ErrBadLength},
		{"empty", mk(40, inner4), 40, 40, v4d, v4c, ErrTruncated},
		{"short4", mk(40, inner4), 40, 59, v4d, v4c, ErrTruncated},
		{"short6", mk(40, inner6), 40, 79, v4d, v4c, ErrTruncated},
		{"version", mk(40, append([]byte{0x55}, inner4[1:]...)), 40, 40 + len(inner4), v4d, v4c, ErrBadVersion},
		{"too-long4", mk(40, make([]byte, 65516)), 40, 40 + 65516, v4d, v4c, ErrBadLength},
		{"too-long6", mk(40, make([]byte, 65536)), 40, 40 + 65536, v6d, v6c, ErrBadLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "too-long4" || tt.name == "too-long6" {
				copy(tt.b[40:], inner4)
				if tt.name == "too-long6" {
					copy(tt.b[40:], inner6)
				}
			}
			orig := bytes.Clone(tt.b)
			_, err := Encap(tt.b, tt.start, tt.end, tt.src, tt.dst, EncapOptions{})
			if !errors.Is(err, tt.want) {
				t.Errorf("Encap = %v, want %v", err, tt.want)
			}
			if !bytes.Equal(tt.b, orig) {
				t.Errorf("Encap changed the buffer on error")
			}
		})
	}
	// The largest packets that fit.
	b := mk(20, make([]byte, 65515))
	copy(b[20:], inner4)
	if _, err := Encap(b, 20, len(b), v4d, v4c, EncapOptions{}); err != nil {
		t.Errorf("Encap of a 65535-byte outer packet: %v", err)
	}
	b = mk(40, make([]byte, 65535))
	copy(b[40:], inner6)
	if _, err := Encap(b, 40, len(b), v6d, v6c, EncapOptions{}); err != nil {
		t.Errorf("Encap of a 65535-byte IPv6 payload: %v", err)
	}
}

func TestOverhead(t *testing.T) {
	if Overhead(v4a) != 20 || Overhead(v6a) != 40 || Overhead(netip.Addr{}) != 0 {
		t.Errorf("Overhead = %d, %d, %d", Overhead(v4a), Overhead(v6a), Overhead(netip.Addr{}))
	}
}

// encapsulated returns inner encapsulated from src to dst, with the tunnel
// packet starting at index 0.
func encapsulated(t *testing.T, inner []byte, src, dst netip.Addr) []byte {
	t.Helper()
	b := append(make([]byte, 40), inner...)
	start, err := Encap(b, 40, len(b), src, dst, EncapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b[start:]
}

func TestDecapErrors(t *testing.T) {
	inner4 := spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, df: true}.build()
	inner6 := spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2}.build()
	good4 := encapsulated(t, inner4, v4d, v4c)
	good6 := encapsulated(t, inner6, v6d, v6c)

	mod := func(b []byte, f func(b []byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	fix4 := func(b []byte) { put16(b, 10, refIPv4HeaderChecksum(b)) }
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"version", mod(good4, func(b []byte) { b[0] = 0x55 }), ErrBadVersion},
		{"short4", good4[:19], ErrTruncated},
		{"short6", good6[:39], ErrTruncated},
		{"ihl", mod(good4, func(b []byte) { b[0] = 0x44; fix4(b) }), ErrBadHeader},
		{"total-past-end", good4[:len(good4)-1], ErrTruncated},
		{"payload-past-end", good6[:len(good6)-1], ErrTruncated},
		{"checksum", mod(good4, func(b []byte) { b[10] ^= 1 }), ErrBadChecksum},
		{"fragment4", mod(good4, func(b []byte) { b[6] = 0x20; fix4(b) }), ErrUnsupported},
		{"later-fragment4", mod(good4, func(b []byte) { b[7] = 1; fix4(b) }), ErrUnsupported},
		{"not-tunnel4", inner4, ErrUnsupported},
		{"not-tunnel6", inner6, ErrUnsupported},
		{"wrong-inner4", mod(good4, func(b []byte) { b[9] = 41; fix4(b) }), ErrBadVersion},
		{"wrong-inner6", mod(good6, func(b []byte) { b[6] = 4 }), ErrBadVersion},
		{"inner-short4", mod(good4[:39], func(b []byte) { put16(b, 2, 39); fix4(b) }), ErrTruncated},
		{"inner-short6", mod(good6[:79], func(b []byte) { put16(b, 4, 39) }), ErrTruncated},
		{"inner-empty4", mod(good4[:20], func(b []byte) { put16(b, 2, 20); fix4(b) }), ErrBadVersion},
		{"ecn-drop", mod(encapsulated(t, inner4, v4d, v4c), func(b []byte) { b[1] |= 3; fix4(b) }), ErrECN},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, _, err := Decap(tt.b)
			if !errors.Is(err, tt.want) || in != nil {
				t.Errorf("Decap = %x, %v; want error %v", in, err, tt.want)
			}
		})
	}
}

func TestDecapIPv6Extensions(t *testing.T) {
	inner := spec{src: v4a, dst: v4b, proto: 17, sport: 1, dport: 2, df: true, payload: []byte("x")}.build()
	// Outer IPv6 with a destination options header carrying the RFC 2473
	// tunnel encapsulation limit option (type 4, length 1, limit 4) and PadN.
	dopt := []byte{protoIPIP, 0, 4, 1, 4, 1, 1, 0}
	b := make([]byte, 40, 40+len(dopt)+len(inner))
	b[0] = 0x60
	put16(b, 4, uint16(len(dopt)+len(inner)))
	b[6], b[7] = protoDstOpts, 64
	copy(b[8:], v6d.AsSlice())
	copy(b[24:], v6c.AsSlice())
	b = append(append(b, dopt...), inner...)
	in, src, err := Decap(b)
	if err != nil || !bytes.Equal(in, inner) || src != v6d {
		t.Fatalf("Decap = %x, %v, %v", in, src, err)
	}
	// A fragment header makes it unsupported.
	b[6] = protoFragment
	b[40], b[42], b[43] = protoIPIP, 0, 1
	if _, _, err := Decap(b); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Decap(fragment) = %v, want ErrUnsupported", err)
	}
}

// TestDecapECN checks RFC 6040's decapsulation table (section 4.2).
func TestDecapECN(t *testing.T) {
	const notECT, ect1, ect0, ce = 0, 1, 2, 3
	// want[inner][outer], indexed by codepoint; -1 means drop.
	want := [4][4]int{
		notECT: {notECT, notECT, notECT, -1},
		ect1:   {ect1, ect1, ect1, ce},
		ect0:   {ect0, ect1, ect0, ce},
		ce:     {ce, ce, ce, ce},
	}
	for _, outer6 := range []bool{false, true} {
		for _, inner6 := range []bool{false, true} {
			for in := range 4 {
				for out := range 4 {
					var inner []byte
					if inner6 {
						inner = spec{src: v6a, dst: v6b, proto: 6, sport: 1, dport: 2, tos: 0xa0 | uint8(in)}.build()
					} else {
						inner = spec{src: v4a, dst: v4b, proto: 6, sport: 1, dport: 2, df: true, tos: 0xa0 | uint8(in)}.build()
					}
					src, dst := v4d, v4c
					if outer6 {
						src, dst = v6d, v6c
					}
					b := encapsulated(t, bytes.Clone(inner), src, dst)
					if outer6 {
						b[1] = b[1]&^0x30 | uint8(out)<<4
					} else {
						b[1] = b[1]&^3 | uint8(out)
						put16(b, 10, refIPv4HeaderChecksum(b))
					}
					got, _, err := Decap(b)
					w := want[in][out]
					if w < 0 {
						if !errors.Is(err, ErrECN) {
							t.Errorf("outer6=%v inner6=%v inner %d outer %d: err %v, want ErrECN", outer6, inner6, in, out, err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("Decap: %v", err)
					}
					var p Packet
					if err := Parse(got, &p); err != nil {
						t.Fatal(err)
					}
					if int(p.TOS&3) != w || p.TOS>>2 != 0xa0>>2 {
						t.Errorf("outer6=%v inner6=%v inner %d outer %d: TOS %#x, want ECN %d", outer6, inner6, in, out, p.TOS, w)
					}
					if !inner6 && get16(got, 10) != refIPv4HeaderChecksum(got) {
						t.Errorf("inner IPv4 header checksum not updated")
					}
				}
			}
		}
	}
}
