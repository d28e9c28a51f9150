package hostagent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

const metricPrefix = "ananta_hostagent_"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(metricPrefix+name, help, labels, nil)
}

var (
	descPackets       = desc("packets_total", "Packets processed, by direction (inbound: from the uplink; outbound: from the VMs) and verdict.", "direction", "verdict")
	descDrops         = desc("drops_total", "Packets dropped, by reason.", "reason")
	descFlows         = desc("flows", "Connections tracked now.")
	descFlowsCreated  = desc("flows_created_total", "Connections created.")
	descFlowsExpired  = desc("flows_expired_total", "Connections removed (idle, closed, VIP or ports gone).")
	descIdleResets    = desc("idle_resets_total", "TCP RSTs sent to connections that idled out.")
	descICMP          = desc("icmp_errors_translated_total", "ICMP errors translated for tracked connections.")
	descHeld          = desc("snat_held_packets", "Packets waiting for SNAT ports now.")
	descHeldReleased  = desc("snat_held_released_total", "Held packets sent once ports arrived.")
	descPools         = desc("snat_pools", "SNAT pools (VIP, DIP) now.")
	descPorts         = desc("snat_ports", "Ports in the SNAT pools now.")
	descPortsInUse    = desc("snat_ports_in_use", "SNAT ports with flows or UDP mappings now.")
	descSNATFlows     = desc("snat_flows", "SNAT flows now.")
	descRequests      = desc("snat_requests_total", "SNAT port requests to the allocator.")
	descRequestErrors = desc("snat_request_errors_total", "Failed SNAT port requests.")
	descGranted       = desc("snat_ports_granted_total", "SNAT ports granted by the allocator.")
	descFreed         = desc("snat_ranges_freed_total", "SNAT port ranges given back.")
	descRenewals      = desc("snat_lease_renewals_total", "SNAT leases renewed (per range).")
	descLost          = desc("snat_leases_lost_total", "SNAT leases the allocator did not renew.")
	descHealthChanges = desc("health_changes_total", "Backend health transitions seen by the probes.")
	descTxErrors      = desc("tx_errors_total", "Packets a port refused to send.")
	descBackendUp     = desc("backend_healthy", "1 if the probed backend service is healthy, else 0.", "dip", "port", "probe")
)

var verdictNames = [numVerdicts]string{"drop", "to_vm", "to_uplink", "held", "pass"}

// Describe implements prometheus.Collector.
func (a *HostAgent) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descPackets, descDrops, descFlows, descFlowsCreated, descFlowsExpired, descIdleResets,
		descICMP, descHeld, descHeldReleased, descPools, descPorts, descPortsInUse, descSNATFlows,
		descRequests, descRequestErrors, descGranted, descFreed, descRenewals, descLost,
		descHealthChanges, descTxErrors, descBackendUp,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads Stats once per scrape.
// The data path itself only updates atomic counters.
func (a *HostAgent) Collect(ch chan<- prometheus.Metric) {
	s := a.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for dir, vc := range map[string]VerdictCounts{"inbound": s.Inbound, "outbound": s.Outbound} {
		for i, v := range []uint64{vc.Drop, vc.ToVM, vc.ToUplink, vc.Held, vc.Pass} {
			counter(descPackets, v, dir, verdictNames[i])
		}
	}
	for r := DropReason(1); r < numDropReasons; r++ {
		counter(descDrops, s.Drops[r], r.String())
	}
	gauge(descFlows, s.Flows)
	counter(descFlowsCreated, s.FlowsCreated)
	counter(descFlowsExpired, s.FlowsExpired)
	counter(descIdleResets, s.IdleResets)
	counter(descICMP, s.ICMPErrors)
	gauge(descHeld, s.Held)
	counter(descHeldReleased, s.HeldReleased)
	gauge(descPools, s.SNATPools)
	gauge(descPorts, s.SNATPorts)
	gauge(descPortsInUse, s.SNATPortsInUse)
	gauge(descSNATFlows, s.SNATFlowsActive)
	counter(descRequests, s.SNATRequests)
	counter(descRequestErrors, s.SNATRequestErrors)
	counter(descGranted, s.SNATPortsGranted)
	counter(descFreed, s.SNATRangesFreed)
	counter(descRenewals, s.SNATLeaseRenewals)
	counter(descLost, s.SNATLeasesLost)
	counter(descHealthChanges, s.HealthChanges)
	counter(descTxErrors, s.TxErrors)
	for _, h := range a.Health() {
		v := 0
		if h.Healthy {
			v = 1
		}
		gauge(descBackendUp, v, h.DIP.String(), strconv.Itoa(int(h.Port)), h.Kind.String())
	}
}

var _ prometheus.Collector = (*HostAgent)(nil)
