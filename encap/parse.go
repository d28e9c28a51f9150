package encap

import (
	"encoding/binary"
	"net/netip"

	"github.com/ananta-go/ananta"
)

// IP protocol and IPv6 next-header numbers.
const (
	protoHopByHop = 0
	protoICMP     = 1
	protoIPIP     = 4
	protoTCP      = 6
	protoUDP      = 17
	protoIPv6     = 41
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoDstOpts  = 60
)

// MaxExtensionHeaders is the number of IPv6 extension headers Parse walks
// before it gives up with ErrUnsupported. Real traffic carries one or two.
const MaxExtensionHeaders = 8

// FragmentKind says whether a packet is an IP fragment and which one.
type FragmentKind uint8

// Fragment kinds.
const (
	// NotFragment is a whole packet. An IPv6 "atomic fragment" (a fragment
	// header with offset 0 and no more fragments, RFC 6946) counts as whole.
	NotFragment FragmentKind = iota
	// FirstFragment is the fragment at offset 0: it carries the transport
	// header, so its ports are reported.
	FirstFragment
	// LaterFragment is a fragment at a non-zero offset: it carries no
	// transport header and reports ports 0.
	LaterFragment
)

// String returns "none", "first" or "later".
func (k FragmentKind) String() string {
	switch k {
	case FirstFragment:
		return "first"
	case LaterFragment:
		return "later"
	}
	return "none"
}

// TCP flag bits, as in Packet.TCPFlags.
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagPSH = 0x08
	TCPFlagACK = 0x10
	TCPFlagURG = 0x20
	TCPFlagECE = 0x40
	TCPFlagCWR = 0x80
)

// Packet is what Parse learns about a packet. Offsets are into the slice
// given to Parse. The zero value is not a parsed packet.
type Packet struct {
	// Tuple is the packet's flow. Ports are those of TCP and UDP; they are 0
	// for every other protocol (ICMP echo included: the echo identifier is
	// not reported as a port), for later fragments, and for packets whose
	// IPv6 header chain ends in ESP or another header this package does not
	// know. Proto is the IPv4 protocol or the last IPv6 next header reached.
	Tuple ananta.FiveTuple
	// Inner is the 5-tuple of the packet quoted in an ICMP error
	// (ICMPError) or of the packet inside an IP-in-IP tunnel
	// (Encapsulated). A quoted tuple is as the quoted packet was sent, by
	// the receiver of the error: Inner.Reverse() is the flow in the
	// direction of the error itself. Ports of a quoted packet are reported
	// when the quote holds the first 8 bytes of its transport header.
	Inner ananta.FiveTuple

	// L4Offset is the offset of the transport header, after IPv4 options or
	// IPv6 extension headers. For a later fragment it is the offset of the
	// fragment data; for an IP-in-IP packet, of the inner IP header.
	L4Offset int
	// TotalLen is the length of the IP packet: the IPv4 total length, or 40
	// plus the IPv6 payload length. Bytes of the slice beyond it are link
	// padding; Parse ignores them.
	TotalLen int
	// InnerOffset is the offset of the quoted (ICMPError) or encapsulated
	// (Encapsulated) IP header; 0 for other packets.
	InnerOffset int
	// InnerL4Offset is the offset of the inner packet's transport header; 0
	// for other packets. For a truncated quote it may equal TotalLen.
	InnerL4Offset int

	// Version is the IP version, 4 or 6.
	Version uint8
	// Fragment says whether the packet is a fragment.
	Fragment FragmentKind
	// DF is the IPv4 don't-fragment bit. It is always true for IPv6, which
	// routers never fragment.
	DF bool
	// TTL is the IPv4 time to live or the IPv6 hop limit.
	TTL uint8
	// TOS is the IPv4 type of service or IPv6 traffic class byte (DSCP in
	// the upper six bits, ECN in the lower two).
	TOS uint8
	// TCPFlags are the TCP flags (TCPFlagSYN, ...) of a TCP packet.
	TCPFlags uint8
	// ICMPType and ICMPCode are those of an ICMP (IPv4) or ICMPv6 (IPv6)
	// message.
	ICMPType, ICMPCode uint8
	// ICMPError reports an ICMP error message (IPv4 types 3, 4, 5, 11, 12;
	// ICMPv6 types 1-4); Inner holds the quoted packet's 5-tuple.
	ICMPError bool
	// Encapsulated reports an IP-in-IP packet (IPv4 protocol 4 or 41, IPv6
	// next header 4 or 41) that is not a fragment; Inner holds the inner
	// packet's 5-tuple. Only one level is looked into: a tunnel in the
	// tunnel shows as Inner.Proto 4 or 41 with ports 0.
	Encapsulated bool

	// csum is the offset of the transport checksum Rewrite must update (TCP,
	// UDP, ICMP, ICMPv6), 0 if none is in this packet.
	csum int
	// innerCsum is the offset of the quoted packet's TCP, UDP or ICMPv6
	// checksum if the quote holds it, else 0.
	innerCsum int
	// ports: Tuple ports are real; innerPorts: Inner ports are real.
	ports, innerPorts bool
	// routing, innerRouting: an IPv6 routing header with segments left, so
	// the transport pseudo-header holds another destination.
	routing, innerRouting bool
}

