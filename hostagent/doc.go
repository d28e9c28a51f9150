// Package hostagent is Ananta's Host Agent: the per-host half of the load
// balancer that lets it scale with the data centre. Every host does its own
// NAT, so replies of load-balanced connections never return through a Mux
// (Direct Server Return) and outbound connections never touch one.
//
// [Engine] is the Go data path, a reference model of the [DataPath]
// contract that an in-kernel engine implements too. It takes packets from
// the uplink (ProcessInbound) and from local VMs (ProcessOutbound) and
// returns a verdict, rewriting packets in place:
//
//   - Inbound: IP-in-IP packets from the Muxes (outer source in
//     EngineConfig.MuxPrefixes, others dropped and counted) are
//     decapsulated, their VIP:port is rewritten to DIP:port (Backend.Port,
//     0 keeps the port), the connection is tracked, and the packet goes to
//     the VM. Replies are rewritten back to VIP:port and go straight to
//     the router. Endpoints in floating-IP mode are delivered without DNAT.
//   - Outbound SNAT: a new connection from a DIP whose VIP has SNAT takes a
//     VIP port from the local pool of port ranges leased for (VIP, DIP)
//     (snat.Pool: a TCP port serves many destinations, UDP mappings are
//     port-restricted cones). When the pool is empty the packet is held in
//     a bounded queue while the agent asks a [PortAllocator] for ports.
//     Return traffic comes back tunnelled from a Mux and is rewritten to
//     the DIP.
//   - ICMP errors about tracked flows are translated, quoted packet too.
//   - Flows idle out per endpoint (ananta.VIPConfig.Idle, default 4
//     minutes); established TCP flows of endpoints with TCPResetOnIdle get
//     an RST at both ends.
//   - New inbound flows pass the endpoint's ACL: rules are tried in order,
//     the first match decides, a flow that matches no rule of a non-empty
//     ACL is denied (implicit deny), an empty ACL allows everything.
//     Replies of allowed flows always pass.
//
// [HostAgent] wraps an Engine with packet I/O ([packetio] ports: the uplink,
// usually AF_PACKET on the host's interface, see [OpenUplink]; one TUN
// device per VM, which the agent creates inside the VM's network namespace
// and keeps the file descriptor of), health probes of local DIPs run inside the VMs' namespaces
// (reported through a [HealthReporter] and applied locally), SNAT port
// leasing with demand prediction, idle release and lease renewal through a
// [PortAllocator], a Prometheus collector and Stats.
//
// The Manager's agent-side client plugs in through PortAllocator,
// HealthReporter and the HostAgent's configuration methods (SetVIP,
// DeleteVIP, SetSNATRanges); [MemAllocator] is an in-memory PortAllocator
// for tests and single-process use.
package hostagent
