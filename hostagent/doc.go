// Package hostagent is Ananta's Host Agent: the per-host half of the load
// balancer that lets it scale with the data centre. Every host does its own
// NAT, so replies of load-balanced connections never return through a Mux
// (Direct Server Return) and outbound connections never touch one.
//
// # Data path
//
// [Engine] is the Go data path and the reference model of the [DataPath]
// contract, which an in-kernel engine is meant to implement too. It takes
// packets from the uplink (ProcessInbound) and from local VMs
// (ProcessOutbound), rewrites them in place and returns a verdict; it does
// no I/O and can be driven directly by tests and benchmarks.
//
//   - Inbound: IP-in-IP packets (RFC 2003/2473) from the Muxes (outer
//     source in EngineConfig.MuxPrefixes, outer destination a host
//     address; others are dropped and counted) are decapsulated, VIP:port
//     is rewritten to DIP:port (Backend.Port; 0 keeps the port), the
//     connection is tracked and the packet goes to the VM that holds the
//     DIP. Among several local backends of an endpoint, those whose
//     Backend.Host is the outer destination are preferred, and the choice
//     is a weighted hash of the flow. Replies are rewritten back to
//     VIP:port and go straight to the router (Direct Server Return).
//     Floating-IP endpoints are delivered without DNAT: the VM holds the
//     VIP on its loopback.
//   - Outbound SNAT: a new connection (TCP SYN, UDP) from a DIP whose VIP
//     has SNAT takes a VIP port from the local pool of the port ranges
//     leased for (VIP, DIP) (snat.Pool: a TCP port serves many
//     destinations while the 5-tuple stays unique; UDP mappings are
//     port-restricted cones: one VIP port per DIP source port, return
//     traffic accepted only from destinations it sent to). A DIP behind
//     several VIPs with SNAT uses the lowest VIP. When the pool has no
//     port, the packet is held in a bounded queue while the agent asks a
//     [PortAllocator] for ports, and sent when they arrive. Return traffic
//     comes back tunnelled from a Mux and is rewritten to DIP:port.
//   - ICMP errors about tracked flows are translated, the quoted packet too
//     (encap.RewriteQuoted), in both directions.
//   - Flows idle out after the endpoint's timeout (ananta.VIPConfig.Idle,
//     default 4 minutes; SNAT flows use the VIP's), or EngineConfig
//     CloseTimeout after an RST or FINs both ways. Established TCP flows of
//     endpoints with TCPResetOnIdle get an RST at both ends, with the
//     sequence number each end expects.
//   - New inbound flows pass the endpoint's ACL: rules are tried in order,
//     the first match decides, a flow that matches no rule of a non-empty
//     ACL is denied (implicit deny, as cloud network ACLs do), an empty ACL
//     allows everything. Packets of allowed flows, replies included, pass.
//
// The connection table is split in 64 locked shards; both keys of a flow
// (as seen from the outside and from the VM) live in the shard of the
// flow's remote party. Each shard holds a pointer-free slab of flows and an
// open-addressing index over packed five-word keys with a secretly seeded
// hash; the table is bounded (EngineConfig.MaxFlows). The configuration
// used for new flows is an immutable snapshot replaced atomically on every
// change. Packets of tracked flows neither allocate nor touch the
// configuration.
//
// Not translated (dropped and counted): IP fragments (no reassembly),
// outbound ICMP echo (no identifier mapping), traffic between VMs that
// does not go through a VIP.
//
// # Agent
//
// [HostAgent] runs an Engine over packetio ports: the uplink (usually
// AF_PACKET on the host's interface, see [OpenUplink]) and one port per VM
// (a TUN device the agent creates inside the VM's network namespace and
// keeps the file descriptor of, or any packetio.Port). It probes the local
// backends (TCP connect, HTTP GET; interval, timeout, rise and fall from
// ananta.HealthProbe) from inside the VMs' namespaces, applies the results
// locally and reports changes to a [HealthReporter]. It leases SNAT ports
// from a [PortAllocator]: ahead of need when a pool runs low while its DIP
// opens connections (snat.Predictor), at once when a packet is held; it
// renews the leases and gives ranges back once idle for the VIP's idle
// timeout. It logs configuration changes and rare events only, and exports
// its counters (Stats) as a Prometheus collector.
//
// The Manager's agent-side client plugs in through PortAllocator,
// HealthReporter and the configuration methods (SetVIP, DeleteVIP,
// SetSNATRanges); [MemAllocator] is an in-memory PortAllocator over the
// Manager's own lease bookkeeping (snat.Leases) for tests and
// single-process use.
package hostagent
