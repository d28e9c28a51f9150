// Package bpf holds the in-kernel data paths of the SDK. [Mux] is an XDP
// program that does what the Go engine mux.Mux does for the common
// packets, programmed through the same mux.DataPath interface: the Go
// engine is its reference model, and a differential test runs both on the
// same packets (BPF_PROG_TEST_RUN against mux.Mux.Process) and compares
// verdicts and output bytes.
//
//	m, err := bpf.New(bpf.Config{Mux: muxConfig, GatewayMAC: gw})
//	defer m.Close()
//	err = m.SetVIP(vipConfig)
//	l, err := m.Attach(ifindex) // XDP on the interface facing the routers
//	defer l.Close()
//
// The C source is c/mux.c; bpf2go compiles it into muxxdp_bpfel.o and
// muxxdp_bpfel.go, which are committed, so building needs no clang
// (go generate ./bpf rebuilds them; it needs clang, llvm and libbpf-dev).
//
// # What the program does
//
// It parses Ethernet, then IPv4 without options or IPv6 without extension
// headers, unfragmented, carrying TCP or UDP, and computes the flow key and
// flow hash exactly as mux does (mux.FlowHash: same words, same seed). Then,
// as mux.Mux.Process:
//
//  1. a flow found in the flow table goes to its backend, unless the
//     backend was removed or is down (and Config.Mux.DownBackendFlows is
//     mux.DownMove): then Maglev picks again and the flow is re-pinned;
//  2. else a destination that is not a VIP is passed to the kernel;
//  3. else a destination port in the VIP's SNAT return map goes to the
//     range's host, statelessly;
//  4. else the endpoint (exact protocol and port, the protocol's all-ports
//     endpoint, the all-protocols endpoint) picks a backend with its Maglev
//     table, the flow is recorded, and the packet is forwarded;
//  5. forwarding encapsulates the packet (IPv4 or IPv6 outer header by the
//     host's family, protocol 4 or 41) with bpf_xdp_adjust_head, outer
//     source, TTL, TOS, DF, IPv4 identification and IPv6 flow label
//     exactly as encap.Encap writes them for the Go engine, and sends it
//     back out (XDP_TX) to Config.GatewayMAC, from the MAC the frame was
//     sent to.
//
// Drops: no endpoint for the port, no usable backend (the Go engine's
// DropNoEndpoint and DropNoBackend). Everything else goes to the kernel
// (XDP_PASS) and is counted by reason ([Counters]): other EtherTypes,
// destinations that are not VIPs (the Mux host's own traffic, BGP),
// IPv4 options and IPv6 extension headers, fragments, protocols other than
// TCP and UDP (ICMP, and so ICMP errors), malformed packets, and packets too
// big once encapsulated (the Go engine answers those with ICMP; the XDP
// program does not build ICMP errors). A user-space Go engine over
// AF_PACKET, or the kernel, handles what is passed.
//
// # Maps
//
//   - config_map (array, 1): flow hash seed, outer sources, MTU, TTL,
//     Maglev size M, down policy, gateway MAC.
//   - vip_map (hash): VIP (16 bytes, IPv4 mapped) -> flags (has SNAT).
//   - endpoint_map (hash): VIP, protocol, port -> ring index.
//   - ring_map (array of maps): ring index -> Maglev table, an array of M
//     backend indices built by hashring with the inputs mux uses (members
//     are the usable backends in configuration order, keyed by DIP bytes
//     and port, Config.Mux.Maglev size and seed). A changed table is a new
//     inner map, filled, then swapped in with one update: a half-written
//     table is never visible. No inner map means no usable backend.
//   - backend_map (array): backend index -> host address, family, state,
//     16-bit generation. An index stays with its backend (VIP, endpoint,
//     DIP, port) while it is configured; freeing it bumps the generation,
//     so a flow pinned to a reused index is re-balanced.
//   - flow_map (LRU per-CPU hash): flow key (the five words of the flow
//     hash) -> backend index and generation.
//   - snat_map (LPM trie): VIP and destination port prefix -> host; each
//     SNAT range is split into aligned power-of-two blocks.
//   - counters (per-CPU array): packets by outcome ([Counters]).
//
// # Differences from the Go engine
//
// The flow table is an LRU per CPU (a flow served by one CPU, as receive
// side scaling does, is seen by that CPU only) without the Go table's
// trusted/untrusted quotas, idle timeouts or stateless fallback: an
// idle flow stays until the LRU evicts it. The packets passed to the kernel
// (above) are those the Go engine forwards on its slow path (fragments,
// ICMP errors, options), answers (too big) or drops as malformed or not
// to a VIP.
package bpf
