package hostagent

import (
	"net/netip"
	"time"

	"github.com/ananta-go/ananta"
)

// DataPath is the contract between the Host Agent's control side and a
// packet engine. The Go engine ([Engine]) implements it and is the reference
// model; an in-kernel (eBPF) engine is meant to implement it too, its
// Process methods running the programs through BPF_PROG_TEST_RUN, so that
// both can be compared packet by packet.
//
// Configuration methods may be called at any time from any goroutine,
// concurrently with packet processing; each change is atomic with respect
// to the packets (a packet sees the old or the new configuration). Process
// methods may be called concurrently from any number of goroutines.
type DataPath interface {
	// SetVIP adds or replaces the configuration of a VIP. Flows already
	// tracked keep their translation until they expire; new flows use the
	// new configuration. It returns an error matching ErrInvalidConfig
	// for a configuration that does not validate.
	SetVIP(cfg ananta.VIPConfig) error
	// DeleteVIP removes a VIP, its SNAT pools and every flow of it. It
	// returns an error matching ErrUnknownVIP if the VIP is not configured.
	DeleteVIP(vip netip.Addr) error
	// SetVM declares local VM number vm (0 to MaxVMs-1) and the DIPs it
	// holds; packets of those DIPs are delivered to it. Calling it again
	// replaces the DIP list. Errors match ErrInvalidConfig.
	SetVM(vm int, dips []netip.Addr) error
	// SetHealth records the health of a local DIP's service on port (the
	// backend port, or the probe port); unhealthy backends get no new
	// flows. Backends start healthy.
	SetHealth(dip netip.Addr, port uint16, healthy bool)
	// SetBackendState overrides the state of backend dip:port in every
	// endpoint of vip, as a Manager relays it; a state other than active
	// takes the backend out of new flows. Errors match ErrInvalidConfig.
	SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error
	// AddSNATRanges adds leased port ranges to the SNAT pool of (vip,
	// dip). Errors match ErrNoPool or ErrRange.
	AddSNATRanges(vip, dip netip.Addr, ranges []ananta.PortRange) error
	// RemoveSNATRanges withdraws ranges from the pool of (vip, dip) (a lease
	// was lost or released) and ends the flows that use their ports.
	RemoveSNATRanges(vip, dip netip.Addr, ranges []ananta.PortRange) error

	// ProcessInbound handles the packet b[start:end] received on the
	// uplink (starting at its IP header). It may rewrite the packet in
	// place and returns what to do with it.
	ProcessInbound(b []byte, start, end int) Result
	// ProcessOutbound handles the packet b[start:end] sent by local VM
	// number vm.
	ProcessOutbound(vm int, b []byte, start, end int) Result

	// Advance moves the engine's clock to now, expires idle flows, and
	// emits the packets the engine originates (TCP resets on idle, SNAT
	// packets released from the hold queue) through emit, whose pkt is
	// valid only during the call.
	Advance(now time.Time, emit func(v Verdict, vm int, pkt []byte))
	// Stats returns the engine's counters.
	Stats() Stats
}

// Verdict says what to do with a processed packet.
type Verdict uint8

// Verdicts.
const (
	// Drop: discard the packet; Result.Reason says why.
	Drop Verdict = iota
	// ToVM: deliver b[Start:End] to local VM number Result.VM.
	ToVM
	// ToUplink: send b[Start:End] out of the uplink, to the router.
	ToUplink
	// Held: the engine kept a copy (SNAT waiting for ports); discard the
	// buffer. The packet comes back through Advance's emit once ports
	// arrive, or is dropped and counted when the hold times out.
	Held
	// Pass: the packet is not the data path's (not a tunnel packet on
	// the uplink): the kernel, which got its own copy, handles it.
	Pass
)

// String returns the verdict's name.
func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case ToVM:
		return "to-vm"
	case ToUplink:
		return "to-uplink"
	case Held:
		return "held"
	case Pass:
		return "pass"
	}
	return "verdict?"
}

// DropReason says why a packet was dropped. Each reason has a counter in
// Stats.Drops.
type DropReason uint8

// Drop reasons.
const (
	DropNone        DropReason = iota
	DropMalformed              // does not parse (encap.Parse / encap.Decap error)
	DropNotMux                 // tunnel packet from a source outside Config.MuxPrefixes
	DropNotHost                // tunnel packet to an address that is not the host's
	DropFragment               // IP fragment (not reassembled)
	DropNoVIP                  // inner destination is no configured VIP
	DropNoEndpoint             // VIP has no endpoint for the protocol and port
	DropNoFlow                 // packet of no tracked flow that cannot start one
	DropACL                    // new flow denied by the endpoint's ACL
	DropNoBackend              // no local, usable backend of the endpoint
	DropTableFull              // connection table full
	DropConflict               // translated tuple already used by another flow
	DropSpoofed                // VM sent from an address that is not its own
	DropNoSNAT                 // VM traffic to the outside without SNAT
	DropUnsupported            // valid packet the engine does not translate (ICMP echo SNAT, ...)
	DropHoldFull               // SNAT hold queue full
	DropHoldTimeout            // held packet's ports did not arrive in time
	DropNAT                    // rewrite failed (for example IPv6 UDP checksum 0)
	DropUnknownVM              // ProcessOutbound with an unknown VM number
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"none", "malformed", "not_mux", "not_host", "fragment", "no_vip", "no_endpoint",
	"no_flow", "acl", "no_backend", "table_full", "conflict", "spoofed", "no_snat",
	"unsupported", "hold_full", "hold_timeout", "nat", "unknown_vm",
}

// String returns the reason's name as used in metrics labels.
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// Result is the outcome of processing one packet.
type Result struct {
	// Verdict, Reason (set for Drop) and VM (the destination of ToVM).
	Outcome
	// Start and End delimit the packet to send (ToVM, ToUplink): the
	// input range, moved past the outer header after decapsulation.
	Start, End int
}

// Outcome is the verdict part of a Result. (Result keeps it in one field
// so that the compiler holds a Result in registers: structs of more than
// four fields always go through memory.)
type Outcome struct {
	Verdict Verdict
	// Reason is set for Drop.
	Reason DropReason
	// VM is the destination VM for ToVM.
	VM int
}
