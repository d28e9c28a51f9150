package hostagent

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// pktSpec describes a test packet.
type pktSpec struct {
	src, dst netip.AddrPort
	proto    ananta.Protocol
	flags    uint8 // TCP flags
	seq, ack uint32
	payload  []byte
	icmpType uint8 // for ProtocolICMP / ICMPv6 (echo: 8 / 128)
}

// build returns an IPv4 or IPv6 packet with correct checksums.
func build(s pktSpec) []byte {
	v6 := s.src.Addr().Is6()
	var l4 []byte
	switch s.proto {
	case ananta.ProtocolTCP:
		l4 = make([]byte, 20+len(s.payload))
		binary.BigEndian.PutUint16(l4[0:], s.src.Port())
		binary.BigEndian.PutUint16(l4[2:], s.dst.Port())
		binary.BigEndian.PutUint32(l4[4:], s.seq)
		binary.BigEndian.PutUint32(l4[8:], s.ack)
		l4[12] = 5 << 4
		l4[13] = s.flags
		binary.BigEndian.PutUint16(l4[14:], 65535)
		copy(l4[20:], s.payload)
	case ananta.ProtocolUDP:
		l4 = make([]byte, 8+len(s.payload))
		binary.BigEndian.PutUint16(l4[0:], s.src.Port())
		binary.BigEndian.PutUint16(l4[2:], s.dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		copy(l4[8:], s.payload)
	case ananta.ProtocolICMP, ananta.ProtocolICMPv6:
		l4 = make([]byte, 8+len(s.payload))
		l4[0] = s.icmpType
		copy(l4[8:], s.payload)
	}
	return wrapIP(v6, s.src.Addr(), s.dst.Addr(), s.proto, l4)
}

// wrapIP prepends an IP header to a transport segment and fills in the
// transport checksum.
func wrapIP(v6 bool, src, dst netip.Addr, proto ananta.Protocol, l4 []byte) []byte {
	var csum int
	switch proto {
	case ananta.ProtocolTCP:
		csum = 16
	case ananta.ProtocolUDP:
		csum = 6
	case ananta.ProtocolICMP, ananta.ProtocolICMPv6:
		csum = 2
	default:
		csum = -1
	}
	if csum >= 0 {
		binary.BigEndian.PutUint16(l4[csum:], 0)
		var sum uint32
		if proto != ananta.ProtocolICMP {
			sum = encap.PseudoHeaderSum(src, dst, proto, len(l4))
		}
		c := encap.Finish(encap.Sum(l4, sum))
		if c == 0 && proto == ananta.ProtocolUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[csum:], c)
	}
	var h []byte
	if v6 {
		h = make([]byte, 40)
		h[0] = 6 << 4
		binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
		h[6], h[7] = uint8(proto), 64
		s, d := src.As16(), dst.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
	} else {
		h = make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[6:], 0x4000)
		h[8], h[9] = 64, uint8(proto)
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], encap.Checksum(h))
	}
	return append(h, l4...)
}

// icmpError builds an ICMP (IPv4 type 3 code 3 / ICMPv6 type 1 code 4)
// "port unreachable" from src to dst quoting the packet quoted.
func icmpError(src, dst netip.Addr, quoted []byte) []byte {
	q := quoted
	if len(q) > 28+40 {
		q = q[:28+40]
	}
	if src.Is6() {
		l4 := append([]byte{1, 4, 0, 0, 0, 0, 0, 0}, q...)
		return wrapIP(true, src, dst, ananta.ProtocolICMPv6, l4)
	}
	l4 := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, q...)
	return wrapIP(false, src, dst, ananta.ProtocolICMP, l4)
}

// headroom is left in front of test packets for an outer header.
const headroom = 64

// tunnel encapsulates pkt from outer src to dst and returns the buffer with
// the tunnel packet at b[start:].
func tunnel(t testing.TB, pkt []byte, src, dst netip.Addr) (b []byte, start int) {
	t.Helper()
	b = make([]byte, headroom+len(pkt))
	copy(b[headroom:], pkt)
	start, err := encap.Encap(b, headroom, len(b), src, dst, encap.EncapOptions{})
	if err != nil {
		t.Fatalf("encap: %v", err)
	}
	return b, start
}

// checkSums verifies the IP header checksum and the transport checksum of
// pkt from scratch.
func checkSums(t testing.TB, pkt []byte) {
	t.Helper()
	if err := verifySums(pkt); err != nil {
		t.Fatal(err)
	}
}

func verifySums(pkt []byte) error {
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil {
		return fmt.Errorf("parse: %v", err)
	}
	if p.Version == 4 && encap.Checksum(pkt[:p.L4Offset]) != 0 {
		return fmt.Errorf("bad IPv4 header checksum")
	}
	l4 := pkt[p.L4Offset:p.TotalLen]
	switch p.Tuple.Proto {
	case ananta.ProtocolTCP, ananta.ProtocolUDP, ananta.ProtocolICMPv6:
		if p.Tuple.Proto == ananta.ProtocolUDP && p.Version == 4 && binary.BigEndian.Uint16(l4[6:]) == 0 {
			return nil
		}
		if s := encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(p.Tuple.Src, p.Tuple.Dst, p.Tuple.Proto, len(l4)))); s != 0 {
			return fmt.Errorf("bad %s checksum (residue %#04x)", p.Tuple.Proto, s)
		}
	case ananta.ProtocolICMP:
		if encap.Checksum(l4) != 0 {
			return fmt.Errorf("bad ICMP checksum")
		}
	}
	return nil
}

func parse(t testing.TB, pkt []byte) encap.Packet {
	t.Helper()
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func addr(s string) netip.Addr   { return netip.MustParseAddr(s) }
