// Package agent is the agent side of the Manager's configuration
// distribution: a Client connects to any of several Manager replicas,
// Watches the configuration, applies the snapshots and increments to a
// Target (a Mux or a Host Agent, through a small adapter), reports the
// versions it applied, and reconnects with backoff, resuming from its
// versions.
//
// The data-path packages never import the manager: they satisfy Target
// (or a few lines of adapter do), and a daemon wires the two together:
//
//	c, err := agent.New(agent.Config{
//		Addrs:  []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"},
//		ID:     "mux-1",
//		Kind:   agent.KindMux,
//		Target: muxAdapter{m},
//	})
//	...
//	go c.Run(ctx)
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/manager"
)

// SNATRange maps a VIP's port range to the DIP and host that lease it.
type SNATRange struct {
	Range ananta.PortRange
	DIP   netip.Addr
	Host  netip.Addr
}

// Target receives the configuration. The Client calls its methods from one
// goroutine, never concurrently. SetVIP may be called again with an
// identical configuration (after a reconnect's snapshot); SetSNATRanges
// always passes the complete set of a VIP's ranges, sorted by port, and an
// empty set when the VIP has none left. DeleteVIP removes the VIP and its
// SNAT ranges. An error is logged and counted; the Client goes on with the
// next change (the Manager's state is the truth, and the next snapshot
// repeats it).
type Target interface {
	SetVIP(cfg ananta.VIPConfig) error
	DeleteVIP(vip netip.Addr) error
	SetSNATRanges(vip netip.Addr, ranges []SNATRange) error
	// SetBackendState sets the effective state of the backend dip:port
	// of every endpoint of vip (health reported by Host Agents).
	SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error
}

// Kind is the role of an agent.
type Kind int

// Agent kinds.
const (
	KindMux Kind = iota + 1
	KindHostAgent
)

// Defaults of the zero fields of Config.
const (
	DefaultMinBackoff     = 50 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultReportInterval = 5 * time.Second
	DefaultMaxMessage     = 256 << 20
)

// Config configures a Client.
type Config struct {
	// Addrs are Manager replicas' gRPC addresses (host:port); the Client
	// connects to one at a time and moves to the next when it fails.
	// Required.
	Addrs []string
	// ID names the agent; unique among agents. Required.
	ID string
	// Kind is KindMux or KindHostAgent. Required.
	Kind Kind
	// Address is the agent's own address, shown by ListAgents.
	Address string
	// Target receives the configuration. Required.
	Target Target
	// DialOptions for grpc.NewClient; nil means insecure transport
	// credentials (plaintext), for tests and closed management networks.
	DialOptions []grpc.DialOption
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// connection attempts (with jitter). 0 means 50 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
	// ReportInterval is how often the Client reports its versions even
	// when nothing changed (its heartbeat; keep it well below the
	// Manager's AgentTimeout). 0 means 5 s.
	ReportInterval time.Duration
	// MaxMessageBytes is the largest message accepted from the Manager.
	// 0 means 256 MiB.
	MaxMessageBytes int
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
	// OnApplied, if set, is called (from the Client's goroutine) after each
	// shard version is applied.
	OnApplied func(shard, version uint64)
}

// ErrInvalidConfig is wrapped by Config.Validate's errors.
var ErrInvalidConfig = errors.New("agent: invalid config")

// ErrGap: the Manager sent a change that does not follow the Client's
// version; the Client reconnects and resumes.
var ErrGap = errors.New("agent: gap in the change stream")

// Validate reports the first problem of c, naming the field.
func (c Config) Validate() error {
	switch {
	case len(c.Addrs) == 0:
		return fmt.Errorf("%w: Addrs must list at least one Manager address", ErrInvalidConfig)
	case c.ID == "":
		return fmt.Errorf("%w: ID is required", ErrInvalidConfig)
	case c.Kind != KindMux && c.Kind != KindHostAgent:
		return fmt.Errorf("%w: Kind must be KindMux or KindHostAgent", ErrInvalidConfig)
	case c.Target == nil:
		return fmt.Errorf("%w: Target is required", ErrInvalidConfig)
	case c.MinBackoff < 0 || c.MaxBackoff < 0 || (c.MaxBackoff != 0 && c.MaxBackoff < c.MinBackoff):
		return fmt.Errorf("%w: MinBackoff and MaxBackoff must be >= 0 and MinBackoff <= MaxBackoff", ErrInvalidConfig)
	case c.ReportInterval < 0:
		return fmt.Errorf("%w: ReportInterval must be >= 0", ErrInvalidConfig)
	}
	return nil
}

