package mux

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric descriptions of the Mux's Prometheus collector.
var (
	descVIPPackets = prometheus.NewDesc("ananta_mux_vip_packets_total",
		"Packets forwarded to the VIP's backends and SNAT hosts.", []string{"vip", "tenant"}, nil)
	descVIPBytes = prometheus.NewDesc("ananta_mux_vip_bytes_total",
		"Inner bytes forwarded for the VIP.", []string{"vip", "tenant"}, nil)
	descVIPNewFlows = prometheus.NewDesc("ananta_mux_vip_new_flows_total",
		"Flow-table misses of the VIP balanced by Maglev.", []string{"vip", "tenant"}, nil)
	descForwarded = prometheus.NewDesc("ananta_mux_forwarded_packets_total",
		"Packets tunnelled to hosts, deleted VIPs included.", nil, nil)
	descReplies = prometheus.NewDesc("ananta_mux_icmp_too_big_sent_total",
		"ICMP fragmentation-needed / packet-too-big answers sent.", nil, nil)
	descDrops = prometheus.NewDesc("ananta_mux_drops_total",
		"Dropped packets by reason.", []string{"reason"}, nil)
	descIOErrors = prometheus.NewDesc("ananta_mux_io_errors_total",
		"Packet I/O errors of the workers.", []string{"direction"}, nil)
	descFlowEntries = prometheus.NewDesc("ananta_mux_flow_table_entries",
		"Flow-table entries in use, by class.", []string{"class"}, nil)
	descFlowQuota = prometheus.NewDesc("ananta_mux_flow_table_quota_entries",
		"Flow-table quota, by class.", []string{"class"}, nil)
	descFlowCapacity = prometheus.NewDesc("ananta_mux_flow_table_capacity_entries",
		"Flow-table capacity.", nil, nil)
	descFlowEvents = prometheus.NewDesc("ananta_mux_flow_table_events_total",
		"Flow-table events: insert, eviction, expiration, fallback (no room: stateless Maglev), promotion, promotion_refused, move.",
		[]string{"event"}, nil)
	descBackendNewFlows = prometheus.NewDesc("ananta_mux_backend_new_flows_total",
		"Flows pinned to the backend.", []string{"vip", "endpoint", "dip"}, nil)
	descBackendState = prometheus.NewDesc("ananta_mux_backend_state",
		"Effective backend state: 0 active, 1 draining, 2 down.", []string{"vip", "endpoint", "dip"}, nil)
	descSelfCheckFailures = prometheus.NewDesc("ananta_mux_self_check_failures_total",
		"Failed self-checks of the data path (each withdraws every VIP).", nil, nil)
	descAnnounceErrors = prometheus.NewDesc("ananta_mux_announce_errors_total",
		"Failed Announcer calls (announce or withdraw).", nil, nil)
	descAnnounced = prometheus.NewDesc("ananta_mux_announced_vips",
		"VIP prefixes currently announced through the Announcer.", nil, nil)
)

// Describe implements prometheus.Collector.
func (m *Mux) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVIPPackets, descVIPBytes, descVIPNewFlows, descForwarded,
		descReplies, descDrops, descIOErrors, descFlowEntries, descFlowQuota, descFlowCapacity,
		descFlowEvents, descBackendNewFlows, descBackendState, descSelfCheckFailures, descAnnounceErrors, descAnnounced} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads Stats, so the packet
// path never calls Prometheus. Register the Mux itself:
// registry.MustRegister(m).
func (m *Mux) Collect(ch chan<- prometheus.Metric) {
	st := m.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for vip, v := range st.VIPs {
		a := vip.String()
		counter(descVIPPackets, v.Packets, a, v.Tenant)
		counter(descVIPBytes, v.Bytes, a, v.Tenant)
		counter(descVIPNewFlows, v.NewFlows, a, v.Tenant)
	}
	counter(descForwarded, st.Forwarded)
	counter(descReplies, st.Replies)
	for r := DropReason(1); int(r) < NumDropReasons; r++ {
		counter(descDrops, st.Drops[r], r.String())
	}
	counter(descIOErrors, st.RxErrors, "rx")
	counter(descIOErrors, st.TxErrors, "tx")
	counter(descSelfCheckFailures, st.SelfCheckFailures)
	counter(descAnnounceErrors, st.AnnounceErrors)
	gauge(descAnnounced, len(m.Announced()))
	f := st.Flows
	gauge(descFlowEntries, f.Trusted, "trusted")
	gauge(descFlowEntries, f.Untrusted, "untrusted")
	gauge(descFlowQuota, f.MaxTrusted, "trusted")
	gauge(descFlowQuota, f.MaxUntrusted, "untrusted")
	gauge(descFlowCapacity, f.Capacity)
	for _, e := range []struct {
		name string
		v    uint64
	}{{"insert", f.Inserts}, {"eviction", f.Evictions}, {"expiration", f.Expirations},
		{"fallback", f.Fallbacks}, {"promotion", f.Promotions}, {"promotion_refused", f.PromotionsRefused},
		{"move", f.Moves}} {
		counter(descFlowEvents, e.v, e.name)
	}
	for _, b := range st.Backends {
		ep := b.Endpoint.Protocol.String() + "/" + strconv.Itoa(int(b.Endpoint.Port))
		vip := b.Endpoint.VIP.String()
		counter(descBackendNewFlows, b.NewFlows, vip, ep, b.DIP.String())
		gauge(descBackendState, int(b.State), vip, ep, b.DIP.String())
	}
}
