// Package dragonboat is the default consensus.Node: each shard is a Raft
// group run by Dragonboat v4 (github.com/lni/dragonboat), with its log on
// disk and fsynced, its state machine in memory behind the
// consensus.StateMachine interface, and snapshots taken every
// Config.SnapshotEntries entries so that the log stays short and a
// restarted or lagging replica catches up from a snapshot.
//
// One Node is one replica process (one Dragonboat NodeHost); it serves every
// shard of Config.Shards with the same replica ID. Start one per replica
// with the same Members and Shards:
//
//	node, err := dragonboat.New(dragonboat.Config{
//		ReplicaID: 1,
//		Members:   map[uint64]string{1: "10.0.0.1:7100", 2: "10.0.0.2:7100", 3: "10.0.0.3:7100"},
//		Shards:    []uint64{1, 2, 3, 4},
//		DataDir:   "/var/lib/ananta/raft",
//	}, factory)
//
// Restarting a replica on the same DataDir recovers its state from disk
// (latest snapshot, then the log after it) and rejoins the shards.
//
// Behaviour beyond the consensus.Node contract:
//
//   - Propose works on any replica; Dragonboat forwards to the leader. A
//     proposal dropped before it entered the log (no leader yet, election
//     under way, Raft busy) is retried with backoff until the deadline; a
//     proposal that may have entered the log is never retried, since the
//     state machine would apply it twice, and ends in ErrTimeout instead.
//     So when a leader dies, proposals sent to it in flight time out, and
//     new ones go through once a new leader is elected (about one to two
//     election timeouts).
//   - Read uses Raft's ReadIndex and is retried in attempts of two election
//     timeouts until the deadline, because a read has no side effect.
//   - A context without deadline is bounded by Config.RequestTimeout.
//   - Leader placement: a shard's throughput is its leader's, so leaders
//     of different shards should sit on different replicas.
//     PreferredLeader names the replica for each shard (round robin),
//     SpreadLeaders moves leaderships there on demand, and
//     Config.SpreadLeaders keeps them there in the background.
//   - Membership is fixed to Config.Members: adding or replacing a replica
//     is not implemented.
//   - Dragonboat's logger is global to the process: the first New silences
//     it, unless the process installed its own Dragonboat logger factory
//     before.
//
// A panic in StateMachine.Apply, or an error from Save or Restore, stops
// the process: Dragonboat treats them as the replica's crash.
package dragonboat

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	dbv4 "github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/client"
	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/internal/watch"
)

var (
	// ErrSnapshotUpToDate: RequestSnapshot found a snapshot at the current
	// log index already.
	ErrSnapshotUpToDate = errors.New("dragonboat: snapshot already up to date")
	// ErrTransferFailed: SpreadLeaders could not move the leadership of
	// some shards to their preferred replicas.
	ErrTransferFailed = errors.New("dragonboat: leadership transfer failed")
)

// Node is one replica of every configured shard, a consensus.Node.
type Node struct {
	cfg      Config // with defaults
	nh       *dbv4.NodeHost
	hub      *watch.Hub
	shards   []uint64 // sorted
	members  []uint64 // sorted
	sessions map[uint64]*client.Session
	rtt      time.Duration

	closed atomic.Bool
	once   sync.Once
	stop   chan struct{} // closed by Close: background work ends
	wg     sync.WaitGroup
}

var _ consensus.Node = (*Node)(nil)

// listener receives Dragonboat's leader updates for every local replica.
type listener struct {
	hub     *watch.Hub
	replica uint64
}

func (l *listener) LeaderUpdated(info raftio.LeaderInfo) {
	l.hub.Publish(consensus.LeaderEvent{
		Shard:  info.ShardID,
		Leader: info.LeaderID,
		Term:   info.Term,
		Local:  info.LeaderID != 0 && info.LeaderID == l.replica,
	})
}

