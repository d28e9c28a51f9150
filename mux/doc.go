// Package mux is the Go data path of an Ananta Mux, the middle tier of the
// load balancer: routers spread a VIP's packets over a pool of Muxes by
// ECMP; a Mux picks a backend (DIP) for each flow with Maglev, remembers
// the choice in a flow table, and tunnels the packet IP-in-IP to the host
// of the backend, whose Host Agent decapsulates it and NATs it to the DIP.
// Replies go from the host straight to the router (direct server return).
//
// This package is the reference model that the eBPF/XDP data path must
// match packet for packet: [Mux.Process] turns one packet into a verdict
// and output bytes with no packet I/O, so tests, benchmarks and the
// differential test against eBPF can drive it directly; [Mux.ProcessBatch]
// does the same for a batch. [Mux.Run] drives it over packetio ports. Both engines implement [DataPath], the interface
// the control plane programs them through.
//
//	m, err := mux.New(mux.Config{Addr4: muxAddr, SourcePrefix4: rssPrefix})
//	defer m.Close()
//	err = m.SetVIP(vipConfig)
//	verdict, start, end := m.Process(buf, mux.Headroom, mux.Headroom+n)
//
// # Configuration
//
// SetVIP, DeleteVIP, SetSNATRanges and SetBackendState apply desired state
// idempotently: the control side (one mutex) builds a new immutable
// snapshot of the VIP table, endpoints, Maglev tables, backends and SNAT
// maps, copy-on-write, and swaps it in with an atomic pointer. Packets read
// the snapshot without locks, so a change never pauses forwarding. Each
// endpoint has a Maglev table (package hashring) over its usable backends
// (active, weight > 0), keyed by DIP bytes and port; a table whose member
// set did not change is reused.
//
// # Forwarding a packet
//
// Process parses the packet, with a fast path for IPv4 without options
// and IPv6 without extension headers carrying unfragmented TCP or UDP
// (FuzzFastParse checks that it agrees with encap.Parse) and encap.Parse
// for everything else, then
//
//  1. computes the flow key and flow hash (below);
//  2. looks the flow up in the flow table: a tracked flow goes to the
//     backend it is pinned to, unless that backend was removed from the
//     config, or is down and Config.DownBackendFlows is DownMove: then the
//     flow is re-balanced by Maglev and re-pinned (a "move");
//  3. otherwise, for TCP and UDP, looks the destination port up in the
//     VIP's SNAT return map: a port in a range leased to a DIP goes to that
//     DIP's host, statelessly;
//  4. otherwise finds the VIP's endpoint: exact protocol and port first,
//     then the protocol's all-ports endpoint, then the all-protocols
//     all-ports endpoint; picks the backend with the endpoint's Maglev
//     table and the flow hash; and records the flow in the table as
//     untrusted (or, if there is no room, forwards it statelessly: a
//     fallback);
//  5. encapsulates the packet to the backend's host (encap.Encap): outer
//     IPv4 (protocol 4, or 41 for an IPv6 VIP) or IPv6 (next header 41, or
//     4 for an IPv4 VIP) by the host's family, outer TTL Config.TTL, DF and
//     TOS copied from the inner packet. The outer source keeps the hosts'
//     receive-side scaling working: with Config.SourcePrefix4/6 it is the
//     prefix with its host bits taken from the low bits of the flow hash
//     (all-zeros and all-ones host parts are avoided by flipping the lowest
//     bit), else Config.Addr4/6. An IPv6 outer header carries bits 32-51 of
//     the flow hash as flow label (1 if they are 0). The inner packet is not
//     changed: no TTL check and no TTL decrement, since the Mux is the
//     tunnel's entry point for the VIP, not a router hop of the inner
//     packet.
//
// Packets that cannot be forwarded are dropped and counted by
// [DropReason]: unparsable (DropMalformed), not to a VIP (DropNoVIP), to a
// port without endpoint or SNAT range (DropNoEndpoint), to an endpoint
// without usable backend (DropNoBackend), fragments without a suitable
// endpoint (DropFragment), ICMP errors about no flow (DropICMPNoFlow), too
// big (DropTooBig, DropTooBigRateLimited). A full flow table never drops.
//
// # MTU
//
// If the packet plus the outer header (20 or 40 bytes) exceeds Config.MTU
// and the packet may be answered (IPv4 with DF, or IPv6; not an ICMP error;
// not a later fragment; from a unicast source), Process answers with an
// ICMP "fragmentation needed" (type 3 code 4) or ICMPv6 "packet too big"
// from the VIP to the sender, advertising MTU minus the outer header and
// quoting the packet (encap.TooBig), if a token bucket (Config.TooBigRate,
// Config.TooBigBurst) allows, else drops it (DropTooBigRateLimited).
// Packets that may not be answered are dropped (DropTooBig): in particular
// IPv4 packets without DF are not fragmented, since Process has one output
// packet (a fabric MTU that fits the hosts' MTU plus 40 bytes avoids this).
// An ICMP error is never answered with another.
//
// # ICMP errors
//
// An ICMP or ICMPv6 error sent to a VIP (a router's "fragmentation needed"
// or "unreachable" about a reply a backend sent from the VIP) quotes a
// packet VIP -> client, the reverse of a client flow. Process looks up the
// reversed quoted tuple: the tracked flow's backend, else the SNAT range of
// the quoted source port, else the backend Maglev picks for the reversed
// tuple (the one the flow itself would get), and forwards the error there
// without tracking anything. A quote whose source is not the VIP the error
// was sent to is dropped (DropICMPNoFlow).
//
// # Fragments
//
// A later IP fragment carries no ports, so all fragments (first and later,
// IPv4 and IPv6) are balanced on the 3-tuple: their flow key and hash have
// ports 0, so every fragment of a datagram goes to the same backend, the
// one the 3-tuple hashes to (as in Maglev's fragment handling). Fragments
// of a TCP or UDP datagram go to the protocol's all-ports endpoint, else
// the all-protocols endpoint, else the protocol's only endpoint if the VIP
// has exactly one; otherwise they are dropped (DropFragment). Fragments do
// not use the SNAT map. The host reassembles. Unfragmented packets of the
// same flow hash with their ports, so they may go to another backend than
// the flow's fragments: a protocol that mixes both within one flow must use
// an all-ports endpoint with a single backend, or avoid fragmentation (DF).
//
// # Flow hash
//
// The flow hash is a seeded, deterministic 64-bit hash of the 5-tuple,
// computed with 64-bit multiplies, shifts and xors only, so that every Mux
// with the same Config.FlowHashSeed computes the same value and an eBPF
// program can compute it too. The key is five 64-bit words:
//
//	w0, w1 = source address, w2, w3 = destination address: the 16-byte
//	         address (an IPv4 address a.b.c.d as ::ffff:a.b.c.d), bytes 0-7
//	         and 8-15 each read as a little-endian uint64
//	w4     = sport | dport<<16 | proto<<32   (ports 0 for fragments and
//	         protocols without ports)
//
// and the hash, with seed = Config.FlowHashSeed (default
// DefaultFlowHashSeed):
//
//	a = (seed ^ w0) * 0xff51afd7ed558ccd
//	b = (seed ^ w1) * 0xc4ceb9fe1a85ec53
//	a = (a ^ a>>32 ^ w2) * 0xff51afd7ed558ccd
//	b = (b ^ b>>32 ^ w3) * 0xc4ceb9fe1a85ec53
//	a = (a ^ a>>32 ^ w4) * 0xff51afd7ed558ccd
//	h = a ^ (b>>32 | b<<32)                // b rotated by 32 bits
//	h = (h ^ h>>30) * 0xbf58476d1ce4e5b9   // splitmix64 finalizer
//	h = (h ^ h>>27) * 0x94d049bb133111eb
//	h ^= h >> 31
//
// (all arithmetic modulo 2^64, >> logical). The two lanes are independent,
// so a CPU computes them in parallel.
//
// Maglev uses its high bits (hashring.Table.Lookup), the outer source its
// low bits, the flow label bits 32-51. [FlowHash] computes it for a
// FiveTuple; golden tests pin its values.
//
// # Flow table
//
// The flow table has a fixed capacity, Config.FlowTableBytes /
// FlowEntryBytes, all allocated by New (and advised for transparent huge
// pages on Linux, which cuts TLB misses on large tables). A flow takes 49
// bytes: a 48-byte entry (the packed key as five 64-bit words, no netip
// values; the backend slot in the key word's spare bits; the slot's 16-bit
// generation; a 32-bit expiry time in milliseconds) and a 1-byte tag. The
// table is split into up to 64 shards by flow hash, each with its own
// mutex. A shard is an array of buckets of 8 entries; a bucket's 8 tags
// form one 64-bit word (7 bits of flow hash and a trusted bit per way, 0
// for a free way) kept in a dense array apart from the entries, so that it
// usually sits in cache: a lookup matches the 8 tags at once and then
// reads one entry. Each flow has two candidate buckets in its shard and is
// inserted into the less loaded one (two-choice hashing).
//
// A new flow is untrusted; its second packet makes it trusted. Untrusted
// flows may hold Config.UntrustedShare of the capacity and expire after
// Config.UntrustedIdleTimeout without packets (or the endpoint's idle
// timeout if shorter); trusted flows may hold the rest and expire after
// their endpoint's idle timeout. When the untrusted quota or both buckets
// are full, a new flow replaces one of the untrusted entries of its two
// buckets, chosen by the flow hash (an eviction); trusted entries are never
// replaced, so a flood of spoofed SYNs churns the untrusted entries and
// leaves established flows alone. With no untrusted entry to replace, the
// packet is balanced by Maglev without state (a fallback, counted). The
// insert decides from the tag words alone. A second packet that finds the
// trusted quota full leaves the flow untrusted (counted).
//
// Expiry needs no stop-the-world sweep: a lookup frees an expired entry it
// meets (lazy expiry), and a background goroutine sweeps every bucket once
// a second, a slice of each shard every 10 ms under that shard's lock.
// Time is a coarse millisecond clock (the workers refresh it once per
// batch, the background goroutine every 10 ms), or Config.Clock.
//
// Flows are pinned to backend slots, not to positions in Maglev tables: a
// slot stays with its backend (VIP, endpoint, DIP, port) while it is in the
// configuration, and a 16-bit generation tells a reused slot from its
// previous owner (freed slots also wait in a FIFO queue of 1024 before
// reuse). So adding a backend, or changing weights, keeps every tracked
// flow on its backend; a draining backend keeps its flows; a down
// backend's flows move (DownMove) or stay (DownKeep); a removed backend's
// flows move. A moved flow is re-pinned to its new backend.
//
// Process takes one shard lock per packet. [Mux.ProcessBatch], which Run's
// workers use, gives the same results for a batch of packets but parses
// and hashes 16 packets first, then prefetches their entries, so that the
// cache misses of a large table overlap; tags are written
// atomically (with the lock held) so that this look-ahead can read them
// without the lock.
//
// # Counters and top talkers
//
// Per-VIP packet, byte and new-flow counters and drop counters are atomic
// and striped over 8 cache lines by flow hash. [Mux.Stats] reads them;
// [Mux] is a prometheus.Collector that reads Stats when scraped; and
// [Mux.TopTalkers] ranks VIPs by packet rate over a sliding window
// (Config.TalkerWindow) from samples taken off the packet path, for the
// control plane's packet-rate fairness.
//
// # Lifecycle
//
// With Config.Announcer set, the Mux announces the host prefix (/32 or
// /128) of every configured VIP, with Config.NextHop4 or NextHop6 as next
// hop, only while all of these hold: Run's workers are up; the owner of the
// configuration has called SetSynced(true), declaring that it has caught
// up with the Manager (with the agent Watch client, call it from
// agent.Config.OnApplied once every shard's snapshot has been applied);
// and the self-check passes. VIPs set or deleted meanwhile are announced or
// withdrawn. The lifecycle loop, which Run starts, runs SelfCheck every
// Config.SelfCheckInterval (1 s) and at every change: the workers must be
// up and a synthetic TCP SYN (or UDP datagram) per endpoint, from
// 192.0.2.1 or 2001:db8::1 (documentation addresses), must go through
// the data path's parse, hash, VIP and endpoint lookup, Maglev pick and
// encapsulation on the published configuration; the probe skips the flow
// table and the counters, so it disturbs no flow and no statistic. An
// endpoint without a usable backend passes. A failed check withdraws
// every VIP and is counted (Stats.SelfCheckFailures); the next passing
// check announces them again.
//
// Everything is withdrawn when Run stops (before its workers stop
// forwarding), when a worker fails, by SetSynced(false), by Drain and by
// Close (which closes the Announcer). Drain is the planned way out:
// it withdraws, keeps forwarding while the routers move the traffic
// away, and returns once no packet has reached the VIPs for a settle time;
// Close then stops forwarding. Announcer errors are counted
// (Stats.AnnounceErrors) and retried at the next round.
package mux
