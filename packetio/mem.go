package packetio

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// MemConfig configures the two ends of a [Pipe]. The zero value is usable:
// every zero field takes its default.
type MemConfig struct {
	// QueueLen is the number of packets each direction can hold before the
	// reader takes them. Default 256.
	QueueLen int
	// MaxPacket is the largest packet a port accepts, in bytes (the link's
	// MTU). Default 9216. The queues preallocate QueueLen*MaxPacket bytes
	// per direction.
	MaxPacket int
	// Headroom is the Off at which ReadBatch places packets. Default 0.
	Headroom int
	// Block selects what a write does when the peer's queue is full: false
	// (the default) drops the packet and counts it in the peer's
	// Stats.RxDropped, as a NIC whose receive ring overflowed; true makes
	// WriteBatch wait until the peer reads or either end is closed.
	Block bool
}

const (
	defaultMemQueueLen  = 256
	defaultMemMaxPacket = 9216
	maxMemQueueBytes    = 1 << 30
)

func (c *MemConfig) setDefaults() {
	if c.QueueLen == 0 {
		c.QueueLen = defaultMemQueueLen
	}
	if c.MaxPacket == 0 {
		c.MaxPacket = defaultMemMaxPacket
	}
}

// Validate reports whether the config, with its defaults applied, is usable.
// Errors wrap ErrInvalidConfig.
func (c MemConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.QueueLen < 0:
		return fmt.Errorf("%w: QueueLen must be >= 0, got %d", ErrInvalidConfig, c.QueueLen)
	case c.MaxPacket < 0 || c.MaxPacket > 65535:
		return fmt.Errorf("%w: MaxPacket must be in [0, 65535], got %d", ErrInvalidConfig, c.MaxPacket)
	case c.Headroom < 0:
		return fmt.Errorf("%w: Headroom must be >= 0, got %d", ErrInvalidConfig, c.Headroom)
	case c.QueueLen*c.MaxPacket > maxMemQueueBytes:
		return fmt.Errorf("%w: QueueLen*MaxPacket must be <= %d bytes, got %d", ErrInvalidConfig, maxMemQueueBytes, c.QueueLen*c.MaxPacket)
	}
	return nil
}

// Pipe returns two connected in-memory ports: what a writes, b reads, and
// the reverse. Each direction has a queue of cfg.QueueLen preallocated
// slots; packets are copied in by WriteBatch and out by ReadBatch, so a
// steady flow allocates nothing. Closing one end makes that end return
// ErrClosed; the other end's writes are then dropped and counted in its
// Stats.TxDropped, like frames sent on a link whose far end is down.
func Pipe(cfg MemConfig) (a, b *Mem, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	cfg.setDefaults()
	qa, qb := newMemQueue(cfg), newMemQueue(cfg)
	a = &Mem{cfg: cfg, rx: qa, tx: qb}
	b = &Mem{cfg: cfg, rx: qb, tx: qa}
	return a, b, nil
}

// Mem is one end of an in-memory [Pipe]. It implements [Port]; Inject,
// WritePacket and ReadPacket are conveniences for tests and simulations.
type Mem struct {
	cfg MemConfig
	rx  *memQueue // packets for this end; closed by this end's Close
	tx  *memQueue // the peer's rx

	readMu  sync.Mutex // serialises ReadBatch and ReadPacket
	writeMu sync.Mutex // serialises WriteBatch and WritePacket

	closed                                                         atomic.Bool
	rxPackets, rxBytes, rxTruncated, txPackets, txBytes, txDropped atomic.Uint64
}

// memQueue is a bounded ring of preallocated packet slots.
type memQueue struct {
	// mu guards the slots' contents, lens, head, count and closed.
	mu     sync.Mutex
	slots  [][]byte
	lens   []int
	head   int // index of the oldest packet
	count  int
	closed bool

	readable chan struct{} // 1-buffered: a packet was queued
	writable chan struct{} // 1-buffered: a slot was freed
	done     chan struct{} // closed when the queue's owner closes

	dropped atomic.Uint64 // full-queue drops: the owner's RxDropped
}

