package mux

import "strconv"

// Action is what the caller of Process does with the packet.
type Action uint8

// Actions.
const (
	// ActionDrop: discard the packet; Verdict.Reason says why.
	ActionDrop Action = iota
	// ActionForward: buf[newStart:newEnd] is the packet encapsulated
	// IP-in-IP to the backend's host; send it towards the hosts.
	ActionForward
	// ActionReply: buf[newStart:newEnd] is an ICMP "fragmentation needed"
	// or ICMPv6 "packet too big" addressed to the packet's sender; send it
	// back towards the client.
	ActionReply
)

// String returns "drop", "forward" or "reply".
func (a Action) String() string {
	switch a {
	case ActionForward:
		return "forward"
	case ActionReply:
		return "reply"
	case ActionDrop:
		return "drop"
	}
	return "action(" + strconv.Itoa(int(a)) + ")"
}

// DropReason says why Process dropped a packet. Every dropped packet is
// counted under its reason (Stats.Drops, the ananta_mux_drops_total metric).
type DropReason uint8

// Drop reasons. The flow-table quota never drops a packet: when the table
// (or the untrusted quota) is full, the packet is balanced statelessly by
// Maglev and counted in Stats.Flows.Fallbacks. The TTL is not checked and
// never decremented: the Mux is the tunnel's entry, not a router hop of the
// inner packet, whose bytes it leaves unchanged.
const (
	// DropNone is the reason of a verdict that is not a drop.
	DropNone DropReason = iota
	// DropMalformed: the packet does not parse (encap.Parse failed), is
	// IPv6 with an IPv4-mapped source or destination, or the buffer
	// offsets do not describe a packet.
	DropMalformed
	// DropNoHeadroom: the buffer has less than Headroom bytes before the
	// packet, so the outer header does not fit. A configuration error of
	// the caller's packet I/O.
	DropNoHeadroom
	// DropNoVIP: the destination is not a configured VIP.
	DropNoVIP
	// DropNoEndpoint: the VIP has no endpoint for the protocol and port,
	// and the port is in none of the VIP's SNAT ranges.
	DropNoEndpoint
	// DropNoBackend: the endpoint has no usable (active) backend.
	DropNoBackend
	// DropFragment: an IP fragment to a VIP with no endpoint that can take
	// fragments (see the package documentation).
	DropFragment
	// DropICMPNoFlow: an ICMP error whose quoted packet belongs to no flow,
	// SNAT range or endpoint of the VIP it was sent to.
	DropICMPNoFlow
	// DropTooBig: the packet would exceed Config.MTU once encapsulated and
	// may not be answered with an ICMP error: IPv4 without DF, an ICMP
	// error, a later fragment, or a non-unicast source.
	DropTooBig
	// DropTooBigRateLimited: the packet would exceed Config.MTU once
	// encapsulated, but the ICMP rate limit (Config.TooBigRate) is spent.
	DropTooBigRateLimited

	// NumDropReasons is the number of drop reasons, the length of
	// Stats.Drops.
	NumDropReasons = int(DropTooBigRateLimited) + 1
)

var dropNames = [NumDropReasons]string{
	DropNone:              "none",
	DropMalformed:         "malformed",
	DropNoHeadroom:        "no_headroom",
	DropNoVIP:             "no_vip",
	DropNoEndpoint:        "no_endpoint",
	DropNoBackend:         "no_backend",
	DropFragment:          "fragment",
	DropICMPNoFlow:        "icmp_no_flow",
	DropTooBig:            "too_big",
	DropTooBigRateLimited: "too_big_rate_limited",
}

// String returns the reason's metric label, for example "no_vip".
func (r DropReason) String() string {
	if int(r) < len(dropNames) {
		return dropNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Verdict is the result of Process: an action and, for drops, the reason.
type Verdict struct {
	Action Action
	Reason DropReason
}

// String returns "forward", "reply" or "drop(reason)".
func (v Verdict) String() string {
	if v.Action == ActionDrop {
		return "drop(" + v.Reason.String() + ")"
	}
	return v.Action.String()
}

var (
	verdictForward = Verdict{Action: ActionForward}
	verdictReply   = Verdict{Action: ActionReply}
)

func drop(r DropReason) Verdict { return Verdict{Action: ActionDrop, Reason: r} }
