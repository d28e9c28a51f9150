package encap

import (
	"encoding/binary"
	"net/netip"

	"github.com/ananta-go/ananta"
)

// Field selects the source or the destination of a packet for Rewrite and
// RewriteQuoted.
type Field uint8

// Fields.
const (
	Src Field = iota // source address and port
	Dst              // destination address and port
)

// String returns "src" or "dst".
func (f Field) String() string {
	if f == Dst {
		return "dst"
	}
	return "src"
}

// Rewrite rewrites the source or destination address, and port, of the
// packet in b in place (NAT) and updates every checksum that covers them
// incrementally (RFC 1624): the IPv4 header checksum, and the TCP, UDP or
// ICMPv6 checksum with its pseudo-header. p must be the result of Parse(b)
// (b unchanged since, except by this package); Rewrite updates p.Tuple.
//
// port 0 keeps the packet's port, as Backend.Port 0 does. Only TCP and UDP
// have ports: for other packets, and for later fragments, only the address
// is rewritten and port is ignored.
//
//   - An IPv4 UDP checksum of 0 (none) stays 0; an incremental result of 0 is
//     stored as 0xffff (RFC 768).
//   - An IPv6 UDP checksum of 0 is invalid (RFC 8200 section 8.1): Rewrite
//     returns ErrBadChecksum and leaves the packet alone rather than make
//     a packet every receiver would drop look valid, or spend a full
//     checksum pass on it. Drop it.
//   - Fragments: the transport checksum, in the first fragment, covers the
//     whole datagram, and the pseudo-header includes the addresses. Rewrite
//     updates it in the first fragment; later fragments get only the
//     address (and IPv4 header checksum). NAT of fragmented traffic is
//     therefore correct only when every fragment of a datagram is rewritten
//     the same way, and a port rewrite needs the first fragment's port
//     delta, which later fragments do not carry: rewrite ports of
//     fragmented UDP only after reassembly.
//   - ICMP errors: only the outer address is rewritten here; use
//     RewriteQuoted for the quoted packet.
//   - Other protocols (ESP, GRE, tunnels, ...): only the address. A protocol
//     whose checksum covers a pseudo-header that is not TCP, UDP or ICMPv6
//     (DCCP, UDP-Lite) is left with a wrong checksum.
//
// It returns ErrFamily if addr is not of the packet's family (IPv4-mapped
// IPv6 addresses are IPv6), ErrUnsupported for a field other than Src or Dst
// or for a destination rewrite of an IPv6 packet whose routing header still
// has segments left (its pseudo-header holds the final destination),
// ErrBadChecksum as above, and ErrBadHeader if p does not fit b. On error
// the packet is unchanged. It does not allocate.
func Rewrite(b []byte, p *Packet, f Field, addr netip.Addr, port uint16) error {
	if f > Dst {
		return errField
	}
	if p.TotalLen > len(b) || p.csum < 0 || p.csum+2 > p.TotalLen || p.L4Offset < 0 || (p.ports && p.L4Offset+4 > p.TotalLen) {
		return errPacketMismatch
	}
	var d uint32 // delta of the pseudo-header's address words
	switch p.Version {
	case 4:
		if !addr.Is4() {
			return ErrFamily
		}
		if p.TotalLen < 20 {
			return errPacketMismatch
		}
		a := addr.As4()
		off := 12 + 4*int(f)
		d = delta32(binary.BigEndian.Uint32(b[off:]), binary.BigEndian.Uint32(a[:]))
		copy(b[off:off+4], a[:])
		binary.BigEndian.PutUint16(b[10:], applyDelta(binary.BigEndian.Uint16(b[10:]), d))
	case 6:
		if !addr.Is6() {
			return ErrFamily
		}
		if p.TotalLen < 40 {
			return errPacketMismatch
		}
		if f == Dst && p.routing {
			return errRoutingHeader
		}
		if p.csum != 0 && p.Tuple.Proto == protoUDP && b[p.csum] == 0 && b[p.csum+1] == 0 {
			return errUDP6Zero
		}
		a := addr.As16()
		off := 8 + 16*int(f)
		d = delta128(b[off:off+16], a[:])
		copy(b[off:off+16], a[:])
	default:
		return errPacketMismatch
	}
	if p.ports && port != 0 {
		off := p.L4Offset + 2*int(f)
		old := binary.BigEndian.Uint16(b[off:])
		binary.BigEndian.PutUint16(b[off:], port)
		if p.csum != 0 {
			d += delta16(old, port)
		}
		if f == Src {
			p.Tuple.SrcPort = port
		} else {
			p.Tuple.DstPort = port
		}
	}
	if p.csum != 0 {
		updateTransport(b[p.csum:p.csum+2], p.Tuple.Proto, p.Version, d)
	}
	if f == Src {
		p.Tuple.Src = addr
	} else {
		p.Tuple.Dst = addr
	}
	return nil
}

