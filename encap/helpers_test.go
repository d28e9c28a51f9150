package encap

import (
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"testing"
)

// This file holds test-only reference code: a plain RFC 1071 checksum and
// packet builders written without the package's own checksum helpers, so
// that tests compare the package against an independent computation.

// refChecksum is a deliberately simple RFC 1071 checksum over the
// concatenation of parts.
func refChecksum(parts ...[]byte) uint16 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var s uint32
	for i := 0; i < len(all); i += 2 {
		s += uint32(all[i])<<8 | uint32(all[i+1])
		for s > 0xffff {
			s = s&0xffff + s>>16
		}
	}
	return ^uint16(s)
}

func get16(b []byte, off int) uint16    { return uint16(b[off])<<8 | uint16(b[off+1]) }
func put16(b []byte, off int, v uint16) { b[off], b[off+1] = byte(v>>8), byte(v) }

// refPseudo returns the pseudo-header of the transport segment l4 bytes long
// in packet b (IPv4 or IPv6, addresses from the fixed header).
func refPseudo(b []byte, proto uint8, l4len int) []byte {
	if b[0]>>4 == 4 {
		ph := append([]byte{}, b[12:20]...)
		return append(ph, 0, proto, byte(l4len>>8), byte(l4len))
	}
	ph := append([]byte{}, b[8:40]...)
	return append(ph, byte(l4len>>24), byte(l4len>>16), byte(l4len>>8), byte(l4len), 0, 0, 0, proto)
}

// refIPv4HeaderChecksum recomputes the IPv4 header checksum of b.
func refIPv4HeaderChecksum(b []byte) uint16 {
	hl := int(b[0]&0x0f) * 4
	h := append([]byte{}, b[:hl]...)
	h[10], h[11] = 0, 0
	return refChecksum(h)
}

// refTransportChecksum recomputes the checksum of the transport segment
// b[l4:end] with proto's checksum at csumOff within it. UDP 0 maps to 0xffff.
func refTransportChecksum(b []byte, l4, end int, proto uint8, csumOff int, pseudo bool) uint16 {
	seg := append([]byte{}, b[l4:end]...)
	seg[csumOff], seg[csumOff+1] = 0, 0
	var c uint16
	if pseudo {
		c = refChecksum(refPseudo(b, proto, len(seg)), seg)
	} else {
		c = refChecksum(seg)
	}
	if c == 0 && proto == 17 {
		c = 0xffff
	}
	return c
}

// spec describes a simple test packet: IPv4 or IPv6, TCP, UDP or other.
type spec struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	payload      []byte
	tos          uint8
	df           bool
	ttl          uint8
	id           uint16
	tcpFlags     uint8
	noUDPCsum    bool // IPv4 UDP without checksum
	options      []byte
}

// build returns the packet with all checksums computed by the reference code.
func (s spec) build() []byte {
	var l4 []byte
	switch s.proto {
	case 6:
		l4 = make([]byte, 20)
		put16(l4, 0, s.sport)
		put16(l4, 2, s.dport)
		l4[12] = 5 << 4
		l4[13] = s.tcpFlags
		put16(l4, 14, 65535)
	case 17:
		l4 = make([]byte, 8)
		put16(l4, 0, s.sport)
		put16(l4, 2, s.dport)
		put16(l4, 4, uint16(8+len(s.payload)))
	}
	l4 = append(l4, s.payload...)
	ttl := s.ttl
	if ttl == 0 {
		ttl = 64
	}
	var b []byte
	if s.src.Is4() {
		hl := 20 + len(s.options)
		b = make([]byte, hl, hl+len(l4))
		b[0] = 0x40 | byte(hl/4)
		b[1] = s.tos
		put16(b, 2, uint16(hl+len(l4)))
		put16(b, 4, s.id)
		if s.df {
			b[6] = 0x40
		}
		b[8], b[9] = ttl, s.proto
		a, d := s.src.As4(), s.dst.As4()
		copy(b[12:], a[:])
		copy(b[16:], d[:])
		copy(b[20:], s.options)
		put16(b, 10, refIPv4HeaderChecksum(b))
	} else {
		b = make([]byte, 40, 40+len(l4))
		b[0] = 0x60 | s.tos>>4
		b[1] = s.tos << 4
		put16(b, 4, uint16(len(l4)))
		b[6], b[7] = s.proto, ttl
		a, d := s.src.As16(), s.dst.As16()
		copy(b[8:], a[:])
		copy(b[24:], d[:])
	}
	l4off := len(b)
	b = append(b, l4...)
	switch s.proto {
	case 6:
		put16(b, l4off+16, refTransportChecksum(b, l4off, len(b), 6, 16, true))
	case 17:
		if !(s.noUDPCsum && s.src.Is4()) {
			put16(b, l4off+6, refTransportChecksum(b, l4off, len(b), 17, 6, true))
		}
	}
	return b
}

var (
	v4a = netip.MustParseAddr("198.18.0.2")
	v4b = netip.MustParseAddr("198.19.0.10")
	v4c = netip.MustParseAddr("198.18.10.5")
	v4d = netip.MustParseAddr("198.18.1.1")
	v6a = netip.MustParseAddr("2001:db8::2")
	v6b = netip.MustParseAddr("2001:db8:1::10")
	v6c = netip.MustParseAddr("2001:db8:10::5")
	v6d = netip.MustParseAddr("2001:db8:2::1")
)

// fixture is one line of ../testdata/packets.jsonl.
type fixture struct {
	Name    string         `json:"name"`
	Kind    string         `json:"kind"`
	Packet  hexBytes       `json:"packet"`
	Want    *fixtureParse  `json:"want"`
	Rewrite *fixtureNAT    `json:"rewrite"`
	WantPkt hexBytes       `json:"want_packet"`
	Extra   map[string]any `json:"-"`
}

type fixtureTuple struct {
	Proto int    `json:"proto"`
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	Sport *int   `json:"sport"`
	Dport *int   `json:"dport"`
}

type fixtureParse struct {
	fixtureTuple
	Fragment     string        `json:"fragment"`
	ICMPError    bool          `json:"icmp_error"`
	Inner        *fixtureTuple `json:"inner"`
	Encapsulated *fixtureTuple `json:"encapsulated"`
}

type fixtureNAT struct {
	Field string `json:"field"`
	Addr  string `json:"addr"`
	Port  uint16 `json:"port"`
}

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

// loadFixtures reads ../testdata/packets.jsonl.
func loadFixtures(tb testing.TB) []fixture {
	tb.Helper()
	f, err := os.Open("../testdata/packets.jsonl")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []fixture
	dec := json.NewDecoder(f)
	for dec.More() {
		var fx fixture
		if err := dec.Decode(&fx); err != nil {
			tb.Fatalf("fixture %d: %v", len(out)+1, err)
		}
		out = append(out, fx)
	}
	return out
}
