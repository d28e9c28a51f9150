package mux

import (
	"net/netip"

	"github.com/ananta-go/ananta"
)

// Stats are the Mux's counters. Counters only grow, except those of a
// deleted VIP or removed backend, which leave VIPs and Backends (their
// packets stay in Forwarded).
type Stats struct {
	// Forwarded and ForwardedBytes count the packets tunnelled to hosts
	// and their inner bytes.
	Forwarded, ForwardedBytes uint64
	// Replies counts the ICMP errors answered (ActionReply).
	Replies uint64
	// Drops counts dropped packets by DropReason.
	Drops [NumDropReasons]uint64
	// RxErrors and TxErrors count packet I/O errors of Run's workers.
	RxErrors, TxErrors uint64
	// SelfCheckFailures counts the failed self-checks (SelfCheck run by
	// the lifecycle loop); AnnounceErrors counts the failed Announcer
	// calls.
	SelfCheckFailures, AnnounceErrors uint64
	// Flows are the flow table's counters.
	Flows FlowStats
	// VIPs holds each configured VIP's counters.
	VIPs map[netip.Addr]VIPStats
	// Backends lists every backend of every endpoint, by VIP, endpoint
	// and configuration order.
	Backends []BackendStats
}

// VIPStats are one VIP's counters.
type VIPStats struct {
	Tenant string
	// Packets and Bytes count forwarded packets and their inner bytes.
	Packets, Bytes uint64
	// NewFlows counts flow-table misses balanced by Maglev.
	NewFlows uint64
}

// BackendStats are one backend's counters.
type BackendStats struct {
	Endpoint ananta.Endpoint
	DIP      netip.AddrPort
	Host     netip.Addr
	// State is the effective state: the worse of the configured and the
	// health state.
	State ananta.BackendState
	// NewFlows counts the flows pinned to the backend: new flows and flows
	// moved to it.
	NewFlows uint64
}

// Dropped returns the total of Drops.
func (s Stats) Dropped() uint64 {
	var n uint64
	for _, d := range s.Drops {
		n += d
	}
	return n
}

// Stats returns the Mux's counters. It reads atomic counters and takes
// each flow-table shard's lock briefly; it is meant for tests, the control
// plane and metrics, not for every packet.
func (m *Mux) Stats() Stats {
	st := Stats{
		Replies:  m.replies.Load(),
		RxErrors: m.rxErrors.Load(),
		TxErrors: m.txErrors.Load(),

		SelfCheckFailures: m.lc.checkFailures.Load(),
		AnnounceErrors:    m.lc.announceErrors.Load(),
		Flows:             m.ft.stats(),
		VIPs:              make(map[netip.Addr]VIPStats),
	}
	for i := range m.drops {
		for r := range st.Drops {
			st.Drops[r] += m.drops[i].n[r].Load()
		}
	}
	m.mu.Lock()
	st.Forwarded, st.ForwardedBytes = m.retired.packets, m.retired.bytes
	m.mu.Unlock()
	snap := m.snap.Load()
	for _, ve := range snap.list {
		p, b, n := ve.ctr.totals()
		st.VIPs[ve.addr] = VIPStats{Tenant: ve.tenant, Packets: p, Bytes: b, NewFlows: n}
		st.Forwarded += p
		st.ForwardedBytes += b
		for _, ep := range ve.eps {
			for _, be := range ep.all {
				st.Backends = append(st.Backends, BackendStats{
					Endpoint: be.endpoint,
					DIP:      netip.AddrPortFrom(be.dip, be.port),
					Host:     be.host,
					State:    be.state,
					NewFlows: be.ctr.newFlows.Load(),
				})
			}
		}
	}
	return st
}