// Parse parses the IPv4 or IPv6 packet at the start of b into p, which it
// overwrites. It returns
//   - ErrTruncated if b ends before the IP header, IPv4 options, an IPv6
//     extension header, the IP total length, or the TCP/UDP/ICMP header of a
//     whole packet or first fragment;
//   - ErrBadVersion if the version is not 4 or 6, or a quoted or
//     encapsulated packet has the wrong version;
//   - ErrBadHeader for an IPv4 IHL or TCP data offset below 5;
//   - ErrBadLength for an IPv4 total length below its header length or a
//     UDP length that does not fit the packet;
//   - ErrUnsupported for more than MaxExtensionHeaders IPv6 extension headers.
//
// The same holds for the packet inside an IP-in-IP tunnel and, except that
// the quote may end early, for the packet quoted in an ICMP error: its IP
// header chain must be complete and consistent, its ports are read if there.
// IPv6 jumbograms are not supported (a payload length of 0 ends the packet
// after the fixed header). Parse does not verify checksums. It never panics
// and does not allocate.
func Parse(b []byte, p *Packet) error {
	*p = Packet{}
	var h hdr
	if err := parseIP(b, p, &h, false); err != nil {
		return err
	}
	b = b[:h.end]
	icmpError, err := transport(b, p, &h, false)
	if err != nil {
		return err
	}
	switch {
	case icmpError:
		return parseQuote(b, h.l4+8, p)
	case (h.proto == protoIPIP || h.proto == protoIPv6) && h.frag == NotFragment:
		return parseTunnelled(b, h.l4, p)
	}
	return nil
}

// parseQuote parses the packet quoted at b[q:] in an ICMP error.
func parseQuote(b []byte, q int, p *Packet) error {
	var in Packet
	var h hdr
	if err := parseIP(b[q:], &in, &h, true); err != nil {
		return err
	}
	if in.Version != p.Version {
		return errQuoteVersion
	}
	_, _ = transport(b[q:q+h.end], &in, &h, true) // lenient: never fails
	p.ICMPError = true
	p.Inner = in.Tuple
	p.InnerOffset, p.InnerL4Offset = q, q+in.L4Offset
	p.innerPorts, p.innerRouting = in.ports, in.routing
	if in.csum != 0 && in.Tuple.Proto != protoICMP { // ICMPv4 has no pseudo-header
		p.innerCsum = q + in.csum
	}
	return nil
}

