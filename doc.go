// Package ananta is an SDK of cloud-scale layer-4 load-balancer components
// after Microsoft's Ananta (Patel et al., SIGCOMM 2013).
//
// An Ananta deployment has three roles:
//
//   - The Mux (package mux, type mux.Mux) sits behind the routers. Routers
//     spread a VIP's packets over every Mux that announces it over BGP
//     (ECMP); each Mux picks a backend (DIP) with Maglev hashing (package
//     hashring), remembers the choice in a flow table, and tunnels the packet
//     IP-in-IP (package encap) to the host that runs the DIP.
//   - The Host Agent (package hostagent, type hostagent.HostAgent) runs on
//     every host: it decapsulates, rewrites VIP to DIP, delivers to the VM,
//     and sends replies straight back to the router (Direct Server Return).
//     It also does outbound SNAT from port ranges leased from the Manager
//     (package snat) and probes the health of its DIPs.
//   - The Manager (package manager, type manager.Manager) is the replicated
//     control plane: the gRPC API (package api) through which a cloud
//     controller configures VIPs, the authority that leases SNAT ports, and the
//     source of truth every Mux and Host Agent follows.
//
// Each role takes its environment through small pluggable interfaces:
// consensus (Dragonboat multi-Raft by default, in-memory for tests), routing
// (GoBGP by default, in-memory for tests) and packet I/O (AF_PACKET, TUN, or
// in-memory pipes). Which of these packages exist today is listed in
// docs/architecture.md.
//
// This root package holds the value types every role shares, all built on
// net/netip: Protocol, FiveTuple, Endpoint, Backend and VIPConfig, with
// validation that names the offending field:
//
//	cfg := ananta.VIPConfig{
//		VIP:    netip.MustParseAddr("198.19.0.10"),
//		Tenant: "shop",
//		Endpoints: []ananta.EndpointConfig{{
//			Protocol: ananta.ProtocolTCP,
//			Port:     80,
//			Backends: []ananta.Backend{
//				{DIP: netip.MustParseAddr("10.0.0.1"), Port: 8080, Host: netip.MustParseAddr("198.18.10.2"), Weight: 1},
//				{DIP: netip.MustParseAddr("10.0.0.2"), Port: 8080, Host: netip.MustParseAddr("198.18.11.2"), Weight: 2},
//			},
//		}},
//	}
//	if err := cfg.Validate(); err != nil {
//		// err names the field, e.g. "endpoints[0].backends[1].weight: must be > 0"
//	}
//
// A reader new to the code starts with hashring (how a backend is chosen) and
// encap (what goes on the wire), then mux.Mux.
package ananta
