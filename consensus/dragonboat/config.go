package dragonboat

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"time"
)

// ErrInvalidConfig: Config.Validate refused the configuration; the message
// names the field.
var ErrInvalidConfig = errors.New("dragonboat: invalid config")

// Defaults of the zero fields of Config.
const (
	DefaultRTTMillisecond     = 100
	DefaultElectionRTT        = 10
	DefaultHeartbeatRTT       = 1
	DefaultSnapshotEntries    = 10_000
	DefaultCompactionOverhead = 5_000
	DefaultRequestTimeout     = 10 * time.Second
)

// Config configures one replica (one Dragonboat NodeHost) of a set of
// shards. Pass it by value to New; the zero value of each optional field
// means its default.
type Config struct {
	// ReplicaID is this replica's ID, the same in every shard; > 0.
	// Required.
	ReplicaID uint64

	// Members maps the replica ID of every initial member of the shards,
	// this one included, to its Raft address (host:port, which that
	// replica's transport listens on unless ListenAddress says
	// otherwise). Every replica must be given the same map. Required.
	//
	// It bootstraps the shards on the first start in an empty DataDir and
	// decides leader placement (SpreadLeaders). On a restart from an
	// existing DataDir the membership recorded in the log wins and the
	// replica recovers its state from disk; its own address must not have
	// changed.
	Members map[uint64]string

	// Shards are the shards this replica serves; at least one, no
	// duplicates. Required. Every replica must serve the same shards.
	Shards []uint64

	// DataDir holds the Raft log (DataDir/wal), snapshots and the replica's
	// identity (DataDir). It is created if missing; keep it to restart
	// the replica with its state. Two live replicas must never share one.
	// Required.
	DataDir string

	// ListenAddress is the local address the Raft transport binds;
	// "" means Members[ReplicaID].
	ListenAddress string

	// RTTMillisecond is the Raft tick in milliseconds, about the round
	// trip between replicas; 0 means DefaultRTTMillisecond (100). Heartbeat
	// and election intervals are multiples of it.
	RTTMillisecond uint64

	// ElectionRTT is the election timeout in ticks; 0 means
	// DefaultElectionRTT (10). It must be more than 2 × HeartbeatRTT. A
	// leader that dies is replaced after about ElectionRTT to 2 ×
	// ElectionRTT ticks.
	ElectionRTT uint64

	// HeartbeatRTT is the heartbeat interval in ticks; 0 means
	// DefaultHeartbeatRTT (1).
	HeartbeatRTT uint64

	// SnapshotEntries: each replica snapshots a shard's state machine
	// after this many applied entries, so that the log can be compacted
	// and a restarted or lagging replica catches up from a snapshot;
	// 0 means DefaultSnapshotEntries (10 000).
	SnapshotEntries uint64

	// CompactionOverhead is how many entries before the snapshot the log
	// keeps after a compaction, for followers that are only a little
	// behind; 0 means DefaultCompactionOverhead (5 000).
	CompactionOverhead uint64

	// RequestTimeout bounds a Propose or Read whose context has no
	// deadline; 0 means DefaultRequestTimeout (10 s).
	RequestTimeout time.Duration

	// SpreadLeaders keeps the leadership of each shard on its preferred
	// replica (see Node.PreferredLeader), so that shard leaders spread
	// over the replicas and throughput grows with shards: the replica
	// that leads a shard it should not hands the leadership over, and
	// tries again with a growing backoff when the preferred replica is
	// down or behind; once that replica is back, the leadership returns
	// to it. Each transfer pauses the shard's proposals for up to one
	// election timeout (they are retried, not failed). Off by default:
	// leadership then stays wherever elections put it.
	SpreadLeaders bool

	// Lightweight trades throughput for a small footprint, for tests and
	// many replicas in one process: one Dragonboat engine worker of each
	// kind instead of dozens, one log database shard instead of 16 (each
	// one a Pebble instance that opens with several fsyncs, which makes
	// starting slow on a busy disk), and the smallest in-memory buffers.
	// The log is still on disk and still fsynced. The default (false)
	// keeps Dragonboat's normal settings. Dragonboat records these sizes
	// in DataDir: a replica must restart with the Lightweight it was
	// first started with.
	Lightweight bool
}

// withDefaults returns c with the zero optional fields set.
func (c Config) withDefaults() Config {
	if c.RTTMillisecond == 0 {
		c.RTTMillisecond = DefaultRTTMillisecond
	}
	if c.ElectionRTT == 0 {
		c.ElectionRTT = DefaultElectionRTT
	}
	if c.HeartbeatRTT == 0 {
		c.HeartbeatRTT = DefaultHeartbeatRTT
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = DefaultSnapshotEntries
	}
	if c.CompactionOverhead == 0 {
		c.CompactionOverhead = DefaultCompactionOverhead
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ListenAddress == "" {
		c.ListenAddress = c.Members[c.ReplicaID]
	}
	return c
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
}

// Validate reports the first problem of c, naming the field, as an error
// wrapping ErrInvalidConfig. New calls it.
func (c Config) Validate() error {
	if c.ReplicaID == 0 {
		return invalid("ReplicaID must be > 0")
	}
	if len(c.Members) == 0 {
		return invalid("Members must list every initial replica")
	}
	if _, ok := c.Members[c.ReplicaID]; !ok {
		return invalid("Members must contain ReplicaID %d", c.ReplicaID)
	}
	seen := make(map[string]uint64, len(c.Members))
	for _, id := range slices.Sorted(maps.Keys(c.Members)) {
		addr := c.Members[id]
		if id == 0 {
			return invalid("Members: replica ID must be > 0")
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" || port == "0" {
			return invalid("Members[%d]: address %q is not host:port", id, addr)
		}
		if other, dup := seen[addr]; dup {
			return invalid("Members[%d]: address %q is also Members[%d]'s", id, addr, other)
		}
		seen[addr] = id
	}
	if len(c.Shards) == 0 {
		return invalid("Shards must list at least one shard")
	}
	shards := make(map[uint64]bool, len(c.Shards))
	for _, s := range c.Shards {
		if shards[s] {
			return invalid("Shards: shard %d listed twice", s)
		}
		shards[s] = true
	}
	if c.DataDir == "" {
		return invalid("DataDir is required")
	}
	if c.ListenAddress != "" {
		if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
			return invalid("ListenAddress %q is not host:port", c.ListenAddress)
		}
	}
	d := c.withDefaults()
	if d.ElectionRTT <= 2*d.HeartbeatRTT {
		return invalid("ElectionRTT (%d) must be > 2 × HeartbeatRTT (%d)", d.ElectionRTT, d.HeartbeatRTT)
	}
	if c.RequestTimeout < 0 {
		return invalid("RequestTimeout must be >= 0")
	}
	if d.RequestTimeout < time.Duration(d.RTTMillisecond)*time.Millisecond {
		return invalid("RequestTimeout (%s) must be at least one RTTMillisecond (%d ms)", d.RequestTimeout, d.RTTMillisecond)
	}
	return nil
}
