// Package gobgp is the default routing.Announcer: a BGP speaker built on
// GoBGP v3, run in-process. A Mux creates a Speaker with its ASN, router ID
// and the routers as peers, then announces its VIPs; Close withdraws them
// and closes the sessions.
//
// Namespaces: the Speaker lives in the network namespace of its process.
// GoBGP creates its listening sockets on its Serve goroutine and dials peers
// from goroutines on arbitrary OS threads, so it cannot be confined to a
// namespace other than the process's; run the process inside the namespace
// (for example with `ip netns exec`) instead.
//
// GoBGP's Serve goroutine never returns (an upstream limitation): after
// Close, one idle goroutine per Speaker stays parked.
package gobgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/ananta-go/ananta/routing"
)

// Errors returned by this package.
var (
	// ErrInvalidConfig: Config.Validate failed; the message names the field.
	ErrInvalidConfig = errors.New("gobgp: invalid config")
)

// Defaults applied to zero-valued timers.
const (
	DefaultHoldTime          = 3 * time.Second
	DefaultKeepaliveInterval = 1 * time.Second
	DefaultConnectRetry      = 1 * time.Second
)

// PeerConfig describes one BGP neighbour.
type PeerConfig struct {
	// Address is the neighbour's address (required).
	Address netip.Addr
	// ASN is the neighbour's AS number (required). Equal to Config.ASN
	// makes an iBGP session, otherwise eBGP.
	ASN uint32
	// Port is the neighbour's TCP port; 0 means 179.
	Port uint16
	// Password enables TCP MD5 signatures (RFC 2385) when not empty; both
	// ends must use the same one.
	Password string
	// MultihopTTL, when not 0, allows an eBGP neighbour that many hops
	// away (GoBGP otherwise dials eBGP with TTL 1).
	MultihopTTL uint8
	// HoldTime is the proposed hold time: 0 means DefaultHoldTime (3 s);
	// otherwise it must be at least 3 s. The session uses the smaller of
	// both ends' values; a silent peer is declared dead after it.
	HoldTime time.Duration
	// KeepaliveInterval: 0 means DefaultKeepaliveInterval (1 s); it must
	// be less than HoldTime.
	KeepaliveInterval time.Duration
	// ConnectRetry is the wait between connection attempts: 0 means
	// DefaultConnectRetry (1 s).
	ConnectRetry time.Duration
	// Passive makes the Speaker wait for the neighbour to connect instead
	// of dialing it. It needs Config.ListenPort > 0.
	Passive bool
}

// Config configures a Speaker. It is passed by value; New calls Validate.
type Config struct {
	// ASN is the local AS number (required).
	ASN uint32
	// RouterID is the BGP identifier, an IPv4 address (required).
	RouterID netip.Addr
	// ListenPort is the TCP port to accept sessions on; 0 or -1 means do
	// not listen (a Mux usually only dials).
	ListenPort int32
	// ListenAddresses restricts the listener to these addresses; empty
	// means every address (0.0.0.0 and ::).
	ListenAddresses []netip.Addr
	// Peers are the neighbours. Every session carries IPv4 unicast and
	// IPv6 unicast.
	Peers []PeerConfig
	// Logger receives GoBGP's logs; nil means slog.Default().
	Logger *slog.Logger `json:"-"`
}

// Validate checks c and returns an error wrapping ErrInvalidConfig that
// names the first bad field.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.ASN == 0 {
		return bad("ASN must be > 0")
	}
	if !c.RouterID.Is4() || c.RouterID.IsUnspecified() {
		return bad("RouterID must be a non-zero IPv4 address, got %v", c.RouterID)
	}
	if c.ListenPort < -1 || c.ListenPort > 65535 {
		return bad("ListenPort must be -1, 0 or a TCP port, got %d", c.ListenPort)
	}
	for i, a := range c.ListenAddresses {
		if !a.IsValid() {
			return bad("ListenAddresses[%d] is not a valid address", i)
		}
	}
	seen := make(map[netip.Addr]bool)
	for i, p := range c.Peers {
		switch {
		case !p.Address.IsValid() || p.Address.IsUnspecified():
			return bad("Peers[%d].Address must be set", i)
		case seen[p.Address.Unmap()]:
			return bad("Peers[%d].Address %s is listed twice", i, p.Address)
		case p.ASN == 0:
			return bad("Peers[%d].ASN must be > 0", i)
		case p.HoldTime != 0 && p.HoldTime < 3*time.Second:
			return bad("Peers[%d].HoldTime must be 0 (default 3s) or >= 3s, got %s", i, p.HoldTime)
		case p.HoldTime%time.Second != 0 || p.KeepaliveInterval%time.Second != 0 || p.ConnectRetry%time.Second != 0:
			return bad("Peers[%d]: HoldTime, KeepaliveInterval and ConnectRetry must be whole seconds", i)
		case p.KeepaliveInterval < 0 || p.ConnectRetry < 0:
			return bad("Peers[%d]: KeepaliveInterval and ConnectRetry must not be negative", i)
		case p.withDefaults().KeepaliveInterval >= p.withDefaults().HoldTime:
			return bad("Peers[%d].KeepaliveInterval %s must be less than HoldTime %s", i, p.withDefaults().KeepaliveInterval, p.withDefaults().HoldTime)
		case p.Passive && c.ListenPort <= 0:
			return bad("Peers[%d].Passive needs ListenPort > 0", i)
		case len(p.Password) > 80:
			return bad("Peers[%d].Password is longer than 80 bytes (TCP MD5 key limit)", i)
		}
		seen[p.Address.Unmap()] = true
	}
	return nil
}

