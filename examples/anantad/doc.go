// Command anantad runs the daemons of an Ananta deployment, one role per
// process: a Manager replica, a Mux or a Host Agent.
//
// Usage:
//
//	anantad manager [--config FILE] [--single] [--listen ADDR] [--replica-id N] [--data-dir DIR] [--shards N] [COMMON]
//	anantad mux [--config FILE] [--id ID] [--interface IF] [--next-hop MAC | --next-hop-ip IP] [--addr4 IP] [--managers A,B,C] [--flow-table-bytes N] [COMMON]
//	anantad hostagent [--config FILE] [--id ID] [--interface IF] [--next-hop MAC | --router IP] [--host-addrs A,B] [--mux-prefixes P,Q] [--managers A,B,C] [COMMON]
//
// COMMON flags:
//
//	--metrics ADDR      serve Prometheus metrics on http://ADDR/metrics
//	--log-format FMT    text (default) or json; logs go to standard error (slog)
//	--log-level LEVEL   debug, info (default), warn or error
//
// Each setting can be given in the YAML file (--config) or by its flag; a
// flag given on the command line wins over the file. Unknown YAML keys are
// rejected, and a bad value is reported with the name of its YAML field,
// e.g. "anantad manager: usage: peers[1].raft: "x" is not host:port". A
// configuration error exits with status 2, a runtime failure with 1.
//
// SIGTERM or SIGINT stops the daemon gracefully and it exits with status 0:
// the Manager stops serving and closes its consensus node; the Mux drains
// (withdraws its VIPs, keeps forwarding until it has seen no VIP traffic for
// drain_settle, at most drain_timeout), then stops its data path, its Watch
// client and its BGP speaker; the Host Agent stops its Watch client and
// data path and closes its uplink and VM ports.
//
// # manager
//
// A Manager replica serving the gRPC API (package manager) on listen. With
// single (--single) it runs alone on in-memory consensus (nothing on disk).
// Otherwise it is one replica of a Dragonboat (Raft) cluster: every replica
// gets the same peers and shards and its own replica_id and data_dir.
//
//	listen: 198.18.0.1:7000
//	replica_id: 1
//	data_dir: /var/lib/ananta/raft
//	shards: 4            # default 4; the same on every replica, for ever
//	rtt_millisecond: 100 # Raft tick
//	spread_leaders: true
//	lightweight: false   # small Dragonboat footprint (tests); keep it across restarts
//	raft_listen: ""      # default: this replica's raft address
//	peers:
//	  - {id: 1, raft: 198.18.0.1:7100, grpc: 198.18.0.1:7000}
//	  - {id: 2, raft: 198.18.0.2:7100, grpc: 198.18.0.2:7000}
//	  - {id: 3, raft: 198.18.0.3:7100, grpc: 198.18.0.3:7000}
//	metrics: 198.18.0.1:9100
//	log_format: json
//	log_level: info
//
// The peers' grpc addresses are optional: with them a replica hands SNAT
// allocations to the shard leader's replica (manager.Config.Peers).
//
// # mux
//
// A Mux (package mux) on an AF_PACKET port of interface, sending to the
// router's MAC next_hop (or the MAC the kernel's neighbour table holds for
// next_hop_ip). It follows the Managers' configuration through a Watch
// client (package manager/agent, kind mux, ID id). Once it has the
// snapshots of sync_shards shards it is synced, and if bgp is set its GoBGP
// speaker announces the VIPs to the peers (package routing/gobgp).
//
//	id: mux-1
//	interface: eth0
//	next_hop: 02:00:c6:12:00:01   # or next_hop_ip: 198.18.0.1
//	addr4: 198.18.0.2
//	source_prefix4: 198.18.128.0/24   # optional
//	mtu: 1500
//	flow_table_bytes: 67108864
//	managers: [198.18.0.1:7000, 198.18.0.2:7000, 198.18.0.3:7000]
//	sync_shards: 4
//	drain_settle: 2s
//	drain_timeout: 30s
//	bgp:
//	  asn: 65001
//	  router_id: 198.18.0.2
//	  peers:
//	    - {address: 198.18.0.1, asn: 65000, hold_time: 9s}
//	metrics: 198.18.0.2:9100
//
// # hostagent
//
// A Host Agent (package hostagent) on the uplink interface (AF_PACKET,
// offloads turned off), sending to the router's MAC next_hop (or the MAC
// the neighbour table holds for router). It accepts tunnel packets to
// host_addrs from mux_prefixes, creates a TUN device per VM in the VM's
// network namespace (netns, a path; "" is the agent's own) and, with
// setup, gives it the VM's DIPs and makes it the VM's default route. It
// follows the Managers' configuration through a Watch client (kind
// host-agent, ID id), leases SNAT ports from them (agent.SNATClient) and
// reports backend health to them (agent.HealthClient).
//
//	id: host-1
//	interface: eth0
//	next_hop: 02:00:c6:12:00:01   # or router: 198.18.1.1
//	host_addrs: [198.18.1.2]
//	mux_prefixes: [198.18.0.0/24]
//	max_flows: 1000000
//	managers: [198.18.0.1:7000, 198.18.0.2:7000, 198.18.0.3:7000]
//	vms:
//	  - {name: vm1, dips: [198.19.1.1], tun: hat-vm1, netns: /var/run/netns/vm1, setup: true}
//	  - {name: vm2, dips: [198.19.1.2], tun: hat-vm2, netns: /var/run/netns/vm2}
//	metrics: 198.18.1.2:9100
//
// The Mux needs CAP_NET_RAW (AF_PACKET) and, to announce, a reachable BGP
// peer. Its metrics are the Mux's collector (mux.Mux) with Go and process
// metrics; the Manager's are manager.Manager's, the Host Agent's
// hostagent.HostAgent's. The Host Agent needs CAP_NET_ADMIN and
// CAP_NET_RAW.
package main
