// Package router is a small BGP router for tests and the all-in-one
// example: a GoBGP speaker (routing/gobgp) that accepts sessions from Muxes
// and installs every received VIP host route into the kernel as an ECMP
// route with one next hop per announcing, established neighbour. A next hop
// goes when its neighbour withdraws the VIP or its session drops (for
// example on hold-timer expiry); the route goes with its last next hop.
//
// Namespaces: a Router works in the network namespace of its process, both
// for BGP (GoBGP dials and listens from threads it does not control) and
// for routes (a netlink handle of the current namespace). Run it as its own
// process inside the router's namespace, for example with
// `ip netns exec ROUTER prog`; routing/internal/muxproc does so for this
// repository's tests. New also sets the namespace's sysctls a router needs
// (forwarding and 5-tuple multipath hashing) unless Config.SkipSysctls is
// set: never run it in a namespace whose sysctls must not change.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ananta-go/ananta/routing/gobgp"
)

// DefaultProtocol is the kernel route protocol number of installed routes
// (RTPROT_BGP), used to recognise the Router's own routes.
const DefaultProtocol = 186

// ErrInvalidConfig: Config.Validate failed; the message names the field.
var ErrInvalidConfig = errors.New("router: invalid config")

// Config configures a Router.
type Config struct {
	// Speaker configures the BGP speaker; it must listen (ListenPort > 0).
	// Its Peers are the Muxes, usually Passive.
	Speaker gobgp.Config
	// Protocol is the kernel route protocol of installed routes; 0 means
	// DefaultProtocol. At start, routes of this protocol left by an earlier
	// run are removed.
	Protocol int
	// SkipSysctls leaves the namespace's sysctls alone.
	SkipSysctls bool
	// Logger: nil means slog.Default().
	Logger *slog.Logger `json:"-"`
}

// Validate checks c; errors wrap ErrInvalidConfig (or gobgp.ErrInvalidConfig
// for the Speaker's fields) and name the field.
func (c Config) Validate() error {
	if err := c.Speaker.Validate(); err != nil {
		return fmt.Errorf("router: Speaker: %w", err)
	}
	if c.Speaker.ListenPort <= 0 {
		return fmt.Errorf("%w: Speaker.ListenPort must be > 0: the router accepts sessions", ErrInvalidConfig)
	}
	if c.Protocol < 0 || c.Protocol > 255 || (c.Protocol > 0 && c.Protocol <= unix.RTPROT_STATIC) {
		return fmt.Errorf("%w: Protocol must be 0 or in 5..255 (not a kernel-reserved value), got %d", ErrInvalidConfig, c.Protocol)
	}
	return nil
}

// Router installs received VIP routes as kernel ECMP routes.
type Router struct {
	cfg   Config
	log   *slog.Logger
	sp    *gobgp.Speaker
	nl    *netlink.Handle
	proto int

	// mu guards installed.
	mu        sync.Mutex
	installed map[netip.Prefix][]netip.Addr

	stop      chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var sysctls = []string{
	"/proc/sys/net/ipv4/fib_multipath_hash_policy",
	"/proc/sys/net/ipv6/fib_multipath_hash_policy",
	"/proc/sys/net/ipv4/ip_forward",
	"/proc/sys/net/ipv6/conf/all/forwarding",
}

// New validates cfg, sets the sysctls, removes stale routes of the
// protocol, starts the speaker and the route installer, and returns.
func New(cfg Config) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	if cfg.Speaker.Logger == nil {
		cfg.Speaker.Logger = lg
	}
	proto := cfg.Protocol
	if proto == 0 {
		proto = DefaultProtocol
	}
	if !cfg.SkipSysctls {
		for _, p := range sysctls {
			if err := os.WriteFile(p, []byte("1\n"), 0); err != nil {
				return nil, fmt.Errorf("router: set sysctl: %w", err)
			}
		}
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("router: netlink: %w", err)
	}
	r := &Router{
		cfg: cfg, log: lg, nl: nl, proto: proto,
		installed: make(map[netip.Prefix][]netip.Addr),
		stop:      make(chan struct{}),
		loopDone:  make(chan struct{}),
	}
	if err := r.flushStale(); err != nil {
		nl.Close()
		return nil, err
	}
	sp, err := gobgp.New(cfg.Speaker)
	if err != nil {
		nl.Close()
		return nil, err
	}
	r.sp = sp
	go r.loop()
	return r, nil
}

// Speaker returns the Router's BGP speaker (for PeerStates and Paths).
func (r *Router) Speaker() *gobgp.Speaker { return r.sp }

