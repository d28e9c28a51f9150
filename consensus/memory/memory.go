// Package memory is a single-replica consensus.Node that lives in the
// process: Propose applies the command at once under the shard's lock and
// returns its result, Read queries under a read lock. There is no log, no
// network and no disk; it is deterministic and synchronous, so unit tests of
// code built on consensus (the Manager, users' policy tests) run fast and
// repeat exactly, and a single-process deployment can embed it.
//
// The Node is its own leader of every shard from the start: Watch reports
// replica 1 (Node.ID), term 1, at once. Snapshot and Restore write and read
// the state of every shard through StateMachine.Save and Restore, which is
// how tests check that a state machine survives a snapshot:
//
//	var buf bytes.Buffer
//	_ = old.Snapshot(&buf)
//	fresh, _ := memory.New(shards, factory)
//	_ = fresh.Restore(&buf)
package memory

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/internal/watch"
)

// ReplicaID is the replica ID of every in-memory Node.
const ReplicaID = 1

// ErrBadSnapshot: Restore was given bytes that Snapshot did not write, or a
// snapshot of another set of shards.
var ErrBadSnapshot = errors.New("memory: bad snapshot")

// Node is an in-process, single-replica consensus.Node.
type Node struct {
	shards map[uint64]*shard
	ids    []uint64 // sorted
	hub    *watch.Hub
	closed atomic.Bool
	once   sync.Once
}

type shard struct {
	// mu is held for writing around Apply and Restore, for reading around
	// Query and Save: the calling rules of consensus.StateMachine.
	mu sync.RWMutex
	sm consensus.StateMachine
}

var _ consensus.Node = (*Node)(nil)

// New returns a Node serving shards (at least one, no duplicates), with one
// state machine per shard from factory.
func New(shards []uint64, factory consensus.Factory) (*Node, error) {
	if len(shards) == 0 {
		return nil, errors.New("memory: no shards")
	}
	if factory == nil {
		return nil, errors.New("memory: nil factory")
	}
	n := &Node{shards: make(map[uint64]*shard, len(shards))}
	for _, id := range shards {
		if _, dup := n.shards[id]; dup {
			return nil, fmt.Errorf("memory: shard %d listed twice", id)
		}
		sm := factory(id)
		if sm == nil {
			return nil, fmt.Errorf("memory: factory returned nil for shard %d", id)
		}
		n.shards[id] = &shard{sm: sm}
	}
	n.ids = slices.Sorted(slices.Values(shards))
	n.hub = watch.New(n.ids)
	for _, id := range n.ids {
		n.hub.Publish(consensus.LeaderEvent{Shard: id, Leader: ReplicaID, Term: 1, Local: true})
	}
	return n, nil
}

// ID returns ReplicaID.
func (n *Node) ID() uint64 { return ReplicaID }

// Shards implements consensus.Node.
func (n *Node) Shards() []uint64 { return slices.Clone(n.ids) }

