// Package encap is the packet layer of the Mux and the Host Agent: it parses
// IPv4 and IPv6 packets into a flow 5-tuple, tunnels them IP-in-IP (RFC 2003,
// RFC 2473) and back, rewrites addresses and ports with incremental checksum
// updates (RFC 1071, RFC 1624), and builds ICMP "fragmentation needed" and
// ICMPv6 "packet too big" answers.
//
// Every function works in place on a byte slice the caller owns, starting at
// the IP header (no link-layer header), and none allocates: the package is
// meant to sit on the per-packet path. The typical sequence on a Mux is
//
//	var p encap.Packet
//	if err := encap.Parse(frame, &p); err != nil { drop }
//	// pick a backend for p.Tuple (or p.Inner for an ICMP error) ...
//	start, err := encap.Encap(buf, headroom, headroom+p.TotalLen, muxAddr, host, encap.EncapOptions{})
//
// and on a Host Agent
//
//	inner, _, err := encap.Decap(frame)
//	err = encap.Parse(inner, &p)
//	err = encap.Rewrite(inner, &p, encap.Dst, dip, port) // VIP -> DIP
//
// # Buffers and headroom
//
// Encap writes the outer header in front of the inner packet, in the
// headroom the caller left before it: the inner packet is b[start:end] and
// b[:start] is free. Reserve OverheadIPv6 bytes of headroom to encapsulate
// into either family. Decap returns the inner packet as a subslice of its
// argument.
//
// # Errors
//
// Failures are reported with the sentinel errors of this package (ErrTruncated,
// ErrBadLength, ...). Some are wrapped with a fixed detail message; the
// wrapping is built once at initialisation, so returning an error does not
// allocate either. Compare with errors.Is.
//
// # What is not checked
//
// Parse does not verify checksums (Decap verifies the outer IPv4 header
// checksum). Rewrite updates checksums incrementally, so a packet that
// arrived with a wrong checksum leaves with a wrong checksum, and the
// receiver drops it as it would have dropped the original.
package encap
