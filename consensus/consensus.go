package consensus

import (
	"context"
	"errors"
	"io"
	"strconv"
)

// Errors returned by every Node implementation. Implementations wrap them
// with %w; test with errors.Is.
var (
	// ErrClosed: the Node was closed before or during the call.
	ErrClosed = errors.New("consensus: node closed")
	// ErrTimeout: the call did not complete before its deadline (the
	// context's, or the implementation's default when the context has
	// none). For Propose the outcome is unknown: the command may still be
	// applied. When the context's deadline passed, the error also matches
	// context.DeadlineExceeded.
	ErrTimeout = errors.New("consensus: timeout")
	// ErrUnknownShard: the shard is not one of Node.Shards().
	ErrUnknownShard = errors.New("consensus: unknown shard")
	// ErrRejected: the state machine refused a command (Apply returned an
	// error) or a query (Query returned an error). The error is a
	// *RejectedError. A rejection is a result, delivered after the command
	// was committed and applied on every replica; it says nothing about the
	// health of the replication.
	ErrRejected = errors.New("consensus: rejected by the state machine")
)

// RejectedError is the error Propose and Read return when the state machine
// returned an error. It matches ErrRejected with errors.Is.
type RejectedError struct {
	// Shard is the shard whose state machine refused.
	Shard uint64
	// Msg is the text of the state machine's error.
	Msg string
	// Err is the state machine's own error value where it is available:
	// always for Read (Query runs in the caller's process), never for
	// Propose, whose result crosses the replication layer as bytes in a
	// replicated implementation; the in-memory one follows the same rule so
	// that code tested against it behaves the same in production. A state
	// machine whose callers must tell rejection reasons apart should encode
	// the reason in the text or return (result, nil) with a status in the
	// result.
	Err error
}

func (e *RejectedError) Error() string {
	return "consensus: shard " + strconv.FormatUint(e.Shard, 10) + ": rejected: " + e.Msg
}

// Is reports whether target is ErrRejected.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// Unwrap returns the state machine's own error, or nil.
func (e *RejectedError) Unwrap() error { return e.Err }

// StateMachine is the replicated state of one shard on one replica. The
// user supplies it through a Factory; the Node calls it. Every replica
// applies the same commands in the same order, so Apply must be
// deterministic: its only inputs are the state and the command (no clock,
// no randomness, no map iteration order leaking into results or state).
//
// Locking: the Node never calls Apply or Restore concurrently with any other
// method of the same instance. Query and Save may run concurrently with each
// other and with other Query calls, never with Apply or Restore. So a state
// machine whose Query and Save only read needs no lock of its own.
//
// If a StateMachine also implements io.Closer, Close is called once when the
// replica stops; it is not called if the process crashes, so the state must
// never depend on it.
type StateMachine interface {
	// Apply applies one committed command and returns its result.
	//
	// A nil error means the command took effect; the result (may be nil) is
	// returned by Propose to the proposer. A non-nil error rejects the
	// command: Propose returns a *RejectedError carrying the error's text,
	// the replica goes on and later commands are applied as usual. The
	// rejection must itself be deterministic, and Apply should leave the
	// state unchanged when it rejects: nothing rolls it back.
	//
	// A state machine that cannot go on (broken invariant, corrupt state)
	// must panic: a replicated implementation then stops the replica, as a
	// crash would, rather than let replicas diverge.
	//
	// Apply must not keep cmd after it returns. The returned slice belongs
	// to the caller of Propose.
	Apply(cmd []byte) ([]byte, error)

	// Query answers a read-only query. It must not change the state. An
	// error is returned to the caller of Read as a *RejectedError wrapping
	// it. Query must not keep q after it returns.
	Query(q []byte) ([]byte, error)

	// Save writes the complete state to w, read-only. Restore on a fresh
	// instance from the same Factory must rebuild exactly the same state
	// from those bytes. An error from Save stops a replicated replica.
	Save(w io.Writer) error

	// Restore replaces the whole state with the one Save wrote to r. It may
	// be called on a fresh instance or on one that already holds state
	// (a lagging replica catching up from a leader's snapshot): in both
	// cases nothing of the previous state may survive. An error stops a
	// replicated replica.
	Restore(r io.Reader) error
}

// Factory returns a new, empty StateMachine for one shard. A Node calls it
// once per shard when it starts, and again whenever a replica of the shard
// is restarted.
type Factory func(shard uint64) StateMachine

// LeaderEvent reports who leads a shard, as the local replica knows it.
type LeaderEvent struct {
	// Shard is the shard the event is about.
	Shard uint64
	// Leader is the replica ID of the leader, 0 while none is known (an
	// election is under way, or the replica is cut off).
	Leader uint64
	// Term is the Raft term of the leadership (1 for the in-memory node).
	Term uint64
	// Local is true when the leader is this Node (Leader == Node.ID()).
	Local bool
}

// Node is one replica of a set of shards: it owns one StateMachine per shard
// and replicates commands to the other replicas. Every method is safe for
// concurrent use. Replica IDs are > 0 and the same for every shard of a
// Node. A Node works from its constructor on and stops in Close; it has no
// Run method, because its work runs in the replication engine's own
// goroutines, not in a loop the caller drives.
type Node interface {
	// ID returns this replica's ID.
	ID() uint64

	// Shards returns the shards this Node serves, sorted. The slice is the
	// caller's. It keeps working after Close.
	Shards() []uint64

	// Propose replicates cmd in shard, waits until it is committed and
	// applied on this replica, and returns what the state machine's Apply
	// returned. It works on any replica: a follower hands the command to
	// the leader internally. The caller may reuse cmd once Propose returns.
	//
	// Errors: a *RejectedError (ErrRejected) when Apply rejected the
	// command: the command is committed, and other commands go on.
	// ErrUnknownShard, ErrClosed. ErrTimeout when the deadline passed
	// (outcome unknown). An error matching context.Canceled when ctx was
	// canceled (outcome unknown). If ctx is already done when Propose is
	// called, nothing is proposed. Implementations may return other
	// errors (wrapped) for failures of their own, with outcome unknown.
	Propose(ctx context.Context, shard uint64, cmd []byte) ([]byte, error)

	// Read runs the state machine's Query once every command committed
	// in shard before Read was called has been applied on this replica, so
	// it observes every write acknowledged to anyone (linearizable), on any
	// replica. Read never changes the state.
	//
	// Errors: a *RejectedError wrapping Query's error, ErrUnknownShard,
	// ErrClosed, ErrTimeout, an error matching context.Canceled.
	Read(ctx context.Context, shard uint64, q []byte) ([]byte, error)

	// Leader returns the leader of shard as this replica knows it; ok is
	// false when no leader is known, the shard is unknown or the Node is
	// closed. It does not block and does not talk to other replicas.
	Leader(shard uint64) (replica uint64, ok bool)

	// Watch returns a channel of leadership events. It first receives the
	// current state of every shard (one event per shard, Leader 0 where
	// none is known yet), then every change. Events of one shard arrive in
	// order; a receiver that falls behind loses intermediate events of a
	// shard but always receives its latest state, so it never ends up
	// with a stale leader. The channel is closed when ctx is done or the
	// Node is closed (at once if it already is). Each call is an
	// independent subscription; nothing ever blocks on a slow receiver
	// except its own channel.
	Watch(ctx context.Context) <-chan LeaderEvent

	// Close stops the replica and releases its resources; on-disk state,
	// if any, stays for a restart. Calls in flight return ErrClosed (or
	// their result if they completed first), later calls return
	// ErrClosed. Close is idempotent: later calls return nil.
	Close() error
}