// updateTransport applies the delta d of the pseudo-header and transport
// header to the transport checksum at c (2 bytes).
func updateTransport(c []byte, proto ananta.Protocol, version uint8, d uint32) {
	old := binary.BigEndian.Uint16(c)
	switch proto {
	case protoTCP, protoICMPv6:
	case protoUDP:
		if old == 0 {
			return // IPv4 UDP without checksum (IPv6 was refused)
		}
	case protoICMP:
		if version == 4 {
			return // no pseudo-header, and no ports
		}
	default:
		return
	}
	hc := applyDelta(old, d)
	if hc == 0 && proto == protoUDP {
		hc = 0xffff
	}
	binary.BigEndian.PutUint16(c, hc)
}

// RewriteQuoted rewrites the source or destination address, and port, of
// the packet quoted inside the ICMP or ICMPv6 error in b, and updates the
// quoted IPv4 header checksum, the quoted TCP/UDP/ICMPv6 checksum if the
// quote holds it, and the ICMP checksum, incrementally. p must be the result
// of Parse(b) with p.ICMPError set; RewriteQuoted updates p.Inner.
//
// A Host Agent that rewrote VIP to DIP on the way in uses it to
// reverse-translate an ICMP error about a reply: Rewrite(b, p, Dst, dip, 0)
// for the error's own destination, RewriteQuoted(b, p, Src, dip, dipPort)
// for the quoted reply, which left the host as VIP:port.
//
// port 0 keeps the quoted port; it is ignored when the quote does not hold
// the ports. A quoted UDP checksum of 0 stays 0.
//
// It returns ErrUnsupported if p is not an ICMP error, f is neither Src
// nor Dst, or for a destination rewrite of a quoted IPv6 packet whose
// routing header has segments left; ErrFamily if addr is not of the packet's family, and ErrBadHeader
// if p does not fit b. On error the packet is unchanged. It does not
// allocate.
func RewriteQuoted(b []byte, p *Packet, f Field, addr netip.Addr, port uint16) error {
	if f > Dst {
		return errField
	}
	if !p.ICMPError {
		return errNotICMPError
	}
	q := p.InnerOffset
	if p.TotalLen > len(b) || p.csum <= 0 || p.csum+2 > p.TotalLen || p.innerCsum < 0 || p.innerCsum+2 > p.TotalLen ||
		q < 0 || p.InnerL4Offset < 0 || (p.innerPorts && p.InnerL4Offset+4 > p.TotalLen) {
		return errPacketMismatch
	}
	var d, icmp uint32 // pseudo-header/transport delta of the quote; ICMP message delta
	switch p.Version {
	case 4:
		if !addr.Is4() {
			return ErrFamily
		}
		if q+20 > p.TotalLen {
			return errPacketMismatch
		}
		a := addr.As4()
		off := q + 12 + 4*int(f)
		d = delta32(binary.BigEndian.Uint32(b[off:]), binary.BigEndian.Uint32(a[:]))
		copy(b[off:off+4], a[:])
		old := binary.BigEndian.Uint16(b[q+10:])
		hc := applyDelta(old, d)
		binary.BigEndian.PutUint16(b[q+10:], hc)
		icmp = d + delta16(old, hc)
	case 6:
		if !addr.Is6() {
			return ErrFamily
		}
		if q+40 > p.TotalLen {
			return errPacketMismatch
		}
		if f == Dst && p.innerRouting {
			return errRoutingHeader
		}
		a := addr.As16()
		off := q + 8 + 16*int(f)
		d = delta128(b[off:off+16], a[:])
		copy(b[off:off+16], a[:])
		icmp = d
	default:
		return errPacketMismatch
	}
	if p.innerPorts && port != 0 {
		off := p.InnerL4Offset + 2*int(f)
		old := binary.BigEndian.Uint16(b[off:])
		binary.BigEndian.PutUint16(b[off:], port)
		d += delta16(old, port)
		icmp += delta16(old, port)
		if f == Src {
			p.Inner.SrcPort = port
		} else {
			p.Inner.DstPort = port
		}
	}
	if c := p.innerCsum; c != 0 {
		old := binary.BigEndian.Uint16(b[c:])
		updateTransport(b[c:c+2], p.Inner.Proto, p.Version, d)
		icmp += delta16(old, binary.BigEndian.Uint16(b[c:]))
	}
	c := p.csum
	binary.BigEndian.PutUint16(b[c:], applyDelta(binary.BigEndian.Uint16(b[c:]), icmp))
	if f == Src {
		p.Inner.Src = addr
	} else {
		p.Inner.Dst = addr
	}
	return nil
}
