package encap

import (
	"encoding/binary"
	"net/netip"
)

// Bytes an outer header adds, by the family of the outer addresses. Reserve
// OverheadIPv6 bytes of headroom to encapsulate into either family.
const (
	OverheadIPv4 = 20
	OverheadIPv6 = 40
)

// DefaultTTL is the outer TTL or hop limit Encap writes when
// EncapOptions.TTL is zero, and the TTL of the packets TooBig builds.
const DefaultTTL = 64

// Overhead returns the bytes an outer header addressed in outer's family
// adds: OverheadIPv4 or OverheadIPv6, or 0 for an invalid address.
func Overhead(outer netip.Addr) int {
	switch {
	case outer.Is4():
		return OverheadIPv4
	case outer.Is6():
		return OverheadIPv6
	}
	return 0
}

// EncapOptions are the outer-header fields Encap does not copy from the
// inner packet. The zero value is ready to use.
type EncapOptions struct {
	// TTL is the outer TTL or hop limit; 0 means DefaultTTL (64).
	TTL uint8
	// ID is the outer IPv4 identification. If it is zero, Encap writes 0
	// when the outer packet has DF set (an atomic datagram, RFC 6864; Linux
	// does the same), and copies the inner packet's identification when it
	// has not (an inner IPv4 packet without DF): the outer packet may then
	// be fragmented and needs an identification that varies. Callers that
	// tunnel much non-DF traffic between one pair of hosts should pass a
	// counter instead.
	ID uint16
	// FlowLabel is the outer IPv6 flow label (its low 20 bits are used); 0
	// leaves it unset. Pass a hash of the inner flow so that the receiver's
	// RSS and ECMP spread tunnelled flows (RFC 6438).
	FlowLabel uint32
}

// Encap encapsulates the inner IP packet b[start:end] in place: it writes an
// outer header into the headroom b[:start], right before the inner packet,
// and returns the new start, so that the tunnel packet is b[newStart:end].
//
// The outer family follows src and dst: IPv4 (RFC 2003; protocol 4 for an
// IPv4 inner packet, 41 for IPv6) or IPv6 (RFC 2473, no extension headers;
// next header 41 for IPv6 inner, 4 for IPv4 inner). The outer TOS / traffic
// class copies the inner DSCP and ECN (RFC 6040 normal mode), the outer DF
// copies the inner IPv4 DF bit and is set for an inner IPv6 packet, which
// is never fragmented in transit. TTL, IPv4 identification and IPv6 flow
// label come from opts. The IPv4 header checksum is computed.
//
// It returns ErrBadLength if start and end are not a range of b or the
// outer packet would exceed 65535 bytes (IPv4 total length, IPv6 payload
// length), ErrTruncated if the inner packet is shorter than its fixed IP
// header, ErrBadVersion if it is not IPv4 or IPv6, ErrFamily unless src and
// dst are both IPv4 or both IPv6 (IPv4-mapped IPv6 addresses count as
// IPv6), and ErrNoHeadroom if start is below the outer header's size. The
// inner packet's own lengths are not checked: end should be start plus
// Packet.TotalLen. On error b is unchanged.
func Encap(b []byte, start, end int, src, dst netip.Addr, opts EncapOptions) (int, error) {
	if start < 0 || start > end || end > len(b) {
		return 0, errBounds
	}
	in := b[start:end]
	if len(in) == 0 {
		return 0, errEmpty
	}
	var (
		tos, proto uint8
		id         uint16
		df         bool
	)
	switch in[0] >> 4 {
	case 4:
		if len(in) < 20 {
			return 0, errV4Short
		}
		tos, proto = in[1], protoIPIP
		df = in[6]&0x40 != 0
		if !df {
			id = binary.BigEndian.Uint16(in[4:])
		}
	case 6:
		if len(in) < 40 {
			return 0, errV6Short
		}
		tos, proto, df = in[0]<<4|in[1]>>4, protoIPv6, true
	default:
		return 0, ErrBadVersion
	}
	ttl := opts.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if opts.ID != 0 {
		id = opts.ID
	}
	switch {
	case src.Is4() && dst.Is4():
		if start < OverheadIPv4 {
			return 0, ErrNoHeadroom
		}
		n := len(in) + OverheadIPv4
		if n > 0xffff {
			return 0, errTooLong
		}
		var frag uint16
		if df {
			frag = 0x4000
		}
		s, d := src.As4(), dst.As4()
		h := b[start-OverheadIPv4 : start]
		h[0], h[1] = 0x45, tos
		binary.BigEndian.PutUint16(h[2:], uint16(n))
		binary.BigEndian.PutUint16(h[4:], id)
		binary.BigEndian.PutUint16(h[6:], frag)
		h[8], h[9] = ttl, proto
		copy(h[12:16], s[:])
		copy(h[16:20], d[:])
		sum := 0x4500 + uint32(tos) + uint32(n) + uint32(id) + uint32(frag) +
			uint32(ttl)<<8 + uint32(proto) + addrSum4(s) + addrSum4(d)
		binary.BigEndian.PutUint16(h[10:], ^uint16(fold32(sum)))
		return start - OverheadIPv4, nil
	case src.Is6() && dst.Is6():
		if start < OverheadIPv6 {
			return 0, ErrNoHeadroom
		}
		if len(in) > 0xffff {
			return 0, errTooLong
		}
		h := b[start-OverheadIPv6 : start]
		binary.BigEndian.PutUint32(h[0:], 6<<28|uint32(tos)<<20|opts.FlowLabel&0xfffff)
		binary.BigEndian.PutUint16(h[4:], uint16(len(in)))
		h[6], h[7] = proto, ttl
		s, d := src.As16(), dst.As16()
		copy(h[8:24], s[:])
		copy(h[24:40], d[:])
		return start - OverheadIPv6, nil
	}
	return 0, ErrFamily
}