// shardState is what the Client applied of one shard.
type shardState struct {
	version uint64
	vips    map[netip.Addr]bool
	snat    map[netip.Addr]map[uint16]SNATRange // vip -> first port -> range
}

// Stats counts the Client's work.
type Stats struct {
	Connects     uint64 // streams opened
	Snapshots    uint64 // shard snapshots applied
	Changes      uint64 // changes applied
	TargetErrors uint64 // errors returned by the Target
}

// Client is an agent's connection to the Manager.
type Client struct {
	cfg  Config
	log  *slog.Logger
	kind api.AgentKind

	// mu guards shards and stats.
	mu     sync.Mutex
	shards map[uint64]*shardState
	stats  Stats

	report chan struct{} // capacity 1: versions changed
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

// New returns a Client; start it with Run.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.ReportInterval == 0 {
		cfg.ReportInterval = DefaultReportInterval
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = DefaultMaxMessage
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	kind := api.AgentKind_AGENT_KIND_MUX
	if cfg.Kind == KindHostAgent {
		kind = api.AgentKind_AGENT_KIND_HOST_AGENT
	}
	c := &Client{cfg: cfg, log: cfg.Logger, kind: kind, shards: make(map[uint64]*shardState), report: make(chan struct{}, 1)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Versions returns the version the Client applied per shard.
func (c *Client) Versions() map[uint64]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[uint64]uint64, len(c.shards))
	for s, st := range c.shards {
		out[s] = st.version
	}
	return out
}

// Stats returns the Client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Close stops Run. It is idempotent.
func (c *Client) Close() error {
	c.once.Do(c.cancel)
	return nil
}

// Run connects, watches and applies until ctx ends or Close is called, and
// returns nil then. Failures of a connection are logged and retried with
// backoff on the next address.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	backoff := c.cfg.MinBackoff
	for i := 0; ; i++ {
		addr := c.cfg.Addrs[i%len(c.cfg.Addrs)]
		start := time.Now()
		err := c.session(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*c.cfg.MaxBackoff {
			backoff = c.cfg.MinBackoff // the session was healthy for a while
		}
		c.log.Info("agent: manager connection ended, reconnecting", "agent", c.cfg.ID, "addr", addr, "err", err, "backoff", backoff)
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

func (c *Client) dialOptions() []grpc.DialOption {
	opts := c.cfg.DialOptions
	if opts == nil {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	return append(slices.Clone(opts), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.cfg.MaxMessageBytes)))
}

// session runs one connection: a Watch stream and the reporting of
// applied versions, until either fails.
func (c *Client) session(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, c.dialOptions()...)
	if err != nil {
		return err
	}
	defer conn.Close()
	cl := api.NewAgentServiceClient(conn)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &api.WatchRequest{AgentId: c.cfg.ID, Kind: c.kind, Address: c.cfg.Address, From: c.shardVersions()}
	stream, err := cl.Watch(ctx, req)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.stats.Connects++
	c.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.reportLoop(ctx, cl)
	}()
	parts := make(map[uint64][]*api.Snapshot)
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := c.handle(msg, parts); err != nil {
			return err
		}
		select {
		case c.report <- struct{}{}:
		default:
		}
	}
}

func (c *Client) shardVersions() []*api.ShardVersion {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*api.ShardVersion
	for _, s := range slices.Sorted(maps.Keys(c.shards)) {
		out = append(out, &api.ShardVersion{Shard: s, Version: c.shards[s].version})
	}
	return out
}

