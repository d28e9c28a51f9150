// Package manager is Ananta's control plane: the API through which a cloud
// controller configures VIPs, the authority that leases SNAT ports, and the
// source of truth every Mux and Host Agent follows.
//
// A Manager is one replica. Replicas run a consensus.Node (Raft through
// consensus/dragonboat in production, consensus/memory for tests and
// single-process embedding) over several shards (multi-Raft). A VIP, its
// SNAT leases, its backend health and traffic reports live in the shard
// picked by a stable hash of the VIP's address; every shard also records
// the agents (Muxes, Host Agents) and the version of the shard each one
// applied. Shard leaders spread over the replicas (dragonboat's
// SpreadLeaders), so allocation throughput grows with the number of shards.
//
// # State machine
//
// Each shard's state machine is deterministic: commands are protobuf
// messages (api.Command) that carry the proposer's time, which the state
// machine uses as max(command time, latest time applied); it reads no
// clock. A change that agents must see (a VIP set or deleted, a SNAT range
// leased or released, a backend's effective state) gets the next version of
// the shard. A failing command returns a result with a gRPC code and leaves
// the state untouched. Snapshots carry a schema version; Save, Restore,
// Save gives identical bytes.
//
// # Any replica serves every call
//
// Writes are proposed from whichever replica received the call (Dragonboat
// forwards a follower's proposal to the leader). A proposal whose outcome is
// unknown (timeout, leader lost; a leadership change aborts attempts in
// flight) is retried with the same ID, and the state machine returns the
// first result for a repeated ID, so retries never apply twice. Reads
// (GetVIP, ListVIPs, ListLeases, ListAgents) are linearizable through the
// Node's Read. Watch streams are served from the replica's local applied
// state: a snapshot of each shard, then increments from the replica's
// retained change log; an agent that reconnects, to any replica, resumes
// from its versions (waiting if that replica is behind it) and gets a full
// snapshot only if its version is older than the retained log.
//
// # SNAT
//
// Ports are leased in aligned power-of-two ranges of at least 8 ports from
// each VIP's port space (package snat). Configuring a VIP with SNAT
// preallocates ports for each of its DIPs (ananta.SNATPortsPerDIP);
// AllocatePorts without a hint sizes the range by the DIP's recent demand
// (snat.Predictor). Leases expire unless renewed; the leader of each shard
// reclaims expired leases. Requests wait in one queue per VIP, served
// round-robin across VIPs in batches (one proposal per batch); with
// Config.Peers, replicas hand allocations to the shard leader's replica so
// that a shard's requests share one set of queues. A DIP has at most one
// pending request (a second one joins it), a token bucket per DIP
// limits its request rate, and the state machine caps the ports a DIP
// holds. While a configuration or health proposal of a shard is in
// progress, SNAT batches of that shard are held to one in flight (priority
// stages: configuration waits for at most one batch, and SNAT never
// starves), and otherwise only a few batches are in flight, so a flood of
// allocations does not delay configuration.
//
// # Distribution
//
// Agents Watch, apply, and report the versions they applied
// (ReportApplied, batched into few proposals per shard). A VIP change can
// wait, up to a duration given in the request, until every connected agent
// applied it; the response lists the agents that lag. Package
// manager/agent is the agent side: a Client that watches, applies to a
// Target (a Mux or Host Agent behind a small adapter) and reconnects to any
// replica, and a SNATClient that a Host Agent uses as its port allocator.
//
// # Lifecycle and observability
//
// Config (by value, Validate names the field), New (opens the consensus
// Node with the Manager's state machine factory), Run (serves gRPC until
// its context ends), Close (idempotent). Logs go to Config.Logger (slog).
// The Manager is a prometheus.Collector (requests by outcome, batches,
// queue length, proposals and retries, Watch streams, shard versions and
// leadership); Stats returns the same counters.
//
// # Limits of this design
//
//   - The shard set is fixed for the life of a deployment (no
//     resharding): the VIP-to-shard hash depends on the number of shards.
//   - The per-DIP and per-VIP request rates are enforced where requests
//     are queued: at the shard leader's replica when Config.Peers is set
//     (so cluster-wide while the leadership holds), otherwise on each
//     replica, so that a DIP sending to several replicas gets the rate from
//     each. The per-DIP port limit is replicated and exact.
//   - An allocation request already proposed when its caller gives up
//     still leases its range (it expires unless renewed); a request still
//     queued is dropped.
//   - Versions are positions in a shard's history; an agent that presents
//     versions of another deployment's history (the cluster was rebuilt
//     from scratch) is not detected and must be restarted empty.
//   - Commands carry the proposing replica's clock; replica clocks should
//     be synchronised (NTP), since a skew shortens or lengthens leases by
//     as much.
//   - Traffic reports are aggregated (GetTraffic), but nothing acts on
//     them yet: isolating a VIP that overloads the Muxes is left to the
//     operator or a controller.
//   - A Watch snapshot is built under the shard's read lock, which delays
//     the shard's Apply for as long (milliseconds for thousands of leases).
package manager