// Decap checks the outer header of an IP-in-IP packet at the start of b and
// returns the inner packet, a subslice of b (it starts cap(b)-cap(inner)
// bytes into b), and the outer source address. Bytes of b beyond the outer
// length are ignored.
//
// The outer header may be IPv4 (protocol 4 or 41; its header checksum is
// verified) or IPv6 (next header 4 or 41 after any hop-by-hop, routing,
// destination options or AH headers, for example an RFC 2473 tunnel
// encapsulation limit). The inner packet must have the version the outer
// header announces and at least its fixed header. Following RFC 6040, an
// outer CE mark is copied to an ECN-capable inner packet and an outer ECT(1)
// to an inner ECT(0) (the inner IPv4 header checksum is updated); packets
// Encap made are never changed.
//
// It returns the errors of Parse for the outer header, ErrUnsupported for a
// fragment or a packet that is not IP-in-IP, ErrBadChecksum for a wrong
// outer IPv4 header checksum, ErrBadVersion or ErrTruncated for an inner
// packet of the wrong version or too short for its header, and ErrECN for an
// outer CE mark on an inner packet that is not ECN-capable (drop it).
func Decap(b []byte) (inner []byte, outerSrc netip.Addr, err error) {
	if len(b) == 0 {
		return nil, netip.Addr{}, errEmpty
	}
	var h hdr
	switch b[0] >> 4 {
	case 4:
		// Checked here rather than with parseIPv4: Decap needs none of the
		// rest of a Packet.
		if len(b) < 20 {
			return nil, netip.Addr{}, errV4Short
		}
		hl := int(b[0]&0x0f) * 4
		if hl < 20 {
			return nil, netip.Addr{}, errIHLSmall
		}
		if hl > len(b) {
			return nil, netip.Addr{}, errIHLPastEnd
		}
		total := int(binary.BigEndian.Uint16(b[2:]))
		if total < hl {
			return nil, netip.Addr{}, errTotalBelowHdr
		}
		if total > len(b) {
			return nil, netip.Addr{}, errTotalPastEnd
		}
		if binary.BigEndian.Uint16(b[6:])&0x3fff != 0 {
			return nil, netip.Addr{}, errOuterFragment
		}
		if Checksum(b[:hl]) != 0 {
			return nil, netip.Addr{}, errOuterChecksum
		}
		h.end, h.l4, h.proto = total, hl, b[9]
		outerSrc = netip.AddrFrom4([4]byte(b[12:16]))
	case 6:
		var l Packet
		if err = parseIPv6(b, &l, &h, false); err != nil {
			return nil, netip.Addr{}, err
		}
		if h.frag != NotFragment {
			return nil, netip.Addr{}, errOuterFragment
		}
		outerSrc = l.Tuple.Src
	default:
		return nil, netip.Addr{}, ErrBadVersion
	}
	in := b[h.l4:h.end]
	switch h.proto {
	case protoIPIP:
		if len(in) == 0 || in[0]>>4 != 4 {
			return nil, netip.Addr{}, errInnerVersion
		}
		if len(in) < 20 {
			return nil, netip.Addr{}, errV4Short
		}
	case protoIPv6:
		if len(in) == 0 || in[0]>>4 != 6 {
			return nil, netip.Addr{}, errInnerVersion
		}
		if len(in) < 40 {
			return nil, netip.Addr{}, errV6Short
		}
	default:
		return nil, netip.Addr{}, errNotTunnel
	}
	var outer uint8 // ECN
	if b[0]>>4 == 4 {
		outer = b[1] & 3
	} else {
		outer = b[1] >> 4 & 3
	}
	if outer == ecnCE || outer == ecnECT1 {
		if err := decapECN(in, outer); err != nil {
			return nil, netip.Addr{}, err
		}
	}
	return in, outerSrc, nil
}

// ECN codepoints (RFC 3168).
const (
	ecnNotECT = 0
	ecnECT1   = 1
	ecnECT0   = 2
	ecnCE     = 3
)

// decapECN applies RFC 6040's decapsulation table for an outer CE or ECT(1)
// mark to the inner header at the start of in (at least 20 or 40 bytes).
func decapECN(in []byte, outer uint8) error {
	var inner uint8
	if in[0]>>4 == 4 {
		inner = in[1] & 3
	} else {
		inner = in[1] >> 4 & 3
	}
	var set uint8
	switch {
	case outer == ecnCE && inner == ecnNotECT:
		return ErrECN
	case outer == ecnCE && inner != ecnCE:
		set = ecnCE
	case outer == ecnECT1 && inner == ecnECT0:
		set = ecnECT1
	default:
		return nil
	}
	if in[0]>>4 == 4 {
		old := binary.BigEndian.Uint16(in[0:])
		in[1] = in[1]&^3 | set
		hc := UpdateChecksum(binary.BigEndian.Uint16(in[10:]), old, binary.BigEndian.Uint16(in[0:]))
		binary.BigEndian.PutUint16(in[10:], hc)
	} else {
		in[1] = in[1]&^0x30 | set<<4
	}
	return nil
}
