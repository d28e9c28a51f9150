package mux

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// pktSpec describes a test packet.
type pktSpec struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        ananta.Protocol
	tcpFlags     uint8
	payload      int  // payload bytes after the transport header
	noDF         bool // IPv4: clear DF
	frag         int  // 0 whole; 1 first fragment; 2 later fragment
	ttl          uint8
	icmpType     uint8 // for proto ICMP/ICMPv6 without a quote
}

// build returns the IP packet.
func (s pktSpec) build() []byte {
	var l4 []byte
	switch s.proto {
	case ananta.ProtocolTCP:
		l4 = make([]byte, 20+s.payload)
		binary.BigEndian.PutUint16(l4[0:], s.sport)
		binary.BigEndian.PutUint16(l4[2:], s.dport)
		binary.BigEndian.PutUint32(l4[4:], 1000)
		l4[12] = 5 << 4
		l4[13] = s.tcpFlags
		binary.BigEndian.PutUint16(l4[14:], 65535)
	case ananta.ProtocolUDP:
		l4 = make([]byte, 8+s.payload)
		binary.BigEndian.PutUint16(l4[0:], s.sport)
		binary.BigEndian.PutUint16(l4[2:], s.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	case ananta.ProtocolICMP, ananta.ProtocolICMPv6:
		l4 = make([]byte, 8+s.payload)
		l4[0] = s.icmpType
	default:
		l4 = make([]byte, 8+s.payload)
	}
	for i := range s.payload {
		l4[len(l4)-s.payload+i] = byte(i * 7)
	}
	if s.frag == 2 {
		// A later fragment: arbitrary data, no transport header.
		for i := range l4 {
			l4[i] = byte(0xa0 + i)
		}
	} else {
		fillChecksum(l4, s.src, s.dst, s.proto)
	}
	ttl := s.ttl
	if ttl == 0 {
		ttl = 64
	}
	if s.src.Is4() {
		h := make([]byte, 20, 20+len(l4))
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[4:], 0x1234)
		var fo uint16
		if !s.noDF && s.frag == 0 {
			fo |= 0x4000
		}
		switch s.frag {
		case 1:
			fo |= 0x2000
		case 2:
			fo |= 185 // offset 1480
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8], h[9] = ttl, byte(s.proto)
		a, b := s.src.As4(), s.dst.As4()
		copy(h[12:], a[:])
		copy(h[16:], b[:])
		binary.BigEndian.PutUint16(h[10:], encap.Checksum(h))
		return append(h, l4...)
	}
	ext := 0
	if s.frag != 0 {
		ext = 8
	}
	h := make([]byte, 40+ext, 40+ext+len(l4))
	binary.BigEndian.PutUint32(h[0:], 6<<28|0x12345)
	binary.BigEndian.PutUint16(h[4:], uint16(ext+len(l4)))
	h[6], h[7] = byte(s.proto), ttl
	a, b := s.src.As16(), s.dst.As16()
	copy(h[8:], a[:])
	copy(h[24:], b[:])
	if s.frag != 0 {
		h[6] = 44
		h[40] = byte(s.proto)
		var fo uint16
		if s.frag == 1 {
			fo = 1 // M
		} else {
			fo = 1448 // offset 1448 (a multiple of 8), last fragment
		}
		binary.BigEndian.PutUint16(h[42:], fo)
		binary.BigEndian.PutUint32(h[44:], 0xabcdef)
	}
	return append(h, l4...)
}

// fillChecksum computes the transport checksum of l4 in place.
func fillChecksum(l4 []byte, src, dst netip.Addr, proto ananta.Protocol) {
	switch proto {
	case ananta.ProtocolTCP:
		l4[16], l4[17] = 0, 0
		binary.BigEndian.PutUint16(l4[16:], encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(src, dst, proto, len(l4)))))
	case ananta.ProtocolUDP:
		l4[6], l4[7] = 0, 0
		c := encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(src, dst, proto, len(l4))))
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	case ananta.ProtocolICMP:
		l4[2], l4[3] = 0, 0
		binary.BigEndian.PutUint16(l4[2:], encap.Checksum(l4))
	case ananta.ProtocolICMPv6:
		l4[2], l4[3] = 0, 0
		binary.BigEndian.PutUint16(l4[2:], encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(src, dst, proto, len(l4)))))
	}
}

// icmpError wraps quoted (a packet the VIP sent) in an ICMP error from
// router to the quoted packet's source: IPv4 type 3 code 4 (next-hop MTU
// mtu) or ICMPv6 type 2 ("packet too big").
func icmpError(router netip.Addr, quoted []byte, mtu int, quoteLen int) []byte {
	q := quoted[:min(len(quoted), quoteLen)]
	var p encap.Packet
	if err := encap.Parse(quoted, &p); err != nil {
		panic(err)
	}
	vip := p.Tuple.Src
	if vip.Is4() {
		l4 := make([]byte, 8+len(q))
		l4[0], l4[1] = 3, 4
		binary.BigEndian.PutUint16(l4[6:], uint16(mtu))
		copy(l4[8:], q)
		fillChecksum(l4, router, vip, ananta.ProtocolICMP)
		return ipv4(router, vip, ananta.ProtocolICMP, l4)
	}
	l4 := make([]byte, 8+len(q))
	l4[0] = 2
	binary.BigEndian.PutUint32(l4[4:], uint32(mtu))
	copy(l4[8:], q)
	fillChecksum(l4, router, vip, ananta.ProtocolICMPv6)
	h := make([]byte, 40, 40+len(l4))
	binary.BigEndian.PutUint32(h[0:], 6<<28)
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6], h[7] = byte(ananta.ProtocolICMPv6), 64
	a, b := router.As16(), vip.As16()
	copy(h[8:], a[:])
	copy(h[24:], b[:])
	return append(h, l4...)
}