func (p PeerConfig) withDefaults() PeerConfig {
	if p.HoldTime == 0 {
		p.HoldTime = DefaultHoldTime
	}
	if p.KeepaliveInterval == 0 {
		p.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if p.ConnectRetry == 0 {
		p.ConnectRetry = DefaultConnectRetry
	}
	return p
}

// SessionState is a BGP session's FSM state.
type SessionState int

// Session states (RFC 4271 section 8).
const (
	StateUnknown SessionState = iota
	StateIdle
	StateConnect
	StateActive
	StateOpenSent
	StateOpenConfirm
	StateEstablished
)

func (s SessionState) String() string {
	switch s {
	case StateIdle:
		return "Idle"
	case StateConnect:
		return "Connect"
	case StateActive:
		return "Active"
	case StateOpenSent:
		return "OpenSent"
	case StateOpenConfirm:
		return "OpenConfirm"
	case StateEstablished:
		return "Established"
	}
	return "Unknown"
}

// PeerState is a neighbour's session as seen now.
type PeerState struct {
	Address netip.Addr
	ASN     uint32
	State   SessionState
}

// Path is a route received from a neighbour.
type Path struct {
	Prefix      netip.Prefix
	NextHop     netip.Addr
	Peer        netip.Addr // the neighbour it came from
	Communities []uint32
	MED         uint32
}

// Speaker is a BGP speaker that implements routing.Announcer.
type Speaker struct {
	cfg    Config
	srv    *server.BgpServer
	log    *slog.Logger
	cancel context.CancelFunc // stops the event watch
	done   chan struct{}      // closed when Close has finished
	notify chan struct{}      // coalesced change notifications

	// mu guards routes and closed.
	mu     sync.Mutex
	routes map[netip.Prefix]routing.Route
	closed bool

	closeOnce sync.Once
	closeErr  error
}

var _ routing.Announcer = (*Speaker)(nil)

// New validates cfg, checks that TCP MD5 can work if a peer has a Password
// (ErrMD5Unsupported, or ErrMD5MPTCP when the Speaker listens), starts the GoBGP server, configures the peers and
// returns a running Speaker: sessions are attempted at once, and Announce
// may be called right away. Run only blocks until the context ends and then
// closes the Speaker; callers that manage the lifetime with Close need not
// call it.
func New(cfg Config) (*Speaker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for i, p := range cfg.Peers {
		if p.Password != "" {
			if err := MD5Supported(); err != nil {
				return nil, fmt.Errorf("gobgp: Peers[%d].Password: %w", i, err)
			}
			if cfg.ListenPort > 0 {
				if err := listenerMD5(); err != nil {
					return nil, fmt.Errorf("gobgp: Peers[%d].Password: %w", i, err)
				}
			}
			break
		}
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	srv := server.NewBgpServer(server.LoggerOption(&logger{l: lg.With("component", "gobgp")}))
	go srv.Serve()
	ctx := context.Background()
	g := &api.Global{
		Asn:        cfg.ASN,
		RouterId:   cfg.RouterID.String(),
		ListenPort: cfg.ListenPort,
	}
	if g.ListenPort == 0 {
		g.ListenPort = -1
	}
	for _, a := range cfg.ListenAddresses {
		g.ListenAddresses = append(g.ListenAddresses, a.String())
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("gobgp: start: %w", err)
	}
	s := &Speaker{
		cfg:    cfg,
		srv:    srv,
		log:    lg,
		done:   make(chan struct{}),
		notify: make(chan struct{}, 1),
		routes: make(map[netip.Prefix]routing.Route),
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	err := srv.WatchEvent(wctx, &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_ADJIN},
			{Type: api.WatchEventRequest_Table_Filter_BEST},
		}},
	}, func(*api.WatchEventResponse) { s.signal() })
	if err != nil {
		cancel()
		srv.Stop()
		return nil, fmt.Errorf("gobgp: watch events: %w", err)
	}
	for _, p := range cfg.Peers {
		if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(p.withDefaults())}); err != nil {
			cancel()
			srv.Stop()
			return nil, fmt.Errorf("gobgp: add peer %s: %w", p.Address, err)
		}
	}
	return s, nil
}

