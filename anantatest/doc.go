// Package anantatest runs a whole Ananta deployment in memory, for users'
// own tests, in the spirit of net/http/httptest: no root, no network
// namespaces, no kernel.
//
// NewDeployment starts
//
//   - a Manager (package manager) on the in-memory consensus
//     (consensus/memory), serving its gRPC API on a loopback port;
//   - N Muxes (mux.Mux) and M Host Agents (hostagent.HostAgent), each
//     following the Manager through an agent Client (package manager/agent),
//     exactly as the daemons do; every Host Agent runs one VM per DIP the
//     test names, on in-memory packet ports (package packetio);
//   - a fabric that plays the routers: Send picks a Mux by hashing the
//     packet's 5-tuple (ECMP), runs the Mux's data path (Mux.Process),
//     hands the encapsulated packet to the Host Agent whose address is the
//     outer destination (Engine.ProcessInbound), and reports which Mux,
//     which host and which DIP:port received it, or which component dropped
//     it and why. A Handler, if set, answers as the VM: its reply goes back
//     through the Host Agent's reverse NAT (Engine.ProcessOutbound) and is
//     reported as the packet the host sends to the router (Direct Server
//     Return). SendFromVM sends as a VM: replies, and outbound connections
//     that leave from the VIP with a SNAT port leased by the Manager.
//
// VIPs are configured through the Manager's API, as in production:
// SetVIP and DeleteVIP call the VIP service over gRPC and return once every
// Mux and Host Agent applied the change (Sync); VIPs gives the raw client.
//
//	d := anantatest.NewDeployment(t, anantatest.Options{
//		Muxes: 3,
//		Hosts: []anantatest.Host{{DIPs: []netip.Addr{dip1}}, {DIPs: []netip.Addr{dip2}}},
//	})
//	d.SetVIP(ananta.VIPConfig{VIP: vip, Tenant: "t", Endpoints: []ananta.EndpointConfig{{
//		Protocol: ananta.ProtocolTCP, Port: 80,
//		Backends: []ananta.Backend{d.Backend(dip1, 8080, 1), d.Backend(dip2, 8080, 3)},
//	}}})
//	tally := d.Open(anantatest.Clients(netip.AddrPortFrom(vip, 80), 0, 10000))
//	// tally.Share(netip.AddrPortFrom(dip2, 8080)) is about 0.75
//
// The fabric drives the data paths synchronously: Send returns when the
// packet has landed or was dropped, so tests need no sleeps, and Send may be
// called from many goroutines. The Host Agents' Run loops (their packet
// ports, clock ticks, health probes and SNAT lease requests) are not
// started: flows never idle out, backends are never probed, and SNAT ports
// come only from the Manager's preallocation. Only IPv4 is built by the
// packet helpers (Send accepts any packet the components parse).
//
// Addresses: hosts get 198.18.0.1, 198.18.0.2, ... (in 198.18.0.0/15),
// Muxes 198.18.254.1, 198.18.254.2, ...; clients made by Clients come from
// 100.64.0.0/10.
package anantatest