// New validates cfg, starts the replica and its shards, and returns without
// waiting for elections: proposals wait (up to their deadline) until the
// shards have a leader, which needs a majority of Members running. The
// first start in an empty DataDir bootstraps the shards with Members; a
// start on an existing DataDir recovers from it.
func New(cfg Config, factory consensus.Factory) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if factory == nil {
		return nil, fmt.Errorf("%w: nil factory", ErrInvalidConfig)
	}
	cfg = cfg.withDefaults()
	quietLogging()
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("dragonboat: DataDir: %w", err)
	}
	n := &Node{
		cfg:      cfg,
		shards:   slices.Sorted(slices.Values(cfg.Shards)),
		sessions: make(map[uint64]*client.Session, len(cfg.Shards)),
		rtt:      time.Duration(cfg.RTTMillisecond) * time.Millisecond,
		stop:     make(chan struct{}),
	}
	for id := range cfg.Members {
		n.members = append(n.members, id)
	}
	slices.Sort(n.members)
	n.hub = watch.New(n.shards)

	nhc := config.NodeHostConfig{
		NodeHostDir:       cfg.DataDir,
		WALDir:            filepath.Join(cfg.DataDir, "wal"),
		RTTMillisecond:    cfg.RTTMillisecond,
		RaftAddress:       cfg.Members[cfg.ReplicaID],
		ListenAddress:     cfg.ListenAddress,
		RaftEventListener: &listener{hub: n.hub, replica: cfg.ReplicaID},
	}
	if cfg.Lightweight {
		nhc.Expert.Engine = config.EngineConfig{ExecShards: 1, CommitShards: 1, ApplyShards: 1, SnapshotShards: 1, CloseShards: 1}
		nhc.Expert.LogDB = config.GetTinyMemLogDBConfig()
		nhc.Expert.LogDB.Shards = 1 // one Pebble instance to open and fsync, not 16
	}
	nh, err := dbv4.NewNodeHost(nhc)
	if err != nil {
		n.hub.Close()
		return nil, fmt.Errorf("dragonboat: start node host: %w", err)
	}
	n.nh = nh
	members := make(map[uint64]dbv4.Target, len(cfg.Members))
	for id, addr := range cfg.Members {
		members[id] = addr
	}
	for _, shard := range n.shards {
		rc := config.Config{
			ShardID:            shard,
			ReplicaID:          cfg.ReplicaID,
			ElectionRTT:        cfg.ElectionRTT,
			HeartbeatRTT:       cfg.HeartbeatRTT,
			CheckQuorum:        true, // a leader cut off from the majority steps down
			PreVote:            true, // a replica coming back does not disrupt the leader
			SnapshotEntries:    cfg.SnapshotEntries,
			CompactionOverhead: cfg.CompactionOverhead,
		}
		initial := members
		if nh.HasNodeInfo(shard, cfg.ReplicaID) {
			initial = nil // restart: the membership on disk wins
		}
		create := func(shardID, _ uint64) sm.IStateMachine {
			m := factory(shardID)
			if m == nil {
				panic(fmt.Sprintf("dragonboat: the consensus.Factory returned nil for shard %d", shardID))
			}
			return &adapter{shard: shardID, sm: m}
		}
		if err := nh.StartReplica(initial, false, create, rc); err != nil {
			nh.Close()
			n.hub.Close()
			return nil, fmt.Errorf("dragonboat: start shard %d: %w", shard, err)
		}
		n.sessions[shard] = nh.GetNoOPSession(shard)
	}
	if cfg.SpreadLeaders {
		n.wg.Add(1)
		go n.keepLeadersSpread()
	}
	return n, nil
}

// ID implements consensus.Node.
func (n *Node) ID() uint64 { return n.cfg.ReplicaID }

// Shards implements consensus.Node.
func (n *Node) Shards() []uint64 { return slices.Clone(n.shards) }

// electionTimeout is the configured election timeout.
func (n *Node) electionTimeout() time.Duration {
	return time.Duration(n.cfg.ElectionRTT) * n.rtt
}

// begin makes the checks every call makes and returns ctx bounded by
// RequestTimeout when it has no deadline.
func (n *Node) begin(ctx context.Context, shard uint64) (context.Context, context.CancelFunc, error) {
	if n.closed.Load() {
		return nil, nil, consensus.ErrClosed
	}
	if _, ok := n.sessions[shard]; !ok {
		return nil, nil, fmt.Errorf("dragonboat: shard %d: %w", shard, consensus.ErrUnknownShard)
	}
	if err := ctxErr(ctx); err != nil {
		return nil, nil, err
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	return ctx, cancel, nil
}

// ctxErr maps a done context to the errors consensus.Node documents.
func ctxErr(ctx context.Context) error {
	switch err := ctx.Err(); {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("dragonboat: %w: %w", consensus.ErrTimeout, err)
	default:
		return fmt.Errorf("dragonboat: %w", err)
	}
}

// timeoutFor is the Dragonboat timeout of one attempt: what is left of
// ctx plus two ticks, so that ctx ends first and the caller sees its
// deadline (Dragonboat counts timeouts in whole ticks), capped at limit
// if limit > 0.
func (n *Node) timeoutFor(ctx context.Context, limit time.Duration) time.Duration {
	d, _ := ctx.Deadline()
	left := time.Until(d) + 2*n.rtt
	if limit > 0 && left > limit {
		left = limit
	}
	return left
}

// retryable tells whether a request Dragonboat refused never entered the
// log, so that sending it again cannot apply it twice.
func retryable(err error) bool {
	return errors.Is(err, dbv4.ErrShardNotReady) || errors.Is(err, dbv4.ErrSystemBusy)
}

// mapErr turns Dragonboat's errors into the consensus ones where they
// mean the same.
func (n *Node) mapErr(ctx context.Context, op string, shard uint64, err error) error {
	switch {
	case errors.Is(err, dbv4.ErrClosed), errors.Is(err, dbv4.ErrShardClosed):
		return fmt.Errorf("dragonboat: %s shard %d: %w", op, shard, consensus.ErrClosed)
	case errors.Is(err, dbv4.ErrShardNotFound):
		return fmt.Errorf("dragonboat: %s shard %d: %w", op, shard, consensus.ErrUnknownShard)
	case errors.Is(err, dbv4.ErrTimeout), errors.Is(err, dbv4.ErrCanceled):
		if cerr := ctxErr(ctx); cerr != nil {
			return cerr
		}
		return fmt.Errorf("dragonboat: %s shard %d: %w", op, shard, consensus.ErrTimeout)
	}
	return fmt.Errorf("dragonboat: %s shard %d: %w", op, shard, err)
}

// backoff sleeps before a retry: 1 ms doubling to one tick. It returns
// ctx's error if ctx ends first, or ErrClosed if the Node closes.
func (n *Node) backoff(ctx context.Context, d *time.Duration) error {
	t := time.NewTimer(*d)
	defer t.Stop()
	*d = min(2**d, n.rtt)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctxErr(ctx)
	case <-n.stop:
		return consensus.ErrClosed
	}
}

