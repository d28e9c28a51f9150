// Package snat allocates and tracks the SNAT ports of Ananta's outbound
// connectivity: the Manager's port-range allocator and lease bookkeeping,
// demand prediction, and the Host Agent's local pool of leased ports.
//
// A VM (DIP) opening a connection to the outside is source-NATed by the
// Host Agent on its host from DIP:port to VIP:port. The VIP's ports belong to
// the Manager, which leases them in aligned power-of-two ranges of at least
// 8 ports to (VIP, DIP) pairs and tells the Muxes which host holds each
// range, so that return traffic reaches it. The pieces, from the bottom up:
//
//   - Space is one VIP's port space (FirstSNATPort..LastSNATPort minus
//     reserved ranges) with a buddy allocator: Allocate, AllocateAt, Free,
//     Lookup.
//   - Leases is the Manager's state for all VIPs: ConfigureVIP, Allocate,
//     AllocateDemand, Preallocate (ananta.SNATPortsPerDIP ports per DIP,
//     after Azure's table), Renew, Release, ForceRelease, Expire, Owner (the
//     Muxes' SNAT return map: VIP:port -> DIP and host), and a versioned
//     binary snapshot (MarshalBinary, UnmarshalBinary).
//   - Predictor estimates a DIP's demand from its recent allocation rate
//     (an integer EWMA per interval) and recommends how many ports to
//     request next; Leases.AllocateDemand uses one per (VIP, DIP).
//   - Pool is the Host Agent's local pool for one (VIP, DIP): it holds the
//     leased ranges and picks a VIP port for each new outbound flow (TCP:
//     ports reused across destinations; UDP: port-restricted cone), finds
//     idle ranges to give back and signals when ports run low.
//
// # Determinism
//
// Space, Leases and Predictor are deterministic state machines, as the
// Manager's Raft-replicated state requires: their results depend only on
// their configuration and on the sequence of calls with their arguments.
// Times are explicit arguments (stored as int64 Unix nanoseconds); nothing
// reads a clock, draws random numbers, or depends on map iteration order or
// floating point. Allocation picks the smallest free block that fits and,
// among those, the lowest address. Failed calls change nothing. A Leases
// snapshot restores to a state that re-marshals to the same bytes and
// behaves identically.
//
// Pool is local to one Host Agent and not replicated. It returns the same
// ports for the same calls too, but seeds its internal hash tables at
// random, so that tenants cannot choose destinations that collide in them;
// the seed affects speed only.
//
// # Concurrency
//
// No type of this package is safe for concurrent use. The Manager applies
// commands to Leases one at a time; the Host Agent calls a Pool under its
// own lock.
//
// # Example
//
//	l, _ := snat.NewLeases(snat.LeasesConfig{})
//	_ = l.ConfigureVIP(vip, snat.VIPConfig{Reserved: []ananta.PortRange{{First: 80, Last: 80}}})
//	lease, err := l.Allocate(vip, dip, host, 64, now, time.Minute)
//	// lease.Range is, for example, 1024-1087; Muxes route VIP:1024..1087 to host.
//	owner, _ := l.Owner(vip, 1030) // owner.DIP == dip, owner.Host == host
package snat
