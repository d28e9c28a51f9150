package encap

import (
	"encoding/binary"
	"net/netip"
)

// MTU limits and ICMP size limits.
const (
	// MinMTUIPv4 is the smallest IPv4 MTU (RFC 791).
	MinMTUIPv4 = 68
	// MinMTUIPv6 is the smallest IPv6 link MTU (RFC 8200).
	MinMTUIPv6 = 1280
	// MaxTooBigIPv4 is the largest ICMP error TooBig builds for IPv4: 576
	// bytes, the datagram size every host accepts (RFC 1812 section 4.3.2.3).
	MaxTooBigIPv4 = 576
	// MaxTooBigIPv6 is the largest ICMPv6 error TooBig builds: the minimum
	// IPv6 MTU (RFC 4443 section 2.4 (c)).
	MaxTooBigIPv6 = 1280
)

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// NeedsTooBig reports whether p, after adding overhead bytes of outer
// headers, exceeds pathMTU and TooBig(out, pkt, from, pathMTU-overhead)
// will answer it: IPv4 with DF or IPv6; not an ICMP error; not a later IPv4
// fragment; from a unicast source; and the MTU left, pathMTU - overhead, at
// least the minimum MTU of p's family (MinMTUIPv4, MinMTUIPv6).
//
// A packet that exceeds pathMTU but does not qualify must be dropped or
// fragmented: an IPv4 packet without DF may be fragmented before
// encapsulation, and when the MTU left is below the minimum (an IPv6
// packet over an IPv6 tunnel whose path MTU is 1280) the tunnel packet
// itself must be fragmented (RFC 2473 section 7.1, RFC 4459).
func NeedsTooBig(p *Packet, overhead, pathMTU int) bool {
	mtu := pathMTU - overhead
	if p.TotalLen <= mtu || mtu > 0xffff {
		return false
	}
	if (p.Version == 4 && mtu < MinMTUIPv4) || (p.Version == 6 && mtu < MinMTUIPv6) {
		return false
	}
	return mayAnswer(p) == nil
}

// mayAnswer says whether an ICMP error may answer p (RFC 1122 3.2.2, RFC 1812
// 4.3.2.7, RFC 4443 2.4), and for IPv4 whether "fragmentation needed" is the
// right one.
func mayAnswer(p *Packet) error {
	if p.ICMPError {
		return ErrICMPError
	}
	src := p.Tuple.Src
	if !src.IsValid() || src.IsUnspecified() || src.IsMulticast() || src == limitedBroadcast {
		return errSourceNotHost
	}
	if p.Version == 4 {
		if !p.DF {
			return ErrNotDF
		}
		if p.Fragment == LaterFragment {
			return errLaterFragment
		}
		if dst := p.Tuple.Dst; dst.IsMulticast() || dst == limitedBroadcast {
			return errSourceNotHost
		}
	}
	return nil
}

// TooBig builds into out the answer to a packet pkt that does not fit a path
// MTU of mtu bytes: an IPv4 ICMP "fragmentation needed" (type 3 code 4,
// next-hop MTU set, RFC 1191) or an ICMPv6 "packet too big" (type 2, RFC
// 4443), sent from "from" to pkt's source. It returns the length of the
// answer, out[:n]. out and pkt must not overlap.
//
// The answer quotes as much of pkt (up to its IP total length) as fits in
// MaxTooBigIPv4 (576) or MaxTooBigIPv6 (1280) bytes; out of that size always
// suffices. The IPv4 header has TTL 64, TOS 0xc0 (network control, RFC 1812
// 4.3.2.5), no DF and, as the packet may then be fragmented, an
// identification that varies with the quote (the ICMP checksum); the IPv6
// header has hop limit 64. Checksums are computed, over the pseudo-header
// for ICMPv6.
//
// An ICMP error is never answered (ErrICMPError), nor an IPv4 packet
// without DF, which may be fragmented instead (ErrNotDF), nor, with other
// errors wrapping ErrNoReply, a later IPv4 fragment, a packet from an
// unspecified, multicast or broadcast source, or an IPv4 packet to a
// multicast or broadcast destination. It also returns the errors of Parse
// for pkt, ErrFamily if from is not of pkt's family, ErrBadLength if mtu
// is outside MinMTUIPv4-65535 (IPv4) or MinMTUIPv6-65535 (IPv6) or pkt fits
// in mtu, and ErrShortBuffer if out is too small. It does not allocate.
func TooBig(out []byte, pkt []byte, from netip.Addr, mtu int) (n int, err error) {
	var p Packet
	if err := Parse(pkt, &p); err != nil {
		return 0, err
	}
	if err := mayAnswer(&p); err != nil {
		return 0, err
	}
	if (p.Version == 4) != from.Is4() || !from.IsValid() {
		return 0, ErrFamily
	}
	if mtu > 0xffff || (p.Version == 4 && mtu < MinMTUIPv4) || (p.Version == 6 && mtu < MinMTUIPv6) {
		return 0, errMTURange
	}
	if p.TotalLen <= mtu {
		return 0, errNotTooBig
	}
	if p.Version == 4 {
		q := min(p.TotalLen, MaxTooBigIPv4-28)
		n = 28 + q
		if len(out) < n {
			return 0, ErrShortBuffer
		}
		h := out[:n]
		copy(h[28:], pkt[:q])
		h[20], h[21] = 3, 4
		binary.BigEndian.PutUint32(h[22:], 0) // checksum, unused
		binary.BigEndian.PutUint16(h[26:], uint16(mtu))
		ck := Checksum(h[20:])
		binary.BigEndian.PutUint16(h[22:], ck)
		h[0], h[1] = 0x45, 0xc0
		binary.BigEndian.PutUint16(h[2:], uint16(n))
		binary.BigEndian.PutUint16(h[4:], ck)
		binary.BigEndian.PutUint16(h[6:], 0)
		h[8], h[9] = DefaultTTL, protoICMP
		binary.BigEndian.PutUint16(h[10:], 0)
		s, d := from.As4(), p.Tuple.Src.As4()
		copy(h[12:16], s[:])
		copy(h[16:20], d[:])
		binary.BigEndian.PutUint16(h[10:], Checksum(h[:20]))
		return n, nil
	}
	q := min(p.TotalLen, MaxTooBigIPv6-48)
	n = 48 + q
	if len(out) < n {
		return 0, ErrShortBuffer
	}
	h := out[:n]
	copy(h[48:], pkt[:q])
	h[40], h[41] = 2, 0
	binary.BigEndian.PutUint16(h[42:], 0)
	binary.BigEndian.PutUint32(h[44:], uint32(mtu))
	binary.BigEndian.PutUint16(h[42:], Finish(Sum(h[40:], PseudoHeaderSum(from, p.Tuple.Src, protoICMPv6, n-40))))
	binary.BigEndian.PutUint32(h[0:], 6<<28)
	binary.BigEndian.PutUint16(h[4:], uint16(n-40))
	h[6], h[7] = protoICMPv6, DefaultTTL
	s, d := from.As16(), p.Tuple.Src.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return n, nil
}