// parseTunnelled parses the packet inside an IP-in-IP packet at b[off:].
func parseTunnelled(b []byte, off int, p *Packet) error {
	var in Packet
	var h hdr
	if err := parseIP(b[off:], &in, &h, false); err != nil {
		return err
	}
	if (in.Version == 4) != (p.Tuple.Proto == protoIPIP) {
		return errInnerVersion
	}
	if _, err := transport(b[off:off+h.end], &in, &h, false); err != nil {
		return err
	}
	p.Encapsulated = true
	p.Inner = in.Tuple
	p.InnerOffset, p.InnerL4Offset = off, off+in.L4Offset
	return nil
}

// hdr repeats what parseIP stored in the Packet that the next steps need,
// so that they need not load it back: a narrow load right after the wide
// stores that zeroed the Packet misses store forwarding and stalls. It is
// passed by pointer because a returned struct is copied through memory in
// the same way.
type hdr struct {
	end     int // where the packet ends in the slice
	l4      int // L4Offset
	proto   uint8
	version uint8
	frag    FragmentKind
}

// parseIP parses the IP header chain at the start of b into the IP fields
// of p (Version, TOS, TTL, DF, Fragment, Tuple addresses and protocol,
// L4Offset, TotalLen, routing). For a quoted packet the declared length may
// exceed b: the packet ends with b.
func parseIP(b []byte, p *Packet, h *hdr, quoted bool) error {
	if len(b) == 0 {
		return errEmpty
	}
	switch b[0] >> 4 {
	case 4:
		return parseIPv4(b, p, h, quoted)
	case 6:
		return parseIPv6(b, p, h, quoted)
	}
	return ErrBadVersion
}

func parseIPv4(b []byte, p *Packet, h *hdr, quoted bool) error {
	if len(b) < 20 {
		return errV4Short
	}
	hl := int(b[0]&0x0f) * 4
	if hl < 20 {
		return errIHLSmall
	}
	if hl > len(b) {
		return errIHLPastEnd
	}
	total := int(binary.BigEndian.Uint16(b[2:]))
	if total < hl {
		return errTotalBelowHdr
	}
	end := total
	if total > len(b) {
		if !quoted {
			return errTotalPastEnd
		}
		end = len(b)
	}
	fo := binary.BigEndian.Uint16(b[6:])
	frag := NotFragment
	switch {
	case fo&0x1fff != 0:
		frag = LaterFragment
	case fo&0x2000 != 0:
		frag = FirstFragment
	}
	p.Version, p.TOS, p.TTL, p.Fragment = 4, b[1], b[8], frag
	p.DF = fo&0x4000 != 0
	p.Tuple.Proto = ananta.Protocol(b[9])
	p.Tuple.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Tuple.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.L4Offset, p.TotalLen = hl, total
	h.end, h.l4, h.proto, h.version, h.frag = end, hl, b[9], 4, frag
	return nil
}

func parseIPv6(b []byte, p *Packet, h *hdr, quoted bool) error {
	if len(b) < 40 {
		return errV6Short
	}
	total := 40 + int(binary.BigEndian.Uint16(b[4:]))
	end := total
	if total > len(b) {
		if !quoted {
			return errTotalPastEnd
		}
		end = len(b)
	}
	p.Version, p.TOS, p.TTL, p.DF = 6, b[0]<<4|b[1]>>4, b[7], true
	p.Tuple.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Tuple.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	p.TotalLen = total
	nh, off, frag, err := walkExtensions(b[:end], b[6], 40, p)
	if err != nil {
		return err
	}
	p.Tuple.Proto, p.L4Offset, p.Fragment = ananta.Protocol(nh), off, frag
	h.end, h.l4, h.proto, h.version, h.frag = end, off, nh, 6, frag
	return nil
}