// get returns the shard after the checks every call makes, in the order
// the other implementations make them.
func (n *Node) get(ctx context.Context, id uint64) (*shard, error) {
	if n.closed.Load() {
		return nil, consensus.ErrClosed
	}
	s, ok := n.shards[id]
	if !ok {
		return nil, fmt.Errorf("memory: shard %d: %w", id, consensus.ErrUnknownShard)
	}
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// ctxErr maps a done context to the errors consensus.Node documents.
func ctxErr(ctx context.Context) error {
	switch err := ctx.Err(); {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("memory: %w: %w", consensus.ErrTimeout, err)
	default:
		return fmt.Errorf("memory: %w", err)
	}
}

// Propose implements consensus.Node: Apply runs at once, in the caller's
// goroutine, under the shard's lock. It waits for the lock only, so the
// context is only checked before; a command is applied exactly once when
// Propose returns anything but ErrClosed, ErrUnknownShard or a context
// error.
func (n *Node) Propose(ctx context.Context, id uint64, cmd []byte) ([]byte, error) {
	s, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.closed.Load() {
		return nil, consensus.ErrClosed
	}
	res, err := s.sm.Apply(cmd)
	if err != nil {
		return nil, &consensus.RejectedError{Shard: id, Msg: err.Error()}
	}
	return res, nil
}

// Read implements consensus.Node: Query runs in the caller's goroutine
// under the shard's read lock.
func (n *Node) Read(ctx context.Context, id uint64, q []byte) ([]byte, error) {
	s, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if n.closed.Load() {
		return nil, consensus.ErrClosed
	}
	res, err := s.sm.Query(q)
	if err != nil {
		return nil, &consensus.RejectedError{Shard: id, Msg: err.Error(), Err: err}
	}
	return res, nil
}

// Leader implements consensus.Node: ReplicaID for every shard until Close.
func (n *Node) Leader(id uint64) (uint64, bool) {
	if n.closed.Load() {
		return 0, false
	}
	if _, ok := n.shards[id]; !ok {
		return 0, false
	}
	return ReplicaID, true
}

// Watch implements consensus.Node: one event per shard (leader ReplicaID,
// term 1), then nothing until the channel closes.
func (n *Node) Watch(ctx context.Context) <-chan consensus.LeaderEvent {
	return n.hub.Watch(ctx)
}

// Close implements consensus.Node. It waits for calls holding a shard's
// lock, then closes every state machine that implements io.Closer and
// returns the first error of those.
func (n *Node) Close() error {
	var err error
	n.once.Do(func() {
		n.closed.Store(true)
		n.hub.Close()
		for _, id := range n.ids {
			s := n.shards[id]
			s.mu.Lock()
			if c, ok := s.sm.(io.Closer); ok {
				err = errors.Join(err, c.Close())
			}
			s.mu.Unlock()
		}
	})
	return err
}

// snapshotMagic starts every snapshot; the last byte is the format version.
var snapshotMagic = []byte("ananta-consensus-memory\x01")

// Snapshot writes the state of every shard to w, each through its state
// machine's Save, in one consistent cut: no command is applied while it
// runs. Format: magic, shard count, then per shard (ascending) its ID, the
// length of its Save output and that output, integers as uvarints.
// Errors: ErrClosed, or Save's or w's error.
func (n *Node) Snapshot(w io.Writer) error {
	if n.closed.Load() {
		return consensus.ErrClosed
	}
	for _, id := range n.ids {
		n.shards[id].mu.RLock()
		defer n.shards[id].mu.RUnlock()
	}
	bw := bufio.NewWriter(w)
	bw.Write(snapshotMagic)
	writeUvarint(bw, uint64(len(n.ids)))
	var buf bytes.Buffer
	for _, id := range n.ids {
		buf.Reset()
		if err := n.shards[id].sm.Save(&buf); err != nil {
			return fmt.Errorf("memory: shard %d: save: %w", id, err)
		}
		writeUvarint(bw, id)
		writeUvarint(bw, uint64(buf.Len()))
		bw.Write(buf.Bytes())
	}
	return bw.Flush()
}

// Restore replaces the state of every shard with the one in a snapshot
// written by Snapshot, through each state machine's Restore. The snapshot
// must hold exactly this Node's shards. It runs in one cut: no command is
// applied or query answered while it runs. If a state machine's Restore
// fails, the shards restored before it keep their new state.
// Errors: ErrClosed, ErrBadSnapshot, Restore's or r's error.
func (n *Node) Restore(r io.Reader) error {
	if n.closed.Load() {
		return consensus.ErrClosed
	}
	for _, id := range n.ids {
		n.shards[id].mu.Lock()
		defer n.shards[id].mu.Unlock()
	}
	br := bufio.NewReader(r)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || !bytes.Equal(magic, snapshotMagic) {
		return fmt.Errorf("%w: no snapshot header", ErrBadSnapshot)
	}
	count, err := binary.ReadUvarint(br)
	if err != nil || count != uint64(len(n.ids)) {
		return fmt.Errorf("%w: snapshot holds %d shards, node has %d", ErrBadSnapshot, count, len(n.ids))
	}
	for _, want := range n.ids {
		id, err := binary.ReadUvarint(br)
		if err != nil || id != want {
			return fmt.Errorf("%w: expected shard %d", ErrBadSnapshot, want)
		}
		size, err := binary.ReadUvarint(br)
		if err != nil {
			return fmt.Errorf("%w: shard %d: %v", ErrBadSnapshot, id, err)
		}
		lr := &io.LimitedReader{R: br, N: int64(size)}
		if err := n.shards[id].sm.Restore(lr); err != nil {
			return fmt.Errorf("memory: shard %d: restore: %w", id, err)
		}
		if lr.N != 0 { // Restore stopped early: skip its rest
			if _, err := io.Copy(io.Discard, lr); err != nil || lr.N != 0 {
				return fmt.Errorf("%w: shard %d truncated", ErrBadSnapshot, id)
			}
		}
	}
	return nil
}

func writeUvarint(w *bufio.Writer, v uint64) {
	var b [binary.MaxVarintLen64]byte
	w.Write(b[:binary.PutUvarint(b[:], v)])
}