// reportLoop reports the applied versions after changes (coalesced) and
// every ReportInterval.
func (c *Client) reportLoop(ctx context.Context, cl api.AgentServiceClient) {
	t := time.NewTicker(c.cfg.ReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.report:
		case <-t.C:
		}
		vs := c.shardVersions()
		if len(vs) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, c.cfg.ReportInterval)
		_, err := cl.ReportApplied(rctx, &api.ReportAppliedRequest{AgentId: c.cfg.ID, Kind: c.kind, Address: c.cfg.Address, Applied: vs})
		cancel()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("agent: reporting applied versions failed", "agent", c.cfg.ID, "err", err)
		}
	}
}

func (c *Client) targetErr(what string, err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	c.stats.TargetErrors++
	c.mu.Unlock()
	c.log.Error("agent: target refused a change", "agent", c.cfg.ID, "op", what, "err", err)
}

// handle applies one message.
func (c *Client) handle(msg *api.WatchResponse, parts map[uint64][]*api.Snapshot) error {
	shard := msg.Shard
	if s := msg.Snapshot; s != nil {
		if s.First {
			parts[shard] = nil
		}
		parts[shard] = append(parts[shard], s)
		if s.Last {
			err := c.applySnapshot(shard, parts[shard])
			delete(parts, shard)
			return err
		}
		return nil
	}
	if len(msg.Changes) == 0 {
		return nil
	}
	c.mu.Lock()
	st := c.shards[shard]
	c.mu.Unlock()
	if st == nil {
		return fmt.Errorf("%w: changes for shard %d before its snapshot", ErrGap, shard)
	}
	dirty := make(map[netip.Addr]bool)
	for _, ch := range msg.Changes {
		if ch.Version != st.version+1 {
			return fmt.Errorf("%w: shard %d: got version %d after %d", ErrGap, shard, ch.Version, st.version)
		}
		c.applyChange(st, ch, dirty)
		c.mu.Lock()
		st.version = ch.Version
		c.stats.Changes++
		c.mu.Unlock()
	}
	c.flushSNAT(st, dirty)
	if c.cfg.OnApplied != nil {
		c.cfg.OnApplied(shard, st.version)
	}
	return nil
}

func (c *Client) applyChange(st *shardState, ch *api.Change, dirty map[netip.Addr]bool) {
	t := c.cfg.Target
	switch x := ch.Change.(type) {
	case *api.Change_VipSet:
		cfg, err := manager.VIPConfigFromProto(x.VipSet.GetConfig())
		if err != nil {
			c.targetErr("decode vip", err)
			return
		}
		c.targetErr("SetVIP", t.SetVIP(cfg))
		st.vips[cfg.VIP] = true
	case *api.Change_VipDeleted:
		vip, err := netip.ParseAddr(x.VipDeleted)
		if err != nil {
			c.targetErr("decode vip", err)
			return
		}
		c.targetErr("DeleteVIP", t.DeleteVIP(vip))
		delete(st.vips, vip)
		delete(st.snat, vip)
		delete(dirty, vip)
	case *api.Change_SnatAdded:
		r, err := snatRangeFrom(x.SnatAdded)
		if err != nil {
			c.targetErr("decode snat range", err)
			return
		}
		vip := netip.MustParseAddr(x.SnatAdded.Vip)
		m := st.snat[vip]
		if m == nil {
			m = make(map[uint16]SNATRange)
			st.snat[vip] = m
		}
		m[r.Range.First] = r
		dirty[vip] = true
	case *api.Change_SnatRemoved:
		r, err := snatRangeFrom(x.SnatRemoved)
		if err != nil {
			c.targetErr("decode snat range", err)
			return
		}
		vip := netip.MustParseAddr(x.SnatRemoved.Vip)
		delete(st.snat[vip], r.Range.First)
		dirty[vip] = true
	case *api.Change_BackendState:
		b := x.BackendState
		vip, err1 := netip.ParseAddr(b.Vip)
		dip, err2 := netip.ParseAddr(b.Dip)
		if err := errors.Join(err1, err2); err != nil || b.Port > 65535 {
			c.targetErr("decode backend state", fmt.Errorf("bad backend state change %v", b))
			return
		}
		c.targetErr("SetBackendState", t.SetBackendState(vip, dip, uint16(b.Port), ananta.BackendState(b.State)))
	}
}