// walkExtensions follows the IPv6 extension headers of b from next header
// nh at offset off and returns the header that ends the chain and its
// offset, and what a fragment header says. It records a routing header with
// segments left in p. A later fragment ends the walk at the fragment data.
func walkExtensions(b []byte, nh uint8, off int, p *Packet) (uint8, int, FragmentKind, error) {
	frag := NotFragment
	for range MaxExtensionHeaders {
		var n int
		switch nh {
		case protoHopByHop, protoRouting, protoDstOpts:
			if off+8 > len(b) {
				return 0, 0, 0, errExtPastEnd
			}
			n = (int(b[off+1]) + 1) * 8
			if nh == protoRouting && b[off+3] != 0 {
				p.routing = true
			}
		case protoAH:
			if off+8 > len(b) {
				return 0, 0, 0, errExtPastEnd
			}
			n = (int(b[off+1]) + 2) * 4
		case protoFragment:
			if off+8 > len(b) {
				return 0, 0, 0, errExtPastEnd
			}
			fo := binary.BigEndian.Uint16(b[off+2:])
			if fo&0xfff8 != 0 {
				return b[off], off + 8, LaterFragment, nil
			}
			if fo&1 != 0 {
				frag = FirstFragment
			}
			n = 8
		default:
			return nh, off, frag, nil
		}
		if off+n > len(b) {
			return 0, 0, 0, errExtPastEnd
		}
		nh = b[off]
		off += n
	}
	switch nh {
	case protoHopByHop, protoRouting, protoDstOpts, protoAH, protoFragment:
		return 0, 0, 0, errExtTooMany
	}
	return nh, off, frag, nil
}

// transport reads the transport header at b[h.l4:] (b ends with the
// packet) into the ports, TCP flags, ICMP type and code and checksum offset
// of p, and reports an ICMP error message. A quoted transport header may be
// cut short: then only what is there is read, and transport does not fail.
func transport(b []byte, p *Packet, h *hdr, quoted bool) (icmpError bool, err error) {
	if h.frag == LaterFragment {
		return false, nil
	}
	off := h.l4
	switch h.proto {
	case protoTCP:
		if quoted {
			if off+8 <= len(b) {
				p.Tuple.SrcPort, p.Tuple.DstPort, p.ports = binary.BigEndian.Uint16(b[off:]), binary.BigEndian.Uint16(b[off+2:]), true
			}
			if off+18 <= len(b) {
				p.csum = off + 16
			}
			return false, nil
		}
		if off+20 > len(b) {
			return false, errTCPShort
		}
		doff := int(b[off+12]>>4) * 4
		if doff < 20 {
			return false, errTCPOffSmall
		}
		if off+doff > len(b) {
			return false, errTCPOffPastEnd
		}
		p.Tuple.SrcPort, p.Tuple.DstPort, p.ports = binary.BigEndian.Uint16(b[off:]), binary.BigEndian.Uint16(b[off+2:]), true
		p.TCPFlags = b[off+13]
		p.csum = off + 16
	case protoUDP:
		if off+8 > len(b) {
			if quoted {
				return false, nil
			}
			return false, errUDPShort
		}
		if !quoted && h.frag == NotFragment {
			if ulen := int(binary.BigEndian.Uint16(b[off+4:])); ulen < 8 || off+ulen > len(b) {
				return false, errUDPLength
			}
		}
		p.Tuple.SrcPort, p.Tuple.DstPort, p.ports = binary.BigEndian.Uint16(b[off:]), binary.BigEndian.Uint16(b[off+2:]), true
		p.csum = off + 6
	case protoICMP, protoICMPv6:
		if (h.proto == protoICMP) != (h.version == 4) {
			return false, nil // ICMP in IPv6 or ICMPv6 in IPv4: an unknown protocol
		}
		if quoted {
			if off+4 <= len(b) {
				p.ICMPType, p.ICMPCode = b[off], b[off+1]
				p.csum = off + 2
			}
			return false, nil
		}
		if off+8 > len(b) {
			return false, errICMPShort
		}
		p.ICMPType, p.ICMPCode = b[off], b[off+1]
		p.csum = off + 2
		return isICMPError(h.version, b[off]), nil
	}
	return false, nil
}

// isICMPError reports whether an ICMP (version 4) or ICMPv6 (version 6)
// type is an error message.
func isICMPError(version, typ uint8) bool {
	if version == 4 {
		switch typ {
		case 3, 4, 5, 11, 12:
			return true
		}
		return false
	}
	return typ >= 1 && typ <= 4
}
