package manager

import (
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
)

// Local, possibly stale reads of a replica's applied state: Watch streams
// and waits for agents use them. They hold the state machine's read lock
// only while they copy pointers to immutable messages.

// Watch message size targets.
const (
	maxChangesPerMessage  = 1024
	snapshotPartBytes     = 1 << 20
	snapshotRangesPerPart = 8192
)

// version returns the shard's current version.
func (sm *stateMachine) version() uint64 {
	sm.mu.RLock()
	defer sm.mu.RUnlock()
	return sm.rev
}

// watchStep returns the next messages for a stream of this shard that has
// sent up to version *sent (synced false: nothing sent yet) and advances
// *sent. It returns nothing when the stream is up to date, or when this
// replica is behind the stream's version (it will catch up).
func (sm *stateMachine) watchStep(sent *uint64, synced *bool) []*api.WatchResponse {
	sm.mu.RLock()
	defer sm.mu.RUnlock()
	if *synced && *sent >= sm.rev {
		return nil
	}
	if !*synced || *sent < sm.log.base {
		msgs := sm.snapshotMessages()
		*sent, *synced = sm.rev, true
		return msgs
	}
	var out []*api.WatchResponse
	for *sent < sm.rev {
		i := int(*sent - sm.log.base)
		n := min(len(sm.log.entries)-i, maxChangesPerMessage)
		out = append(out, &api.WatchResponse{Shard: sm.cfg.shard, Changes: slices.Clone(sm.log.entries[i : i+n])})
		*sent += uint64(n)
	}
	return out
}

// snapshotMessages returns the shard's full state for agents, in parts.
// Called with mu held.
func (sm *stateMachine) snapshotMessages() []*api.WatchResponse {
	var out []*api.WatchResponse
	cur := &api.Snapshot{Version: sm.rev, First: true}
	size := 0
	flush := func() {
		out = append(out, &api.WatchResponse{Shard: sm.cfg.shard, Snapshot: cur})
		cur = &api.Snapshot{Version: sm.rev}
		size = 0
	}
	for _, a := range slices.SortedFunc(mapsKeys(sm.vips), netip.Addr.Compare) {
		e := sm.vips[a]
		v := sm.effectiveVIP(e)
		n := proto.Size(v)
		if size > 0 && size+n > snapshotPartBytes {
			flush()
		}
		cur.Vips = append(cur.Vips, v)
		size += n
		if e.cfg.SNAT.Enabled {
			for _, l := range sm.leases.VIPLeases(a) {
				if len(cur.Snat) >= snapshotRangesPerPart {
					flush()
				}
				cur.Snat = append(cur.Snat, snatRangeOf(l))
				size += 48
			}
		}
	}
	cur.Last = true
	flush()
	return out
}

// agentLag returns the connected agents of the shard (reported within
// timeout of now) and those among them that have not applied version.
func (sm *stateMachine) agentLag(version uint64, now, timeout int64) (connected int, lagging []*api.AgentLag) {
	sm.mu.RLock()
	defer sm.mu.RUnlock()
	for _, id := range slices.Sorted(mapsKeys(sm.agents)) {
		a := sm.agents[id]
		if !a.connected || a.lastSeen+timeout < now {
			continue
		}
		connected++
		if a.applied < version {
			lagging = append(lagging, &api.AgentLag{AgentId: id, Kind: a.kind, Applied: a.applied})
		}
	}
	return connected, lagging
}

// snatInfo reports whether vip exists in the local state and has SNAT.
func (sm *stateMachine) snatInfo(vip netip.Addr) (exists, enabled bool) {
	sm.mu.RLock()
	defer sm.mu.RUnlock()
	e := sm.vips[vip]
	if e == nil {
		return false, false
	}
	return true, e.cfg.SNAT.Enabled
}