func apiPeer(p PeerConfig) *api.Peer {
	families := []*api.AfiSafi{
		{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
		{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.Unmap().String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(p.HoldTime / time.Second),
			KeepaliveInterval: uint64(p.KeepaliveInterval / time.Second),
			ConnectRetry:      uint64(p.ConnectRetry / time.Second),
		}},
		Transport: &api.Transport{PassiveMode: p.Passive, RemotePort: uint32(p.Port)},
		AfiSafis:  families,
	}
	if p.MultihopTTL > 0 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	}
	return ap
}

// signal wakes a waiter on Changes without blocking.
func (s *Speaker) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Changes returns a channel that receives a value (coalesced: at most one
// pending) after a session changes state or received routes change. Read
// PeerStates and Paths after each value.
func (s *Speaker) Changes() <-chan struct{} { return s.notify }

// Run blocks until ctx ends or Close is called; if ctx ended it closes the
// Speaker (withdrawing every route) and returns nil.
func (s *Speaker) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return s.Close()
	case <-s.done:
		return nil
	}
}

func pathFor(r routing.Route, withdraw bool) (*api.Path, error) {
	a := r.Prefix.Addr()
	var nlri bgp.AddrPrefixInterface
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if a.Is4() {
		nlri = bgp.NewIPAddrPrefix(32, a.String())
		if r.NextHop.IsValid() {
			attrs = append(attrs, bgp.NewPathAttributeNextHop(r.NextHop.String()))
		}
	} else {
		nlri = bgp.NewIPv6AddrPrefix(128, a.String())
		nh := "::"
		if r.NextHop.IsValid() {
			nh = r.NextHop.String()
		}
		attrs = append(attrs, bgp.NewPathAttributeMpReachNLRI(nh, []bgp.AddrPrefixInterface{nlri}))
	}
	if len(r.Communities) > 0 {
		attrs = append(attrs, bgp.NewPathAttributeCommunities(r.Communities))
	}
	if r.MED != 0 {
		attrs = append(attrs, bgp.NewPathAttributeMultiExitDisc(r.MED))
	}
	return apiutil.NewPath(nlri, withdraw, attrs, time.Now())
}

// Announce announces r to every peer; see routing.Announcer. It returns an
// error wrapping routing.ErrInvalidRoute, routing.ErrClosed, ctx's error or
// GoBGP's error.
func (s *Speaker) Announce(ctx context.Context, r routing.Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return routing.ErrClosed
	}
	if old, ok := s.routes[r.Prefix]; ok && old.Equal(r) {
		return nil
	}
	p, err := pathFor(r, false)
	if err != nil {
		return fmt.Errorf("gobgp: build path for %s: %w", r.Prefix, err)
	}
	// AddPath of a prefix already announced replaces the local path.
	if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: p}); err != nil {
		return fmt.Errorf("gobgp: announce %s: %w", r.Prefix, err)
	}
	s.routes[r.Prefix] = r.Clone()
	return nil
}

// Withdraw withdraws the route for prefix; see routing.Announcer.
func (s *Speaker) Withdraw(ctx context.Context, prefix netip.Prefix) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return routing.ErrClosed
	}
	return s.withdrawLocked(ctx, prefix)
}

func (s *Speaker) withdrawLocked(ctx context.Context, prefix netip.Prefix) error {
	r, ok := s.routes[prefix]
	if !ok {
		return nil
	}
	p, err := pathFor(r, true)
	if err != nil {
		return fmt.Errorf("gobgp: build path for %s: %w", prefix, err)
	}
	if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: p.Family, Path: p}); err != nil {
		return fmt.Errorf("gobgp: withdraw %s: %w", prefix, err)
	}
	delete(s.routes, prefix)
	return nil
}

// closeDrainTimeout bounds how long Close waits for withdrawals to be
// written to established sessions before it closes them.
const closeDrainTimeout = 2 * time.Second