func newMemQueue(cfg MemConfig) *memQueue {
	q := &memQueue{
		slots:    make([][]byte, cfg.QueueLen),
		lens:     make([]int, cfg.QueueLen),
		readable: make(chan struct{}, 1),
		writable: make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	backing := make([]byte, cfg.QueueLen*cfg.MaxPacket)
	for i := range q.slots {
		q.slots[i] = backing[i*cfg.MaxPacket : (i+1)*cfg.MaxPacket : (i+1)*cfg.MaxPacket]
	}
	return q
}

// notify leaves a wake-up token in a 1-buffered channel unless one is
// already there.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// push appends p to the queue. q.mu must be held and the queue not full.
func (q *memQueue) push(p []byte) {
	tail := q.head + q.count
	if tail >= len(q.slots) {
		tail -= len(q.slots)
	}
	q.lens[tail] = copy(q.slots[tail], p)
	q.count++
}

// pop removes the oldest packet and returns it; the slice is valid until
// q.mu is released. q.mu must be held and the queue not empty.
func (q *memQueue) pop() []byte {
	p := q.slots[q.head][:q.lens[q.head]]
	q.head++
	if q.head == len(q.slots) {
		q.head = 0
	}
	q.count--
	return p
}

// waitNonEmpty returns with q.mu held and at least one packet queued, or
// with ErrClosed (q.mu not held) once the queue is closed, or with ctx's
// error if ctx ends first.
func (q *memQueue) waitNonEmpty(ctx context.Context) error {
	ctxDone := ctx.Done()
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return ErrClosed
		}
		if q.count > 0 {
			return nil
		}
		q.mu.Unlock()
		select {
		case <-q.readable:
		case <-q.done:
		case <-ctxDone:
			return ctx.Err()
		}
	}
}

// ReadBatch implements [Port.ReadBatch].
func (m *Mem) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := checkRead(msgs, m.cfg.Headroom); err != nil {
		return 0, err
	}
	m.readMu.Lock()
	defer m.readMu.Unlock()
	q := m.rx
	for {
		if err := q.waitNonEmpty(context.Background()); err != nil {
			return 0, err
		}
		n, bytes, truncated := 0, 0, 0
		for n < len(msgs) && q.count > 0 {
			p := q.pop()
			dst := msgs[n].Buf[m.cfg.Headroom:]
			if len(p) > len(dst) {
				truncated++
				continue
			}
			copy(dst, p)
			msgs[n].Off, msgs[n].N = m.cfg.Headroom, len(p)
			n++
			bytes += len(p)
		}
		q.mu.Unlock()
		notify(q.writable)
		m.rxPackets.Add(uint64(n))
		m.rxBytes.Add(uint64(bytes))
		m.rxTruncated.Add(uint64(truncated))
		if n > 0 {
			return n, nil
		}
		// Everything queued was too big for these buffers: wait for more.
	}
}

// WriteBatch implements [Port.WriteBatch]. When the peer's queue is full the
// packet is dropped (still counted in this port's TxPackets, and in the
// peer's RxDropped) or, with MemConfig.Block, WriteBatch waits for room.
// Packets written after the peer closed are dropped and counted in this
// port's TxDropped. A packet larger than MaxPacket stops the batch with
// ErrTooBig.
func (m *Mem) WriteBatch(msgs []Message) (int, error) {
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	q := m.tx
	sent := 0
	for {
		if m.closed.Load() {
			return sent, ErrClosed
		}
		var err error
		packets, bytes, dropped, blocked := 0, 0, 0, false
		q.mu.Lock()
		for ; sent < len(msgs); sent++ {
			var p []byte
			if p, err = checkWrite(&msgs[sent]); err != nil {
				break
			}
			if len(p) > m.cfg.MaxPacket {
				err = fmt.Errorf("%w: %d bytes, MaxPacket %d", ErrTooBig, len(p), m.cfg.MaxPacket)
				break
			}
			switch {
			case q.closed:
				dropped++
				continue
			case q.count < len(q.slots):
				q.push(p)
			case m.cfg.Block:
				blocked = true
			default:
				q.dropped.Add(1)
			}
			if blocked {
				break
			}
			packets++
			bytes += len(p)
		}
		q.mu.Unlock()
		if packets > 0 {
			notify(q.readable)
		}
		m.txPackets.Add(uint64(packets))
		m.txBytes.Add(uint64(bytes))
		m.txDropped.Add(uint64(dropped))
		if err != nil || !blocked {
			return sent, err
		}
		select {
		case <-q.writable:
		case <-q.done: // the peer closed: the rest is dropped
		case <-m.rx.done: // this end closed
		}
	}
}