func ipv4(src, dst netip.Addr, proto ananta.Protocol, l4 []byte) []byte {
	h := make([]byte, 20, 20+len(l4))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	h[8], h[9] = 64, byte(proto)
	a, b := src.As4(), dst.As4()
	copy(h[12:], a[:])
	copy(h[16:], b[:])
	binary.BigEndian.PutUint16(h[10:], encap.Checksum(h))
	return append(h, l4...)
}

// framed returns a buffer holding pkt after Headroom bytes, with tail room.
func framed(pkt []byte) (buf []byte, start, end int) {
	buf = make([]byte, Headroom+len(pkt)+64)
	copy(buf[Headroom:], pkt)
	return buf, Headroom, Headroom + len(pkt)
}

var (
	mux4   = netip.MustParseAddr("198.18.0.1")
	mux6   = netip.MustParseAddr("2001:db8::1")
	rss4   = netip.MustParsePrefix("198.18.200.0/24")
	rss6   = netip.MustParsePrefix("2001:db8:ff::/64")
	vip4   = netip.MustParseAddr("198.19.0.10")
	vip6   = netip.MustParseAddr("2001:db8:1::10")
	client = netip.MustParseAddr("198.18.100.7")
)

// host4 returns the i-th IPv4 host address, dip4 the i-th IPv4 DIP.
func host4(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 10, byte(i)}) }
func dip4(i int) netip.Addr  { return netip.AddrFrom4([4]byte{198, 18, 20, byte(i)}) }
func host6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 14: byte(i >> 8), 15: byte(i)})
}
func dip6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x20, 14: byte(i >> 8), 15: byte(i)})
}

// backends4 returns n active IPv4 backends numbered from first.
func backends4(first, n int) []ananta.Backend {
	var bs []ananta.Backend
	for i := first; i < first+n; i++ {
		bs = append(bs, ananta.Backend{DIP: dip4(i), Host: host4(i), Weight: 1})
	}
	return bs
}

func backends6(first, n int) []ananta.Backend {
	var bs []ananta.Backend
	for i := first; i < first+n; i++ {
		bs = append(bs, ananta.Backend{DIP: dip6(i), Host: host6(i), Weight: 1})
	}
	return bs
}

// fakeClock is a manual clock for Config.Clock, safe for concurrent use
// (the housekeeper reads it too).
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Duration) *fakeClock {
	c := new(fakeClock)
	c.ns.Store(int64(t))
	return c
}

func (c *fakeClock) now() time.Duration      { return time.Duration(c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// testConfig returns a small config; mod may change it.
func testConfig(mod func(*Config)) Config {
	cfg := Config{
		Addr4:          mux4,
		Addr6:          mux6,
		SourcePrefix4:  rss4,
		SourcePrefix6:  rss6,
		FlowTableBytes: 1 << 20,
	}
	if mod != nil {
		mod(&cfg)
	}
	return cfg
}

func newMux(tb testing.TB, cfg Config) *Mux {
	tb.Helper()
	m, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func mustSetVIP(tb testing.TB, m *Mux, c ananta.VIPConfig) {
	tb.Helper()
	if err := m.SetVIP(c); err != nil {
		tb.Fatal(err)
	}
}

// result is what Process did with a packet.
type result struct {
	v     Verdict
	out   []byte // the output packet (copy)
	outer netip.Addr
	src   netip.Addr
}

func process(m *Mux, pkt []byte) result {
	buf, s, e := framed(pkt)
	v, ns, ne := m.Process(buf, s, e)
	r := result{v: v}
	if v.Action != ActionDrop {
		r.out = append([]byte(nil), buf[ns:ne]...)
	}
	if v.Action == ActionForward {
		if r.out[0]>>4 == 4 {
			r.src = netip.AddrFrom4([4]byte(r.out[12:16]))
			r.outer = netip.AddrFrom4([4]byte(r.out[16:20]))
		} else {
			r.src = netip.AddrFrom16([16]byte(r.out[8:24]))
			r.outer = netip.AddrFrom16([16]byte(r.out[24:40]))
		}
	}
	return r
}

func tcp4(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8) []byte {
	return pktSpec{src: src, dst: dst, sport: sport, dport: dport, proto: ananta.ProtocolTCP, tcpFlags: flags}.build()
}

func simpleVIP(vip netip.Addr, port uint16, bs []ananta.Backend) ananta.VIPConfig {
	return ananta.VIPConfig{
		VIP:    vip,
		Tenant: "t1",
		Endpoints: []ananta.EndpointConfig{{
			Protocol: ananta.ProtocolTCP,
			Port:     port,
			Backends: bs,
		}},
	}
}
