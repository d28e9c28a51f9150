// Package e2e holds the project's end-to-end tests: the whole data plane
// assembled from its components, with real kernel TCP stacks, in the
// network namespace topology of DESIGN.md section 5.
//
//	client ns ── router ns ──┬── mux1 ns (mux.Mux on AF_PACKET)
//	                         ├── mux2 ns (mux.Mux on AF_PACKET)
//	                         ├── host1 ns (hostagent.HostAgent) ── vm1 ns (TUN, DIP, HTTP server)
//	                         └── host2 ns (hostagent.HostAgent) ── vm2 ns (TUN, DIP, HTTP server)
//
// A Manager of three Dragonboat replicas on loopback of the root namespace
// holds the configuration; the Muxes and Host Agents follow it through
// manager/agent Watch clients and the Host Agents lease SNAT ports from it.
// The router spreads the VIP over the Muxes with a kernel ECMP route.
//
// The package has no non-test code. Its tests need root (network
// namespaces, AF_PACKET, TUN); they skip without it, and fail instead of
// skipping under ANANTA_E2E=1.
package e2e
