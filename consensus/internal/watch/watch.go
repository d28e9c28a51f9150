// Package watch fans leadership events out to the subscribers of
// consensus.Node.Watch: it keeps the current leader of every shard, hands a
// new subscriber that state first, then every change, and coalesces the
// events of a shard for a subscriber that falls behind so that a publisher
// never blocks.
package watch

import (
	"context"
	"slices"
	"sync"

	"github.com/ananta-go/ananta/consensus"
)

// Hub holds the leadership state of a Node's shards and its subscribers.
type Hub struct {
	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	// mu guards state, subs and closed.
	mu     sync.Mutex
	state  map[uint64]consensus.LeaderEvent
	shards []uint64 // sorted
	subs   map[*sub]struct{}
	closed bool
}

// New returns a Hub for shards, each with no leader known.
func New(shards []uint64) *Hub {
	h := &Hub{
		done:   make(chan struct{}),
		state:  make(map[uint64]consensus.LeaderEvent, len(shards)),
		shards: slices.Sorted(slices.Values(shards)),
		subs:   make(map[*sub]struct{}),
	}
	for _, s := range shards {
		h.state[s] = consensus.LeaderEvent{Shard: s}
	}
	return h
}

// Current returns the last event published for shard.
func (h *Hub) Current(shard uint64) (consensus.LeaderEvent, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ev, ok := h.state[shard]
	return ev, ok
}

// Publish records ev as the current state of its shard and queues it for
// every subscriber. Events for unknown shards and repeats of the current
// state are ignored. It never blocks on a subscriber.
func (h *Hub) Publish(ev consensus.LeaderEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur, ok := h.state[ev.Shard]
	if !ok || cur == ev || h.closed {
		return
	}
	h.state[ev.Shard] = ev
	for s := range h.subs {
		s.push(ev)
	}
}

// Watch subscribes: see consensus.Node.Watch.
func (h *Hub) Watch(ctx context.Context) <-chan consensus.LeaderEvent {
	out := make(chan consensus.LeaderEvent)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(out)
		return out
	}
	s := &sub{wake: make(chan struct{}, 1), index: make(map[uint64]int)}
	for _, shard := range h.shards {
		s.push(h.state[shard])
	}
	h.subs[s] = struct{}{}
	h.wg.Add(1)
	go h.serve(ctx, s, out)
	return out
}

// serve delivers s's queue to out until ctx is done or the Hub closes.
func (h *Hub) serve(ctx context.Context, s *sub, out chan<- consensus.LeaderEvent) {
	defer h.wg.Done()
	defer close(out)
	defer func() {
		h.mu.Lock()
		delete(h.subs, s)
		h.mu.Unlock()
	}()
	for {
		ev, ok := s.pop()
		if !ok {
			select {
			case <-s.wake:
				continue
			case <-ctx.Done():
				return
			case <-h.done:
				return
			}
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return
		case <-h.done:
			return
		}
	}
}

// Close closes every subscriber's channel and waits for their goroutines.
// Later Watch calls return a closed channel. Close is idempotent.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	close(h.done)
	h.mu.Unlock()
	h.wg.Wait()
}

// sub is one subscriber's queue: at most one pending event per shard, in
// the order their shards first became pending.
type sub struct {
	wake chan struct{} // capacity 1: something was pushed

	// mu guards queue and index.
	mu    sync.Mutex
	queue []consensus.LeaderEvent
	index map[uint64]int // shard -> position in queue
}

func (s *sub) push(ev consensus.LeaderEvent) {
	s.mu.Lock()
	if i, ok := s.index[ev.Shard]; ok {
		s.queue[i] = ev // coalesce: the latest state of the shard wins
	} else {
		s.index[ev.Shard] = len(s.queue)
		s.queue = append(s.queue, ev)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *sub) pop() (consensus.LeaderEvent, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return consensus.LeaderEvent{}, false
	}
	ev := s.queue[0]
	s.queue = s.queue[1:]
	delete(s.index, ev.Shard)
	for shard, i := range s.index {
		s.index[shard] = i - 1
	}
	return ev, true
}
