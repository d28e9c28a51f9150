package manager

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
)

// Errors of the Manager's lifecycle.
var (
	// ErrClosed: the Manager was closed.
	ErrClosed = errors.New("manager: closed")
	// ErrRunning: Run was called twice.
	ErrRunning = errors.New("manager: already running")
)

// Manager is one replica of the Ananta Manager: the gRPC API over a
// replicated, sharded state machine. See the package documentation.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	node   consensus.Node
	shards []uint64 // sorted
	limits *api.Limits

	// smMu guards sms: per shard the slot of its current state machine
	// (the Node may create a new instance when it restarts a shard).
	smMu sync.Mutex
	sms  map[uint64]*atomic.Pointer[stateMachine]

	// changedMu guards changed, closed and replaced on every change of any
	// shard: a broadcast to Watch streams and waiters.
	changedMu sync.Mutex
	changed   chan struct{}

	// epochMu guards epochs: per shard a context canceled at the next
	// leadership change, which aborts proposal attempts that may be stuck
	// with a lost leader.
	epochMu sync.Mutex
	epochs  map[uint64]*epoch

	snat     *scheduler
	reporter *reporter
	peers    peers
	stats    counters
	srv      *grpc.Server

	ctx     context.Context // canceled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	running atomic.Bool
	once    sync.Once
	closeMu sync.Mutex // serialises Close with Run's start
	closed  bool
}

type epoch struct {
	ctx    context.Context
	cancel context.CancelFunc
	leader uint64
	term   uint64
}

// New validates cfg, opens the consensus Node through cfg.Consensus with
// the Manager's state machine factory, and returns the Manager. Serve the
// API with Run. Errors wrap ErrInvalidConfig, or come from cfg.Consensus.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m := &Manager{
		cfg:     cfg,
		log:     cfg.Logger,
		changed: make(chan struct{}),
		epochs:  make(map[uint64]*epoch),
		sms:     make(map[uint64]*atomic.Pointer[stateMachine]),
		limits: &api.Limits{
			MaxPortsPerDip: uint32(cfg.MaxPortsPerDIP),
			DedupWindow:    int64(cfg.DedupWindow),
			DedupEntries:   uint32(cfg.DedupEntries),
			AgentForget:    int64(cfg.AgentForget),
			TrafficTtl:     int64(cfg.TrafficTTL),
		},
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	var factoryMu sync.Mutex
	var factoryErr error
	factory := func(shard uint64) consensus.StateMachine {
		sm, err := newStateMachine(smConfig{
			shard:    shard,
			limits:   m.limits,
			logSize:  cfg.WatchLogSize,
			onChange: m.onChange,
		})
		if err != nil {
			factoryMu.Lock()
			factoryErr = err
			factoryMu.Unlock()
			return nil
		}
		m.smPointer(shard).Store(sm)
		m.onChange(shard)
		return sm
	}
	node, err := cfg.Consensus(factory)
	if err != nil {
		m.cancel()
		return nil, fmt.Errorf("manager: opening consensus: %w", err)
	}
	factoryMu.Lock()
	ferr := factoryErr
	factoryMu.Unlock()
	if ferr != nil {
		node.Close()
		m.cancel()
		return nil, fmt.Errorf("manager: creating state machine: %w", ferr)
	}
	m.shards = node.Shards()
	for _, s := range m.shards {
		if m.sm(s) == nil {
			node.Close()
			m.cancel()
			return nil, fmt.Errorf("manager: the consensus node did not create shard %d's state machine", s)
		}
	}
	m.node = node
	for _, s := range m.shards {
		ctx, cancel := context.WithCancel(m.ctx)
		m.epochs[s] = &epoch{ctx: ctx, cancel: cancel}
	}
	m.snat = newScheduler(m)
	m.peers.m = m
	m.reporter = newReporter(m)
	m.srv = grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
	}, cfg.ServerOptions...)...)
	api.RegisterVIPServiceServer(m.srv, &vipServer{m: m})
	api.RegisterSNATServiceServer(m.srv, &snatServer{m: m})
	api.RegisterAgentServiceServer(m.srv, &agentServer{m: m})
	m.wg.Add(1)
	go m.watchLeaders()
	return m, nil
}

// smPointer returns the slot of shard's state machine, creating it.
func (m *Manager) smPointer(shard uint64) *atomic.Pointer[stateMachine] {
	m.smMu.Lock()
	defer m.smMu.Unlock()
	p := m.sms[shard]
	if p == nil {
		p = new(atomic.Pointer[stateMachine])
		m.sms[shard] = p
	}
	return p
}