// Propose implements consensus.Node. See the package documentation for
// what is retried.
func (n *Node) Propose(ctx context.Context, shard uint64, cmd []byte) ([]byte, error) {
	ctx, cancel, err := n.begin(ctx, shard)
	if err != nil {
		return nil, err
	}
	defer cancel()
	wait := time.Millisecond
	for {
		rs, err := n.nh.Propose(n.sessions[shard], cmd, n.timeoutFor(ctx, 0))
		if err == nil {
			select {
			case r := <-rs.ResultC():
				switch {
				case r.Completed():
					rs.Release()
					return decodeResult(shard, r.GetResult())
				case r.Dropped():
					err = dbv4.ErrShardNotReady // never entered the log
				case r.Timeout():
					err = dbv4.ErrTimeout
				case r.Terminated():
					err = dbv4.ErrShardClosed
				case r.Rejected():
					err = dbv4.ErrRejected
				default:
					err = dbv4.ErrAborted
				}
			case <-ctx.Done():
				return nil, ctxErr(ctx)
			}
		}
		if !retryable(err) {
			return nil, n.mapErr(ctx, "propose", shard, err)
		}
		if err := n.backoff(ctx, &wait); err != nil {
			return nil, err
		}
	}
}

// Read implements consensus.Node. See the package documentation for what
// is retried.
func (n *Node) Read(ctx context.Context, shard uint64, q []byte) ([]byte, error) {
	ctx, cancel, err := n.begin(ctx, shard)
	if err != nil {
		return nil, err
	}
	defer cancel()
	wait := time.Millisecond
	for {
		rs, err := n.nh.ReadIndex(shard, n.timeoutFor(ctx, 2*n.electionTimeout()))
		if err == nil {
			select {
			case r := <-rs.ResultC():
				switch {
				case r.Completed():
					v, err := n.nh.ReadLocalNode(rs, q)
					rs.Release()
					res, err := decodeQuery(shard, v, err)
					if err != nil && !errors.Is(err, consensus.ErrRejected) {
						err = n.mapErr(ctx, "read", shard, err)
					}
					return res, err
				case r.Dropped(), r.Timeout():
					err = dbv4.ErrShardNotReady // a read can always be tried again
				case r.Terminated():
					err = dbv4.ErrShardClosed
				default:
					err = dbv4.ErrAborted
				}
			case <-ctx.Done():
				return nil, ctxErr(ctx)
			}
		}
		if !retryable(err) {
			return nil, n.mapErr(ctx, "read", shard, err)
		}
		if err := n.backoff(ctx, &wait); err != nil {
			return nil, err
		}
	}
}

// Leader implements consensus.Node. It reports the last leader Dragonboat
// announced for shard on this replica, as Watch does.
func (n *Node) Leader(shard uint64) (uint64, bool) {
	if n.closed.Load() {
		return 0, false
	}
	ev, ok := n.hub.Current(shard)
	return ev.Leader, ok && ev.Leader != 0
}

// Watch implements consensus.Node.
func (n *Node) Watch(ctx context.Context) <-chan consensus.LeaderEvent {
	return n.hub.Watch(ctx)
}

// PreferredLeader returns the replica SpreadLeaders places the leadership
// of shard on: with shards sorted and Members' IDs sorted, the i-th shard
// goes to the (i mod len(Members))-th replica. ok is false for an unknown
// shard.
func (n *Node) PreferredLeader(shard uint64) (replica uint64, ok bool) {
	i, found := slices.BinarySearch(n.shards, shard)
	if !found {
		return 0, false
	}
	return n.members[i%len(n.members)], true
}

