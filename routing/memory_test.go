package routing_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ananta-go/ananta/routing"
)

var (
	vip4 = netip.MustParsePrefix("198.19.0.10/32")
	vip6 = netip.MustParsePrefix("2001:db8:19::10/128")
	nh4  = netip.MustParseAddr("198.18.1.2")
	nh6  = netip.MustParseAddr("2001:db8:18:1::2")
)

func TestRouteValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    routing.Route
		ok   bool
	}{
		{"v4", routing.Route{Prefix: vip4, NextHop: nh4}, true},
		{"v6", routing.Route{Prefix: vip6, NextHop: nh6, Communities: []uint32{65000<<16 | 1}, MED: 10}, true},
		{"no-prefix", routing.Route{NextHop: nh4}, false},
		{"not-host-v4", routing.Route{Prefix: netip.MustParsePrefix("198.19.0.0/24"), NextHop: nh4}, false},
		{"not-host-v6", routing.Route{Prefix: netip.MustParsePrefix("2001:db8::/64"), NextHop: nh6}, false},
		{"no-nexthop", routing.Route{Prefix: vip4}, false},
		{"family-mismatch-4-6", routing.Route{Prefix: vip4, NextHop: nh6}, false},
		{"family-mismatch-6-4", routing.Route{Prefix: vip6, NextHop: nh4}, false},
		{"mapped", routing.Route{Prefix: netip.MustParsePrefix("::ffff:198.19.0.10/128"), NextHop: nh6}, false},
		{"unspecified-nexthop", routing.Route{Prefix: vip4, NextHop: netip.IPv4Unspecified()}, false},
	} {
		err := tt.r.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, routing.ErrInvalidRoute) {
			t.Errorf("%s: error %v does not wrap ErrInvalidRoute", tt.name, err)
		}
	}
}

func TestMemorySemantics(t *testing.T) {
	ctx := context.Background()
	m := routing.NewMemory()
	r4 := routing.Route{Prefix: vip4, NextHop: nh4, Communities: []uint32{1, 2}, MED: 5}
	if err := m.Announce(ctx, r4); err != nil {
		t.Fatal(err)
	}
	// The caller's slice is copied.
	r4.Communities[0] = 99
	if got, _ := m.Lookup(vip4); got.Communities[0] != 1 {
		t.Fatalf("Memory kept the caller's slice: %v", got.Communities)
	}
	r4.Communities[0] = 1
	// Identical re-announce: no event. Changed attributes: replace.
	if err := m.Announce(ctx, r4); err != nil {
		t.Fatal(err)
	}
	if n := len(m.Events()); n != 1 {
		t.Fatalf("identical re-announce recorded an event: %d events", n)
	}
	r4b := r4
	r4b.MED = 7
	if err := m.Announce(ctx, r4b); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Lookup(vip4); got.MED != 7 {
		t.Fatalf("re-announce did not replace: MED %d", got.MED)
	}
	if err := m.Announce(ctx, routing.Route{Prefix: vip4, NextHop: nh6}); !errors.Is(err, routing.ErrInvalidRoute) {
		t.Fatalf("invalid route: %v", err)
	}
	r6 := routing.Route{Prefix: vip6, NextHop: nh6}
	if err := m.Announce(ctx, r6); err != nil {
		t.Fatal(err)
	}
	if rs := m.Routes(); len(rs) != 2 || rs[0].Prefix != vip4 || rs[1].Prefix != vip6 {
		t.Fatalf("Routes() = %v", rs)
	}
	// Withdraw of something not announced is a no-op.
	if err := m.Withdraw(ctx, netip.MustParsePrefix("198.19.0.99/32")); err != nil {
		t.Fatal(err)
	}
	if err := m.Withdraw(ctx, vip6); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup(vip6); ok {
		t.Fatal("withdrawn route still there")
	}
	// Wait sees a change made by another goroutine.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	go func() { _ = m.Announce(ctx, r6) }()
	if err := m.Wait(wctx, func(rs []routing.Route) bool { return len(rs) == 2 }); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	// Close withdraws everything and is idempotent.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if rs := m.Routes(); len(rs) != 0 {
		t.Fatalf("routes after Close: %v", rs)
	}
	ev := m.Events()
	want := []routing.Event{
		{Route: routing.Route{Prefix: vip4, NextHop: nh4, Communities: []uint32{1, 2}, MED: 5}},
		{Route: r4b},
		{Route: r6},
		{Withdraw: true, Route: routing.Route{Prefix: vip6}},
		{Route: r6},
		{Withdraw: true, Route: routing.Route{Prefix: vip4}},
		{Withdraw: true, Route: routing.Route{Prefix: vip6}},
	}
	if len(ev) != len(want) {
		t.Fatalf("events = %+v, want %+v", ev, want)
	}
	for i := range want {
		if ev[i].Withdraw != want[i].Withdraw || !ev[i].Route.Equal(want[i].Route) {
			t.Errorf("event %d = %+v, want %+v", i, ev[i], want[i])
		}
	}
	if err := m.Announce(ctx, r4); !errors.Is(err, routing.ErrClosed) {
		t.Fatalf("Announce after Close: %v", err)
	}
	if err := m.Withdraw(ctx, vip4); !errors.Is(err, routing.ErrClosed) {
		t.Fatalf("Withdraw after Close: %v", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := routing.NewMemory().Announce(cctx, r4); !errors.Is(err, context.Canceled) {
		t.Fatalf("Announce with cancelled ctx: %v", err)
	}
}
