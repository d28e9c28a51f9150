package routing

import (
	"context"
	"net/netip"
	"slices"
	"sync"
)

// Memory is an in-memory Announcer for tests: it records the announced
// routes and every change, and lets a test wait for them. The zero value is
// not usable; call NewMemory.
type Memory struct {
	// mu guards routes, log, closed and changed.
	mu     sync.Mutex
	routes map[netip.Prefix]Route
	log    []Event
	closed bool
	// changed is closed and replaced on every change.
	changed chan struct{}
}

// Event is one change recorded by Memory.
type Event struct {
	// Withdraw is true for a withdrawal; Route then holds only Prefix.
	Withdraw bool
	Route    Route
}

var _ Announcer = (*Memory)(nil)

// NewMemory returns an empty Memory announcer.
func NewMemory() *Memory {
	return &Memory{routes: make(map[netip.Prefix]Route), changed: make(chan struct{})}
}

// Announce records r; see Announcer.
func (m *Memory) Announce(ctx context.Context, r Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if old, ok := m.routes[r.Prefix]; ok && old.Equal(r) {
		return nil
	}
	r = r.Clone()
	m.routes[r.Prefix] = r
	m.record(Event{Route: r.Clone()})
	return nil
}

// Withdraw removes the route for prefix; see Announcer.
func (m *Memory) Withdraw(ctx context.Context, prefix netip.Prefix) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.withdrawLocked(prefix)
	return nil
}

func (m *Memory) withdrawLocked(prefix netip.Prefix) {
	if _, ok := m.routes[prefix]; !ok {
		return
	}
	delete(m.routes, prefix)
	m.record(Event{Withdraw: true, Route: Route{Prefix: prefix}})
}

// record appends e to the log and wakes waiters. m.mu must be held.
func (m *Memory) record(e Event) {
	m.log = append(m.log, e)
	close(m.changed)
	m.changed = make(chan struct{})
}

// Close withdraws every route (recording each withdrawal, in prefix order)
// and makes later Announce and Withdraw calls fail with ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	for _, p := range m.prefixesLocked() {
		m.withdrawLocked(p)
	}
	m.closed = true
	close(m.changed)
	m.changed = make(chan struct{})
	return nil
}

func (m *Memory) prefixesLocked() []netip.Prefix {
	ps := make([]netip.Prefix, 0, len(m.routes))
	for p := range m.routes {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return ps
}

// Routes returns the routes announced now, sorted by prefix.
func (m *Memory) Routes() []Route {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Route, 0, len(m.routes))
	for _, p := range m.prefixesLocked() {
		out = append(out, m.routes[p].Clone())
	}
	return out
}

// Lookup returns the route announced for prefix, if any.
func (m *Memory) Lookup(prefix netip.Prefix) (Route, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.routes[prefix]
	return r.Clone(), ok
}

// Events returns every change recorded so far, oldest first.
func (m *Memory) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Event, len(m.log))
	for i, e := range m.log {
		out[i] = Event{Withdraw: e.Withdraw, Route: e.Route.Clone()}
	}
	return out
}

// Closed reports whether Close has been called.
func (m *Memory) Closed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Wait blocks until cond, called with the current routes after every
// change (and once at the start), returns true, or ctx ends, in which case
// it returns ctx's error.
func (m *Memory) Wait(ctx context.Context, cond func(routes []Route) bool) error {
	for {
		m.mu.Lock()
		ch := m.changed
		m.mu.Unlock()
		if cond(m.Routes()) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