// sm returns shard's current state machine, nil for an unknown shard.
func (m *Manager) sm(shard uint64) *stateMachine {
	m.smMu.Lock()
	p := m.sms[shard]
	m.smMu.Unlock()
	if p == nil {
		return nil
	}
	return p.Load()
}

// Shards returns the shards of this deployment, sorted.
func (m *Manager) Shards() []uint64 { return slices.Clone(m.shards) }

// Node returns the consensus Node the Manager runs on.
func (m *Manager) Node() consensus.Node { return m.node }

// ShardOf returns the shard that holds vip's state.
func (m *Manager) ShardOf(vip string) (uint64, error) {
	a, err := parseUnicast("vip", vip)
	if err != nil {
		return 0, err
	}
	return shardOf(a, m.shards), nil
}

// onChange is every state machine's change callback.
func (m *Manager) onChange(uint64) {
	m.changedMu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.changedMu.Unlock()
}

// changes returns a channel closed at the next change of any shard.
func (m *Manager) changes() <-chan struct{} {
	m.changedMu.Lock()
	defer m.changedMu.Unlock()
	return m.changed
}

// watchLeaders cancels a shard's epoch at every leadership change.
func (m *Manager) watchLeaders() {
	defer m.wg.Done()
	for ev := range m.node.Watch(m.ctx) {
		m.epochMu.Lock()
		e := m.epochs[ev.Shard]
		if e != nil && (e.leader != ev.Leader || e.term != ev.Term) {
			e.cancel()
			ctx, cancel := context.WithCancel(m.ctx)
			m.epochs[ev.Shard] = &epoch{ctx: ctx, cancel: cancel, leader: ev.Leader, term: ev.Term}
			m.log.Debug("manager: shard leader", "shard", ev.Shard, "leader", ev.Leader, "term", ev.Term, "local", ev.Local)
		}
		m.epochMu.Unlock()
	}
}

func (m *Manager) epochCtx(shard uint64) context.Context {
	m.epochMu.Lock()
	defer m.epochMu.Unlock()
	return m.epochs[shard].ctx
}

// newID returns a random proposal ID.
func newID() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	return b
}

// withDeadline applies the default request timeout to a context without a
// deadline.
func (m *Manager) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, m.cfg.RequestTimeout)
}

