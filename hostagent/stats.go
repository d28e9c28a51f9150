package hostagent

import (
	"sync/atomic"
)

// NumDropReasons is the number of DropReason values (the length of
// Stats.Drops).
const NumDropReasons = int(numDropReasons)

const numVerdicts = int(Pass) + 1

// counters are the engine's atomic counters. The per-packet ones sit on
// their own cache lines so that the uplink and VM workers do not share one.
type counters struct {
	in    [numVerdicts]atomic.Uint64
	_     [64]byte
	out   [numVerdicts]atomic.Uint64
	_     [64]byte
	drops [numDropReasons]atomic.Uint64

	flowsCreated, flowsExpired atomic.Uint64
	resets, icmp, released     atomic.Uint64
}

// VerdictCounts counts packets by verdict.
type VerdictCounts struct {
	Drop, ToVM, ToUplink, Held, Pass uint64
}

func loadVerdicts(a *[numVerdicts]atomic.Uint64) VerdictCounts {
	return VerdictCounts{
		Drop: a[Drop].Load(), ToVM: a[ToVM].Load(), ToUplink: a[ToUplink].Load(),
		Held: a[Held].Load(), Pass: a[Pass].Load(),
	}
}

// Total returns the number of packets counted.
func (v VerdictCounts) Total() uint64 { return v.Drop + v.ToVM + v.ToUplink + v.Held + v.Pass }

// Stats are the counters of an Engine and, when returned by
// HostAgent.Stats, of the agent around it. Counters only grow; fields
// marked "now" are gauges.
type Stats struct {
	// Inbound counts the packets of the uplink by verdict.
	Inbound VerdictCounts
	// Outbound counts the packets of the VMs by verdict (a held packet
	// counts as Held; when it is sent later it counts in HeldReleased,
	// when dropped in Drops).
	Outbound VerdictCounts
	// Drops counts dropped packets by DropReason.
	Drops [NumDropReasons]uint64

	Flows        int    // tracked flows (now)
	FlowsCreated uint64 // flows created
	FlowsExpired uint64 // flows removed: idle, closed, or their VIP or ports gone
	IdleResets   uint64 // TCP RSTs sent to flows that idled out (two per flow)
	ICMPErrors   uint64 // ICMP errors translated for tracked flows
	Held         int    // packets waiting for SNAT ports (now)
	HeldReleased uint64 // held packets sent once ports arrived

	SNATPools       int // SNAT pools (now)
	SNATPorts       int // ports in SNAT pools (now)
	SNATPortsInUse  int // ports with flows or UDP mappings (now)
	SNATFlowsActive int // SNAT flows counted by the pools (now)

	// Agent counters (zero from Engine.Stats).
	SNATRequests      uint64 // port requests to the PortAllocator
	SNATRequestErrors uint64 // failed port requests
	SNATPortsGranted  uint64 // ports received from the PortAllocator
	SNATRangesFreed   uint64 // ranges given back (idle, or pool removed)
	SNATLeaseRenewals uint64 // successful lease renewals (per range)
	SNATLeasesLost    uint64 // ranges the PortAllocator no longer renewed
	HealthChanges     uint64 // backend health transitions seen by the probes
	TxErrors          uint64 // packets a port refused to send
}

// Stats implements DataPath.
func (e *Engine) Stats() Stats {
	s := Stats{
		Inbound:      loadVerdicts(&e.c.in),
		Outbound:     loadVerdicts(&e.c.out),
		Flows:        int(e.flows.count.Load()),
		FlowsCreated: e.c.flowsCreated.Load(),
		FlowsExpired: e.c.flowsExpired.Load(),
		IdleResets:   e.c.resets.Load(),
		ICMPErrors:   e.c.icmp.Load(),
		Held:         int(e.held.Load()),
		HeldReleased: e.c.released.Load(),
	}
	for i := range s.Drops {
		s.Drops[i] = e.c.drops[i].Load()
	}
	for _, p := range e.poolList() {
		p.mu.Lock()
		s.SNATPools++
		s.SNATPorts += p.pool.Size()
		s.SNATPortsInUse += p.pool.Size() - p.pool.Free()
		s.SNATFlowsActive += p.pool.Flows()
		p.mu.Unlock()
	}
	return s
}
