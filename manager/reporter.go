package manager

import (
	"context"
	"sync"

	"github.com/ananta-go/ananta/api"
)

// reporter batches the agents' applied versions and connection changes
// that reach this replica into one Agents command per shard: while a
// command is in flight, new reports of the same agent replace older ones,
// so the number of proposals stays small however many agents report.
// Reports are proposed with priority over SNAT batches (they are part of
// configuration distribution).
type reporter struct {
	m    *Manager
	wake chan struct{}

	// mu guards pending and last.
	mu sync.Mutex
	// pending holds, per shard and agent, the updates not proposed yet in
	// arrival order. An applied-only report is merged into the agent's
	// last pending connect or applied-only update; connections and
	// disconnections (of possibly different streams) are kept in order.
	pending map[uint64]map[string][]*api.AgentUpdate
	// last is the latest applied version per agent and shard reported to
	// this replica, used when a stream ends.
	last map[string]map[uint64]uint64
}

func newReporter(m *Manager) *reporter {
	return &reporter{
		m:       m,
		wake:    make(chan struct{}, 1),
		pending: make(map[uint64]map[string][]*api.AgentUpdate),
		last:    make(map[string]map[uint64]uint64),
	}
}

// add queues one update per shard. versions holds the agent's applied
// version per shard (missing: 0).
func (r *reporter) add(u *api.AgentUpdate, versions map[uint64]uint64) {
	r.mu.Lock()
	if u.AppliedOnly || u.Connected {
		l := r.last[u.Id]
		if l == nil {
			l = make(map[uint64]uint64)
			r.last[u.Id] = l
		}
		for s, v := range versions {
			l[s] = v
		}
	}
	for _, s := range r.m.shards {
		p := r.pending[s]
		if p == nil {
			p = make(map[string][]*api.AgentUpdate)
			r.pending[s] = p
		}
		x := &api.AgentUpdate{
			Id: u.Id, Kind: u.Kind, Address: u.Address, Applied: versions[s],
			Connected: u.Connected, Session: u.Session, AppliedOnly: u.AppliedOnly,
		}
		list := p[u.Id]
		if n := len(list); n > 0 && x.AppliedOnly && (list[n-1].AppliedOnly || list[n-1].Connected) {
			last := list[n-1]
			last.Applied, last.Kind, last.Address = x.Applied, x.Kind, x.Address
			continue
		}
		p[u.Id] = append(list, x)
	}
	if !u.Connected && !u.AppliedOnly {
		delete(r.last, u.Id)
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *reporter) lastVersions(id string) map[uint64]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[uint64]uint64)
	for s, v := range r.last[id] {
		out[s] = v
	}
	return out
}

// run proposes the pending updates, one command per shard at a time,
// until the Manager closes.
func (r *reporter) run() {
	var wg sync.WaitGroup
	defer wg.Wait()
	busy := make(map[uint64]bool)
	done := make(chan uint64, len(r.m.shards))
	for {
		select {
		case <-r.m.ctx.Done():
			return
		case <-r.wake:
		case s := <-done:
			busy[s] = false
		}
		r.mu.Lock()
		for s, p := range r.pending {
			if busy[s] || len(p) == 0 {
				continue
			}
			cmd := &api.AgentsCommand{}
			for _, list := range p {
				cmd.Updates = append(cmd.Updates, list...)
			}
			r.pending[s] = make(map[string][]*api.AgentUpdate)
			busy[s] = true
			wg.Add(1)
			go func(s uint64) {
				defer wg.Done()
				release := r.m.snat.hold(s)
				ctx, cancel := context.WithTimeout(r.m.ctx, r.m.cfg.AgentTimeout)
				_, err := r.m.propose(ctx, s, &api.Command{Op: &api.Command_Agents{Agents: cmd}})
				cancel()
				release()
				if err != nil && r.m.ctx.Err() == nil {
					r.m.log.Warn("manager: recording agent reports failed", "shard", s, "agents", len(cmd.Updates), "err", err)
				}
				done <- s
			}(s)
		}
		r.mu.Unlock()
	}
}