// Close withdraws every route, waits (at most 2 s) until an UPDATE has been
// written to every established session, then stops the server, which sends
// a Cease NOTIFICATION and closes the sessions. Routers thus drop the routes
// at once instead of after the hold time. Close is idempotent.
func (s *Speaker) Close() error {
	s.closeOnce.Do(func() {
		defer close(s.done)
		s.mu.Lock()
		s.closed = true
		ctx := context.Background()
		var errs []error
		if len(s.routes) > 0 {
			before := s.sentUpdates(ctx)
			for _, p := range slices.Collect(maps.Keys(s.routes)) {
				if err := s.withdrawLocked(ctx, p); err != nil {
					errs = append(errs, err)
				}
			}
			s.waitSent(ctx, before)
		}
		s.mu.Unlock()
		s.cancel()
		if err := s.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
			errs = append(errs, fmt.Errorf("gobgp: stop: %w", err))
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// sentUpdates returns the count of UPDATE messages written to each
// established session.
func (s *Speaker) sentUpdates(ctx context.Context) map[string]uint64 {
	out := make(map[string]uint64)
	_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.State == nil || p.State.SessionState != api.PeerState_ESTABLISHED {
			return
		}
		var n uint64
		if p.State.Messages != nil && p.State.Messages.Sent != nil {
			n = p.State.Messages.Sent.Update
		}
		out[p.State.NeighborAddress] = n
	})
	return out
}

// waitSent waits until every session in before has written another UPDATE
// or is no longer established, or closeDrainTimeout passes.
func (s *Speaker) waitSent(ctx context.Context, before map[string]uint64) {
	deadline := time.Now().Add(closeDrainTimeout)
	for len(before) > 0 && time.Now().Before(deadline) {
		now := s.sentUpdates(ctx)
		for addr, n := range before {
			if m, ok := now[addr]; !ok || m > n {
				delete(before, addr)
			}
		}
		if len(before) > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if len(before) > 0 {
		s.log.Warn("gobgp: withdrawals not confirmed sent before close", "peers", len(before))
	}
}

// Routes returns the routes announced now, sorted by prefix.
func (s *Speaker) Routes() []routing.Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]routing.Route, 0, len(s.routes))
	for _, r := range s.routes {
		out = append(out, r.Clone())
	}
	slices.SortFunc(out, func(a, b routing.Route) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return out
}

// PeerStates returns every configured neighbour's session state, sorted by
// address.
func (s *Speaker) PeerStates(ctx context.Context) ([]PeerState, error) {
	var out []PeerState
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.State == nil {
			return
		}
		a, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil {
			return
		}
		out = append(out, PeerState{Address: a, ASN: p.State.PeerAsn, State: sessionState(p.State.SessionState)})
	})
	if err != nil {
		return nil, fmt.Errorf("gobgp: list peers: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return a.Address.Compare(b.Address) })
	return out, nil
}

func sessionState(s api.PeerState_SessionState) SessionState {
	switch s {
	case api.PeerState_IDLE:
		return StateIdle
	case api.PeerState_CONNECT:
		return StateConnect
	case api.PeerState_ACTIVE:
		return StateActive
	case api.PeerState_OPENSENT:
		return StateOpenSent
	case api.PeerState_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_ESTABLISHED:
		return StateEstablished
	}
	return StateUnknown
}

// Paths returns every host-prefix path (/32, /128) received from
// neighbours, all of them rather than only the best: a router needs one
// next hop per announcing neighbour. Paths of a neighbour whose session is
// down may linger briefly; filter with PeerStates when that matters.
func (s *Speaker) Paths(ctx context.Context) ([]Path, error) {
	var out []Path
	for _, fam := range []*api.Family{
		{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST},
		{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST},
	} {
		err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: fam}, func(d *api.Destination) {
			for _, p := range d.Paths {
				if pp, ok := convertPath(p); ok {
					out = append(out, pp)
				}
			}
		})
		if err != nil {
			return nil, fmt.Errorf("gobgp: list paths: %w", err)
		}
	}
	slices.SortFunc(out, func(a, b Path) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Peer.Compare(b.Peer)
	})
	return out, nil
}

func convertPath(p *api.Path) (Path, bool) {
	if p.IsWithdraw {
		return Path{}, false
	}
	peer, err := netip.ParseAddr(p.NeighborIp)
	if err != nil || peer.IsUnspecified() {
		return Path{}, false // a local path
	}
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return Path{}, false
	}
	pfx, err := netip.ParsePrefix(nlri.String())
	if err != nil || !pfx.IsSingleIP() {
		return Path{}, false
	}
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return Path{}, false
	}
	out := Path{Prefix: pfx, Peer: peer.Unmap()}
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			out.NextHop, _ = netip.AddrFromSlice(a.Value)
		case *bgp.PathAttributeMpReachNLRI:
			out.NextHop, _ = netip.AddrFromSlice(a.Nexthop)
		case *bgp.PathAttributeCommunities:
			out.Communities = slices.Clone(a.Value)
		case *bgp.PathAttributeMultiExitDisc:
			out.MED = a.Value
		}
	}
	if pfx.Addr().Is4() {
		out.NextHop = out.NextHop.Unmap()
	}
	if !out.NextHop.IsValid() || out.NextHop.Is4() != pfx.Addr().Is4() {
		return Path{}, false
	}
	return out, true
}

// String helps logging.
func (p Path) String() string {
	return p.Prefix.String() + " via " + p.NextHop.String() + " from " + p.Peer.String() + " med " + strconv.FormatUint(uint64(p.MED), 10)
}