// propose replicates cmd in shard and returns the state machine's result.
// An attempt that fails with its outcome unknown (timeout, leader lost) is
// retried until ctx ends: commands whose repetition would not be harmless
// carry an ID, and the state machine returns the first result for a
// repeated ID. Errors are gRPC status errors.
func (m *Manager) propose(ctx context.Context, shard uint64, cmd *api.Command) (*api.Result, error) {
	if cmd.Now == 0 {
		cmd.Now = m.cfg.Now().UnixNano()
	}
	b := marshal(cmd)
	m.stats.proposals.Add(1)
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			m.stats.proposalRetries.Add(1)
		}
		actx, cancel := context.WithTimeout(ctx, m.cfg.ProposeTimeout)
		stop := context.AfterFunc(m.epochCtx(shard), cancel)
		out, err := m.node.Propose(actx, shard, b)
		stop()
		cancel()
		if err == nil {
			var r api.Result
			if err := proto.Unmarshal(out, &r); err != nil {
				return nil, status.Errorf(codes.Internal, "decoding the state machine's result: %v", err)
			}
			return &r, nil
		}
		switch {
		case errors.Is(err, consensus.ErrRejected):
			return nil, status.Errorf(codes.Internal, "%v", err)
		case errors.Is(err, consensus.ErrClosed):
			return nil, status.Error(codes.Unavailable, "manager replica is closing")
		case errors.Is(err, consensus.ErrUnknownShard):
			return nil, status.Errorf(codes.Internal, "%v", err)
		case ctx.Err() != nil:
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		m.log.Debug("manager: proposal outcome unknown, retrying", "shard", shard, "attempt", attempt, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// read runs a linearizable query on shard.
func (m *Manager) read(ctx context.Context, shard uint64, q *api.Query, out proto.Message) error {
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	b := marshal(q)
	for {
		actx, acancel := context.WithTimeout(ctx, m.cfg.ProposeTimeout)
		stop := context.AfterFunc(m.epochCtx(shard), acancel)
		res, err := m.node.Read(actx, shard, b)
		stop()
		acancel()
		if err == nil {
			if err := proto.Unmarshal(res, out); err != nil {
				return status.Errorf(codes.Internal, "decoding query result: %v", err)
			}
			return nil
		}
		var rej *consensus.RejectedError
		switch {
		case errors.As(err, &rej):
			if s, ok := status.FromError(rej.Err); ok {
				return s.Err()
			}
			return status.Errorf(codes.Internal, "%v", err)
		case errors.Is(err, consensus.ErrClosed):
			return status.Error(codes.Unavailable, "manager replica is closing")
		case ctx.Err() != nil:
			return status.FromContextError(ctx.Err()).Err()
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// Run serves the gRPC API on the configured listener and runs the
// replica's background work (lease expiry on the shards it leads, the
// SNAT scheduler, the agents' report batching) until ctx ends or Close is
// called; when ctx ends, Run closes the Manager (see Close) before it
// returns. It returns nil when ctx ended or Close was called, ErrRunning if
// already running, ErrClosed after Close, or the server's error.
func (m *Manager) Run(ctx context.Context) error {
	m.closeMu.Lock()
	if m.closed {
		m.closeMu.Unlock()
		return ErrClosed
	}
	if !m.running.CompareAndSwap(false, true) {
		m.closeMu.Unlock()
		return ErrRunning
	}
	m.wg.Add(3)
	go func() { defer m.wg.Done(); m.expireLoop() }()
	go func() { defer m.wg.Done(); m.snat.run() }()
	go func() { defer m.wg.Done(); m.reporter.run() }()
	m.closeMu.Unlock()

	errc := make(chan error, 1)
	go func() { errc <- m.srv.Serve(m.cfg.Listener) }()
	m.log.Info("manager: serving", "addr", m.cfg.Listener.Addr().String(), "replica", m.node.ID(), "shards", m.shards)
	select {
	case <-ctx.Done():
		m.Close()
		<-errc
		return nil
	case <-m.ctx.Done():
		<-errc
		return nil
	case err := <-errc:
		m.Close()
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return fmt.Errorf("manager: serving: %w", err)
	}
}

// Close stops serving, ends every Watch stream and call in flight, and
// closes the consensus Node (on-disk state stays). It is idempotent and
// returns the Node's Close error the first time.
func (m *Manager) Close() error {
	var err error
	m.once.Do(func() {
		m.closeMu.Lock()
		m.closed = true
		m.closeMu.Unlock()
		m.cancel()
		m.srv.Stop()
		m.wg.Wait()
		m.peers.close()
		err = m.node.Close()
	})
	return err
}

// expireLoop proposes lease expiry (and the pruning of forgotten agents,
// old traffic reports and remembered results) in the shards this replica
// leads, when there is something to do.
func (m *Manager) expireLoop() {
	t := time.NewTicker(m.cfg.ExpireInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		now := m.cfg.Now().UnixNano()
		for _, s := range m.shards {
			if leader, ok := m.node.Leader(s); !ok || leader != m.node.ID() {
				continue
			}
			sm := m.sm(s)
			if sm == nil || !sm.needsExpire(now) {
				continue
			}
			ctx, cancel := context.WithTimeout(m.ctx, m.cfg.ProposeTimeout)
			_, err := m.propose(ctx, s, &api.Command{Now: now, Op: &api.Command_Expire{Expire: &api.ExpireCommand{}}})
			cancel()
			if err != nil && m.ctx.Err() == nil {
				m.log.Warn("manager: expiry failed", "shard", s, "err", err)
			}
		}
	}
}

// SaveShard writes this replica's applied state of shard in the state
// machine's snapshot format (the bytes consensus snapshots hold). Two
// replicas that applied the same commands write the same bytes, which
// makes it a consistency check as well as a debugging dump.
func (m *Manager) SaveShard(shard uint64, w io.Writer) error {
	sm := m.sm(shard)
	if sm == nil {
		return fmt.Errorf("manager: shard %d: %w", shard, consensus.ErrUnknownShard)
	}
	return sm.Save(w)
}

// ShardVersion returns the version of shard this replica applied.
func (m *Manager) ShardVersion(shard uint64) (uint64, bool) {
	sm := m.sm(shard)
	if sm == nil {
		return 0, false
	}
	return sm.version(), true
}