func snatRangeFrom(r *api.SNATRange) (SNATRange, error) {
	vip, err := netip.ParseAddr(r.GetVip())
	if err != nil {
		return SNATRange{}, err
	}
	_ = vip
	dip, err := netip.ParseAddr(r.GetDip())
	if err != nil {
		return SNATRange{}, err
	}
	host, err := netip.ParseAddr(r.GetHost())
	if err != nil {
		return SNATRange{}, err
	}
	if r.GetRange().GetFirst() > 65535 || r.GetRange().GetLast() > 65535 {
		return SNATRange{}, fmt.Errorf("port range %v out of bounds", r.GetRange())
	}
	return SNATRange{
		Range: ananta.PortRange{First: uint16(r.GetRange().GetFirst()), Last: uint16(r.GetRange().GetLast())},
		DIP:   dip, Host: host,
	}, nil
}

// flushSNAT hands the complete range set of every dirty VIP to the Target.
func (c *Client) flushSNAT(st *shardState, dirty map[netip.Addr]bool) {
	for _, vip := range slices.SortedFunc(maps.Keys(dirty), netip.Addr.Compare) {
		m := st.snat[vip]
		ranges := make([]SNATRange, 0, len(m))
		for _, f := range slices.Sorted(maps.Keys(m)) {
			ranges = append(ranges, m[f])
		}
		if len(m) == 0 {
			delete(st.snat, vip)
		}
		c.targetErr("SetSNATRanges", c.cfg.Target.SetSNATRanges(vip, ranges))
	}
}

// applySnapshot replaces the shard's state with a complete snapshot.
func (c *Client) applySnapshot(shard uint64, parts []*api.Snapshot) error {
	if len(parts) == 0 || !parts[0].First {
		return fmt.Errorf("%w: shard %d: snapshot without its first part", ErrGap, shard)
	}
	version := parts[0].Version
	c.mu.Lock()
	old := c.shards[shard]
	c.mu.Unlock()
	st := &shardState{version: version, vips: make(map[netip.Addr]bool), snat: make(map[netip.Addr]map[uint16]SNATRange)}
	t := c.cfg.Target
	for _, p := range parts {
		if p.Version != version {
			return fmt.Errorf("%w: shard %d: snapshot parts of versions %d and %d", ErrGap, shard, version, p.Version)
		}
		for _, v := range p.Vips {
			cfg, err := manager.VIPConfigFromProto(v.GetConfig())
			if err != nil {
				c.targetErr("decode vip", err)
				continue
			}
			st.vips[cfg.VIP] = true
			c.targetErr("SetVIP", t.SetVIP(cfg))
		}
		for _, r := range p.Snat {
			sr, err := snatRangeFrom(r)
			if err != nil {
				c.targetErr("decode snat range", err)
				continue
			}
			vip := netip.MustParseAddr(r.Vip)
			m := st.snat[vip]
			if m == nil {
				m = make(map[uint16]SNATRange)
				st.snat[vip] = m
			}
			m[sr.Range.First] = sr
		}
	}
	dirty := make(map[netip.Addr]bool)
	for vip := range st.snat {
		dirty[vip] = true
	}
	if old != nil {
		for vip := range old.vips {
			if !st.vips[vip] {
				c.targetErr("DeleteVIP", t.DeleteVIP(vip))
			}
		}
		for vip := range old.snat {
			if st.vips[vip] && st.snat[vip] == nil {
				dirty[vip] = true // its ranges are gone
			}
		}
	}
	c.flushSNAT(st, dirty)
	c.mu.Lock()
	c.shards[shard] = st
	c.stats.Snapshots++
	c.mu.Unlock()
	if c.cfg.OnApplied != nil {
		c.cfg.OnApplied(shard, version)
	}
	return nil
}