// SpreadLeaders asks, for every shard this replica leads whose preferred
// leader (PreferredLeader) is another replica, for the leadership to move
// there, and waits until every move happened. Shards led by other
// replicas are theirs to move: call it on every replica. Proposals to a
// shard pause (they are retried, not failed) while its leadership moves,
// up to one election timeout. Raft moves leadership only to a replica that
// is up to date; a move that did not happen within two election timeouts
// is asked for again, three times at most, and then the leadership stays
// here.
//
// Errors: ErrTransferFailed naming the shards that stayed; ErrClosed;
// ErrTimeout or cancellation when ctx ended first.
func (n *Node) SpreadLeaders(ctx context.Context) error {
	if n.closed.Load() {
		return consensus.ErrClosed
	}
	const attempts = 3
	tries := make(map[uint64]int)
	last := make(map[uint64]time.Time)
	t := time.NewTicker(n.rtt)
	defer t.Stop()
	for {
		var pending, failed []uint64
		for _, shard := range n.shards {
			want, _ := n.PreferredLeader(shard)
			l, ok := n.Leader(shard)
			switch {
			case ok && l == want:
				continue // in place
			case !ok && tries[shard] > 0:
				pending = append(pending, shard) // moving: no leader known yet
				continue
			case !ok || l != n.cfg.ReplicaID:
				continue // not ours to move
			}
			if time.Since(last[shard]) < 2*n.electionTimeout() {
				pending = append(pending, shard) // a move is under way
				continue
			}
			if tries[shard] == attempts {
				failed = append(failed, shard)
				continue
			}
			if err := n.nh.RequestLeaderTransfer(shard, want); err != nil {
				return n.mapErr(ctx, "transfer leader", shard, err)
			}
			tries[shard]++
			last[shard] = time.Now()
			pending = append(pending, shard)
		}
		if len(pending) == 0 {
			if len(failed) > 0 {
				return fmt.Errorf("%w: shards %v", ErrTransferFailed, failed)
			}
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctxErr(ctx)
		case <-n.stop:
			return consensus.ErrClosed
		}
	}
}

// keepLeadersSpread runs while the Node is open when Config.SpreadLeaders
// is set: every election timeout it looks for shards this replica leads
// whose preferred leader is another replica and asks for a transfer. A
// transfer that did not happen (the preferred replica is down or behind)
// is asked for again after a backoff that starts at two election
// timeouts and doubles up to 64, so that a replica that is down costs a
// pause of proposals (up to one election timeout) only rarely, and one
// that comes back gets its leaderships back.
func (n *Node) keepLeadersSpread() {
	defer n.wg.Done()
	et := n.electionTimeout()
	backoff := make(map[uint64]time.Duration)
	next := make(map[uint64]time.Time)
	t := time.NewTicker(et)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-n.stop:
			return
		}
		now := time.Now()
		for _, shard := range n.shards {
			want, _ := n.PreferredLeader(shard)
			l, ok := n.Leader(shard)
			switch {
			case !ok:
			case l == want:
				delete(backoff, shard)
				delete(next, shard)
			case l == n.cfg.ReplicaID && now.After(next[shard]):
				if n.nh.RequestLeaderTransfer(shard, want) != nil {
					return // closed
				}
				backoff[shard] = min(max(2*backoff[shard], 2*et), 64*et)
				next[shard] = now.Add(backoff[shard])
			}
		}
	}
}

// RequestSnapshot makes this replica snapshot shard now (besides the
// automatic snapshots every Config.SnapshotEntries entries) and compacts the
// log behind it; it returns the log index the snapshot covers.
//
// Errors: ErrSnapshotUpToDate when a snapshot at the current index
// exists; ErrUnknownShard, ErrClosed, ErrTimeout.
func (n *Node) RequestSnapshot(ctx context.Context, shard uint64) (uint64, error) {
	ctx, cancel, err := n.begin(ctx, shard)
	if err != nil {
		return 0, err
	}
	defer cancel()
	idx, err := n.nh.SyncRequestSnapshot(ctx, shard, dbv4.SnapshotOption{})
	if errors.Is(err, dbv4.ErrRejected) {
		return 0, fmt.Errorf("dragonboat: shard %d: %w", shard, ErrSnapshotUpToDate)
	}
	if err != nil {
		return 0, n.mapErr(ctx, "snapshot", shard, err)
	}
	return idx, nil
}

// Close implements consensus.Node: it stops every shard's replica and the
// NodeHost (transport, log database), and releases DataDir for a restart.
func (n *Node) Close() error {
	n.once.Do(func() {
		n.closed.Store(true)
		close(n.stop)
		n.wg.Wait()
		n.nh.Close()
		n.hub.Close()
	})
	return nil
}
