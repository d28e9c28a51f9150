package encap

import (
	"errors"
	"fmt"
)

// Sentinel errors. Functions may return them wrapped with a fixed detail
// message; test with errors.Is.
var (
	// ErrTruncated means the slice ends before a header the packet has:
	// shorter than the fixed IP header, than the IPv4 header length (IHL),
	// than the IP total length, than an IPv6 extension header, or than the
	// transport header.
	ErrTruncated = errors.New("encap: truncated packet")
	// ErrBadVersion means the IP version nibble is neither 4 nor 6, or is not
	// the version the surrounding header announces.
	ErrBadVersion = errors.New("encap: bad IP version")
	// ErrBadHeader means a header field is invalid: IPv4 IHL below 5, TCP data
	// offset below 5, or a Packet that does not describe the slice.
	ErrBadHeader = errors.New("encap: malformed header")
	// ErrBadLength means a length field contradicts the packet: an IP total
	// length below the header length, a UDP length that does not fit, or a
	// packet too long for the outer header's length field.
	ErrBadLength = errors.New("encap: bad length")
	// ErrNoHeadroom means there is not enough room before the inner packet for
	// the outer header.
	ErrNoHeadroom = errors.New("encap: not enough headroom")
	// ErrUnsupported means the packet is valid but this package does not
	// handle it (for example a fragmented tunnel packet, a non-IP-in-IP
	// protocol given to Decap, or too many IPv6 extension headers).
	ErrUnsupported = errors.New("encap: unsupported packet")
	// ErrFamily means addresses of different families were mixed: outer
	// source and destination, or a NAT address and the packet.
	ErrFamily = errors.New("encap: address family mismatch")
	// ErrBadChecksum means a checksum is wrong (Decap's outer IPv4 header) or
	// forbidden (an IPv6 UDP checksum of zero, RFC 8200 section 8.1).
	ErrBadChecksum = errors.New("encap: bad checksum")
	// ErrECN means the outer header of a tunnel packet is marked Congestion
	// Experienced but the inner packet is not ECN-capable: RFC 6040 says to
	// drop it.
	ErrECN = errors.New("encap: outer CE mark on a non-ECN-capable inner packet")
	// ErrShortBuffer means the output buffer is too small.
	ErrShortBuffer = errors.New("encap: output buffer too small")
	// ErrNoReply means the packet must not be answered with an ICMP error
	// (RFC 1122 section 3.2.2, RFC 1812 section 4.3.2.7, RFC 4443 section
	// 2.4). ErrICMPError and ErrNotDF wrap it.
	ErrNoReply = errors.New("encap: packet must not be answered with an ICMP error")
	// ErrICMPError means the packet is itself an ICMP or ICMPv6 error
	// message, which is never answered with another one. It wraps ErrNoReply.
	ErrICMPError = fmt.Errorf("%w: it is an ICMP error", ErrNoReply)
	// ErrNotDF means the packet is IPv4 without the don't-fragment bit: it may
	// be fragmented, so "fragmentation needed" is the wrong answer. It wraps
	// ErrNoReply.
	ErrNotDF = fmt.Errorf("%w: IPv4 without DF may be fragmented", ErrNoReply)
)

// Wrapped errors with detail, built once so that returning them does not
// allocate.
var (
	errEmpty           = fmt.Errorf("%w: empty packet", ErrTruncated)
	errV4Short         = fmt.Errorf("%w: shorter than the 20-byte IPv4 header", ErrTruncated)
	errV6Short         = fmt.Errorf("%w: shorter than the 40-byte IPv6 header", ErrTruncated)
	errIHLSmall        = fmt.Errorf("%w: IPv4 IHL below 5", ErrBadHeader)
	errIHLPastEnd      = fmt.Errorf("%w: IPv4 options run past the end", ErrTruncated)
	errTotalPastEnd    = fmt.Errorf("%w: IP total length exceeds the slice", ErrTruncated)
	errTotalBelowHdr   = fmt.Errorf("%w: IPv4 total length below the header length", ErrBadLength)
	errExtPastEnd      = fmt.Errorf("%w: IPv6 extension header runs past the end", ErrTruncated)
	errExtTooMany      = fmt.Errorf("%w: too many IPv6 extension headers", ErrUnsupported)
	errTCPShort        = fmt.Errorf("%w: TCP header", ErrTruncated)
	errTCPOffSmall     = fmt.Errorf("%w: TCP data offset below 5", ErrBadHeader)
	errTCPOffPastEnd   = fmt.Errorf("%w: TCP options run past the end", ErrTruncated)
	errUDPShort        = fmt.Errorf("%w: UDP header", ErrTruncated)
	errUDPLength       = fmt.Errorf("%w: UDP length", ErrBadLength)
	errICMPShort       = fmt.Errorf("%w: ICMP header", ErrTruncated)
	errQuoteVersion    = fmt.Errorf("%w: ICMP error quotes a packet of the other family", ErrBadVersion)
	errInnerVersion    = fmt.Errorf("%w: inner packet version does not match the tunnel protocol", ErrBadVersion)
	errBounds          = fmt.Errorf("%w: start/end outside the slice", ErrBadLength)
	errTooLong         = fmt.Errorf("%w: packet too long for the outer header", ErrBadLength)
	errOuterFragment   = fmt.Errorf("%w: fragmented tunnel packet (reassemble first)", ErrUnsupported)
	errNotTunnel       = fmt.Errorf("%w: not an IP-in-IP packet", ErrUnsupported)
	errOuterChecksum   = fmt.Errorf("%w: outer IPv4 header checksum", ErrBadChecksum)
	errUDP6Zero        = fmt.Errorf("%w: IPv6 UDP checksum is zero", ErrBadChecksum)
	errPacketMismatch  = fmt.Errorf("%w: Packet does not describe the slice", ErrBadHeader)
	errField           = fmt.Errorf("%w: field must be Src or Dst", ErrUnsupported)
	errRoutingHeader   = fmt.Errorf("%w: destination rewrite with an IPv6 routing header in flight", ErrUnsupported)
	errNotICMPError    = fmt.Errorf("%w: not an ICMP error", ErrUnsupported)
	errLaterFragment   = fmt.Errorf("%w: non-first IPv4 fragment", ErrNoReply)
	errSourceNotHost   = fmt.Errorf("%w: source is not a unicast host address", ErrNoReply)
	errMTURange        = fmt.Errorf("%w: MTU outside 68-65535 (IPv4) or 1280-65535 (IPv6)", ErrBadLength)
	errNotTooBig       = fmt.Errorf("%w: packet fits in the MTU", ErrBadLength)
	errUnspecifiedAddr = fmt.Errorf("%w: invalid address", ErrFamily)
)
