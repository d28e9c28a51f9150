// Package routing is how a Mux tells the network which VIPs it serves: an
// Announcer announces a VIP host prefix (/32 or /128) with a next hop,
// communities and a MED, withdraws it, and withdraws everything on Close.
// Routers spread a VIP over every Mux that announces it (ECMP); a Mux that
// stops announcing, or whose BGP session dies, stops receiving traffic.
//
// Use routing/gobgp for the default implementation (GoBGP v3 in-process),
// Memory for tests and for users' own policy tests, and routing/router for a
// small BGP router that installs received VIPs as kernel ECMP routes (tests
// and the all-in-one example).
package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Errors returned by Announcers and by Route.Validate.
var (
	// ErrInvalidRoute: the route is not a host prefix, or its next hop is
	// missing or of another address family.
	ErrInvalidRoute = errors.New("routing: invalid route")
	// ErrClosed: the Announcer has been closed.
	ErrClosed = errors.New("routing: announcer closed")
)

// Route is a VIP announcement.
type Route struct {
	// Prefix is the VIP as a host prefix: /32 for IPv4, /128 for IPv6.
	Prefix netip.Prefix
	// NextHop is where routers send the VIP's packets (the Mux's fabric
	// address); it must be of the same family as Prefix.
	NextHop netip.Addr
	// Communities are BGP communities (RFC 1997) attached to the route,
	// each as ASN<<16 | value.
	Communities []uint32
	// MED is the multi-exit discriminator; 0 is a valid value.
	MED uint32
}

// Validate reports whether r can be announced. Errors wrap ErrInvalidRoute
// and name the field.
func (r Route) Validate() error {
	switch {
	case !r.Prefix.IsValid():
		return fmt.Errorf("%w: Prefix is not set", ErrInvalidRoute)
	case r.Prefix.Addr().Zone() != "":
		return fmt.Errorf("%w: Prefix %s has a zone", ErrInvalidRoute, r.Prefix)
	case r.Prefix.Addr().Is4In6():
		return fmt.Errorf("%w: Prefix %s is an IPv4-mapped IPv6 address; use the IPv4 form", ErrInvalidRoute, r.Prefix)
	case !r.Prefix.IsSingleIP():
		return fmt.Errorf("%w: Prefix %s is not a host prefix (/32 or /128)", ErrInvalidRoute, r.Prefix)
	case !r.NextHop.IsValid():
		return fmt.Errorf("%w: NextHop is not set", ErrInvalidRoute)
	case r.NextHop.Is4() != r.Prefix.Addr().Is4() || r.NextHop.Is4In6():
		return fmt.Errorf("%w: NextHop %s is not of the family of Prefix %s", ErrInvalidRoute, r.NextHop, r.Prefix)
	case r.NextHop.IsUnspecified() || r.NextHop.IsMulticast():
		return fmt.Errorf("%w: NextHop %s is not a unicast address", ErrInvalidRoute, r.NextHop)
	}
	return nil
}

// Clone returns a copy of r that shares no memory with it.
func (r Route) Clone() Route {
	r.Communities = slices.Clone(r.Communities)
	return r
}

// Equal reports whether r and o announce the same thing.
func (r Route) Equal(o Route) bool {
	return r.Prefix == o.Prefix && r.NextHop == o.NextHop && r.MED == o.MED && slices.Equal(r.Communities, o.Communities)
}

// Announcer announces VIP routes to the network.
//
// Calling rules: methods are safe for concurrent use. Announce of a prefix
// already announced replaces its attributes (next hop, communities, MED);
// announcing an identical route again is a no-op. Withdraw of a prefix not
// announced is a no-op and returns nil. Close withdraws every route, then
// releases the Announcer; it is idempotent, and after it Announce and
// Withdraw return ErrClosed. A route announced while no BGP session is up is
// kept and sent when a session comes up.
type Announcer interface {
	// Announce announces r. It returns an error wrapping ErrInvalidRoute
	// if r.Validate fails, ErrClosed after Close, or ctx's error.
	Announce(ctx context.Context, r Route) error
	// Withdraw withdraws the route for prefix. It returns ErrClosed after
	// Close, or ctx's error.
	Withdraw(ctx context.Context, prefix netip.Prefix) error
	// Close withdraws every route and releases the Announcer.
	Close() error
}