// Stats implements [Port.Stats].
func (m *Mem) Stats() Stats {
	return Stats{
		RxPackets:   m.rxPackets.Load(),
		RxBytes:     m.rxBytes.Load(),
		TxPackets:   m.txPackets.Load(),
		TxBytes:     m.txBytes.Load(),
		RxDropped:   m.rx.dropped.Load(),
		RxTruncated: m.rxTruncated.Load(),
		TxDropped:   m.txDropped.Load(),
	}
}

// Close implements [Port.Close]: it discards the packets queued for this
// end, makes this end's calls return ErrClosed and the peer's writes drop.
func (m *Mem) Close() error {
	if m.closed.Swap(true) {
		return nil
	}
	q := m.rx
	q.mu.Lock()
	q.closed = true
	q.count = 0
	q.mu.Unlock()
	close(q.done)
	return nil
}

// Queued returns the number of packets waiting to be read at this end.
func (m *Mem) Queued() int {
	m.rx.mu.Lock()
	defer m.rx.mu.Unlock()
	return m.rx.count
}

// Inject queues a copy of pkt for this end's ReadBatch as if the peer had
// sent it, without touching the peer's counters. It never blocks: it returns
// ErrQueueFull when the queue is full, ErrClosed after Close, and
// ErrInvalidPacket or ErrTooBig for a packet WriteBatch would refuse.
func (m *Mem) Inject(pkt []byte) error {
	msg := Message{Buf: pkt, N: len(pkt)}
	if _, err := checkWrite(&msg); err != nil {
		return err
	}
	if len(pkt) > m.cfg.MaxPacket {
		return fmt.Errorf("%w: %d bytes, MaxPacket %d", ErrTooBig, len(pkt), m.cfg.MaxPacket)
	}
	q := m.rx
	q.mu.Lock()
	switch {
	case q.closed:
		q.mu.Unlock()
		return ErrClosed
	case q.count == len(q.slots):
		q.mu.Unlock()
		return ErrQueueFull
	}
	q.push(pkt)
	q.mu.Unlock()
	notify(q.readable)
	return nil
}

// WritePacket writes one packet, like WriteBatch with one message.
func (m *Mem) WritePacket(pkt []byte) error {
	msgs := [1]Message{{Buf: pkt, N: len(pkt)}}
	_, err := m.WriteBatch(msgs[:])
	return err
}

// ReadPacket waits for the next packet at this end and returns a copy of it
// in a new slice (it allocates; use ReadBatch on hot paths). It returns
// ctx's error if ctx ends first, and ErrClosed after Close. It counts in
// Stats like ReadBatch.
func (m *Mem) ReadPacket(ctx context.Context) ([]byte, error) {
	m.readMu.Lock()
	defer m.readMu.Unlock()
	q := m.rx
	if err := q.waitNonEmpty(ctx); err != nil {
		return nil, err
	}
	p := append([]byte(nil), q.pop()...)
	q.mu.Unlock()
	notify(q.writable)
	m.rxPackets.Add(1)
	m.rxBytes.Add(uint64(len(p)))
	return p, nil
}

var _ Port = (*Mem)(nil)
