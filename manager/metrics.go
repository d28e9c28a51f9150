package manager

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats counts this replica's work since New.
type Stats struct {
	// SNAT allocation requests, by outcome.
	SNATRequests    uint64 // reached the scheduler
	SNATJoined      uint64 // joined a pending request of the same DIP
	SNATRateLimited uint64 // refused by the DIP's token bucket
	SNATQueueFull   uint64 // refused because the VIP's queue was full
	SNATAbandoned   uint64 // dropped from the queue: every caller gave up
	SNATForwarded   uint64 // handed to the shard leader's replica (Config.Peers)
	SNATBatches     uint64 // allocation proposals
	SNATBatchItems  uint64 // requests in those proposals
	SNATQueued      uint64 // requests waiting in the queues now
	// Proposals made by this replica, and attempts retried because their
	// outcome was unknown.
	Proposals       uint64
	ProposalRetries uint64
	// WatchStreams open now.
	WatchStreams uint64
}

type counters struct {
	snatRequests, snatJoined, snatRateLimited, snatQueueFull atomic.Uint64
	snatAbandoned, snatForwarded                             atomic.Uint64
	snatBatches, snatBatchItems                              atomic.Uint64
	proposals, proposalRetries                               atomic.Uint64
	watchStreams                                             atomic.Int64
}

// Stats returns the replica's counters.
func (m *Manager) Stats() Stats {
	c := &m.stats
	s := Stats{
		SNATRequests:    c.snatRequests.Load(),
		SNATJoined:      c.snatJoined.Load(),
		SNATRateLimited: c.snatRateLimited.Load(),
		SNATQueueFull:   c.snatQueueFull.Load(),
		SNATAbandoned:   c.snatAbandoned.Load(),
		SNATForwarded:   c.snatForwarded.Load(),
		SNATBatches:     c.snatBatches.Load(),
		SNATBatchItems:  c.snatBatchItems.Load(),
		Proposals:       c.proposals.Load(),
		ProposalRetries: c.proposalRetries.Load(),
		WatchStreams:    uint64(max(c.watchStreams.Load(), 0)),
	}
	s.SNATQueued = uint64(m.snat.queued())
	return s
}

const metricPrefix = "ananta_manager_"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(metricPrefix+name, help, labels, nil)
}

var (
	descSNATRequests = desc("snat_requests_total", "SNAT allocation requests, by outcome at the scheduler (queued, joined, rate_limited, queue_full).", "outcome")
	descSNATAbandon  = desc("snat_abandoned_total", "SNAT allocation requests dropped from the queue because every caller gave up.")
	descSNATForward  = desc("snat_forwarded_total", "SNAT allocation requests handed to the shard leader's replica.")
	descSNATBatches  = desc("snat_batches_total", "SNAT allocation proposals.")
	descSNATItems    = desc("snat_batch_items_total", "Requests in SNAT allocation proposals.")
	descSNATQueued   = desc("snat_queued", "SNAT allocation requests waiting now.")
	descProposals    = desc("proposals_total", "Proposals made by this replica.")
	descRetries      = desc("proposal_retries_total", "Proposal attempts retried because their outcome was unknown.")
	descWatch        = desc("watch_streams", "Watch streams open now.")
	descVersion      = desc("shard_version", "Version of the shard this replica applied.", "shard")
	descLeader       = desc("shard_leader", "1 if this replica leads the shard, else 0.", "shard")
)

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSNATRequests, descSNATAbandon, descSNATForward, descSNATBatches, descSNATItems, descSNATQueued, descProposals, descRetries, descWatch, descVersion, descLeader} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; register the Manager with a
// prometheus.Registry to export its metrics.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	s := m.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(descSNATRequests, s.SNATRequests-s.SNATJoined-s.SNATRateLimited-s.SNATQueueFull, "queued")
	counter(descSNATRequests, s.SNATJoined, "joined")
	counter(descSNATRequests, s.SNATRateLimited, "rate_limited")
	counter(descSNATRequests, s.SNATQueueFull, "queue_full")
	counter(descSNATAbandon, s.SNATAbandoned)
	counter(descSNATForward, s.SNATForwarded)
	counter(descSNATBatches, s.SNATBatches)
	counter(descSNATItems, s.SNATBatchItems)
	gauge(descSNATQueued, float64(s.SNATQueued))
	counter(descProposals, s.Proposals)
	counter(descRetries, s.ProposalRetries)
	gauge(descWatch, float64(s.WatchStreams))
	for _, sh := range m.shards {
		id := strconv.FormatUint(sh, 10)
		v, _ := m.ShardVersion(sh)
		gauge(descVersion, float64(v), id)
		l, ok := m.node.Leader(sh)
		lead := 0.0
		if ok && l == m.node.ID() {
			lead = 1
		}
		gauge(descLeader, lead, id)
	}
}

var _ prometheus.Collector = (*Manager)(nil)