// Routes returns the routes the Router has installed: prefix -> next hops,
// sorted.
func (r *Router) Routes() map[netip.Prefix][]netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[netip.Prefix][]netip.Addr, len(r.installed))
	for p, nhs := range r.installed {
		out[p] = slices.Clone(nhs)
	}
	return out
}

// Run blocks until ctx ends or Close is called, then closes the Router.
func (r *Router) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
	case <-r.stop:
	}
	return r.Close()
}

// Close stops the speaker and removes every installed route. It is
// idempotent.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		<-r.loopDone
		errs := []error{r.sp.Close()}
		r.mu.Lock()
		for p := range r.installed {
			errs = append(errs, r.del(p))
		}
		clear(r.installed)
		r.mu.Unlock()
		r.nl.Close()
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// resyncInterval bounds how long a missed change could go unnoticed (for
// example a failed netlink call); changes are normally applied as GoBGP
// reports them.
const resyncInterval = time.Second

func (r *Router) loop() {
	defer close(r.loopDone)
	tick := time.NewTicker(resyncInterval)
	defer tick.Stop()
	for {
		if err := r.reconcile(); err != nil {
			r.log.Warn("router: reconcile", "err", err)
		}
		select {
		case <-r.stop:
			return
		case <-r.sp.Changes():
		case <-tick.C:
		}
	}
}

// desired computes prefix -> next hops from the paths of established
// neighbours.
func (r *Router) desired(ctx context.Context) (map[netip.Prefix][]netip.Addr, error) {
	peers, err := r.sp.PeerStates(ctx)
	if err != nil {
		return nil, err
	}
	up := make(map[netip.Addr]bool)
	for _, p := range peers {
		if p.State == gobgp.StateEstablished {
			up[p.Address.Unmap()] = true
		}
	}
	paths, err := r.sp.Paths(ctx)
	if err != nil {
		return nil, err
	}
	want := make(map[netip.Prefix][]netip.Addr)
	for _, p := range paths {
		if !up[p.Peer] {
			continue
		}
		if !slices.Contains(want[p.Prefix], p.NextHop) {
			want[p.Prefix] = append(want[p.Prefix], p.NextHop)
		}
	}
	for _, nhs := range want {
		slices.SortFunc(nhs, netip.Addr.Compare)
	}
	return want, nil
}

func (r *Router) reconcile() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	want, err := r.desired(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for p, nhs := range want {
		if slices.Equal(r.installed[p], nhs) {
			continue
		}
		if err := r.replace(p, nhs); err != nil {
			errs = append(errs, err)
			continue
		}
		r.log.Debug("router: route installed", "prefix", p, "nexthops", nhs)
		r.installed[p] = nhs
	}
	for p := range r.installed {
		if _, ok := want[p]; ok {
			continue
		}
		if err := r.del(p); err != nil {
			errs = append(errs, err)
			continue
		}
		r.log.Debug("router: route removed", "prefix", p)
		delete(r.installed, p)
	}
	return errors.Join(errs...)
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// replace installs p with next hops nhs, replacing what was there.
func (r *Router) replace(p netip.Prefix, nhs []netip.Addr) error {
	rt := &netlink.Route{Dst: ipnet(p), Protocol: netlink.RouteProtocol(r.proto), Family: family(p)}
	if len(nhs) == 1 {
		rt.Gw = nhs[0].AsSlice()
	} else {
		for _, nh := range nhs {
			rt.MultiPath = append(rt.MultiPath, &netlink.NexthopInfo{Gw: nh.AsSlice()})
		}
	}
	if p.Addr().Is6() {
		// An IPv6 replace of a multipath route may keep siblings; delete
		// first so the route is exactly nhs.
		_ = r.nl.RouteDel(&netlink.Route{Dst: ipnet(p), Family: family(p), Protocol: netlink.RouteProtocol(r.proto)})
	}
	if err := r.nl.RouteReplace(rt); err != nil {
		return fmt.Errorf("router: install %s via %v: %w", p, nhs, err)
	}
	return nil
}

func (r *Router) del(p netip.Prefix) error {
	err := r.nl.RouteDel(&netlink.Route{Dst: ipnet(p), Family: family(p), Protocol: netlink.RouteProtocol(r.proto)})
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("router: remove %s: %w", p, err)
	}
	return nil
}

// flushStale removes routes of r.proto left by an earlier run.
func (r *Router) flushStale() error {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := r.nl.RouteListFiltered(fam, &netlink.Route{Protocol: netlink.RouteProtocol(r.proto)}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return fmt.Errorf("router: list routes: %w", err)
		}
		for _, rt := range routes {
			if err := r.nl.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("router: remove stale route %v: %w", rt.Dst, err)
			}
		}
	}
	return nil
}
