package snat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
)

var (
	vip1  = netip.MustParseAddr("198.19.0.10")
	vip2  = netip.MustParseAddr("198.19.0.11")
	vip6  = netip.MustParseAddr("2001:db8::10")
	host1 = netip.MustParseAddr("198.18.10.2")
	host2 = netip.MustParseAddr("198.18.11.2")
	t0    = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ttl   = time.Minute
)

func dipN(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}) }

func hostN(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }

func newLeases(t testing.TB, cfg LeasesConfig, vips ...netip.Addr) *Leases {
	t.Helper()
	l, err := NewLeases(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vips {
		if err := l.ConfigureVIP(v, VIPConfig{Reserved: []ananta.PortRange{pr(8080, 8080)}}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func snapshot(t testing.TB, l *Leases) []byte {
	t.Helper()
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkInvariants verifies, from the public API, that the leases of every
// VIP are disjoint, avoid reserved ports, sum to PortsHeld per DIP and are
// found by Owner.
func checkInvariants(t *testing.T, l *Leases) {
	t.Helper()
	total := 0
	for _, v := range l.VIPs() {
		cfg, _ := l.VIPConfig(v)
		ls := l.VIPLeases(v)
		total += len(ls)
		held := map[netip.Addr]int{}
		for i, x := range ls {
			if x.VIP != v {
				t.Fatalf("lease %+v listed under vip %s", x, v)
			}
			if i > 0 && ls[i-1].Range.Last >= x.Range.First {
				t.Fatalf("vip %s: leases %s and %s overlap or are out of order", v, ls[i-1].Range, x.Range)
			}
			for _, r := range cfg.Reserved {
				if r.First <= x.Range.Last && x.Range.First <= r.Last {
					t.Fatalf("vip %s: lease %s covers reserved %s", v, x.Range, r)
				}
			}
			held[x.DIP] += x.Range.Len()
			for _, p := range []uint16{x.Range.First, x.Range.Last, x.Range.First + uint16(x.Range.Len()/2)} {
				if o, ok := l.Owner(v, p); !ok || o != x {
					t.Fatalf("Owner(%s, %d) = %+v, %v; want %+v", v, p, o, ok, x)
				}
			}
		}
		for _, d := range l.DIPs(v) {
			if d.Ports != held[d.DIP] || l.PortsHeld(v, d.DIP) != d.Ports || d.Ports > l.Config().MaxPortsPerDIP {
				t.Fatalf("vip %s dip %s: DIPs says %d ports, PortsHeld %d, leases sum %d", v, d.DIP, d.Ports, l.PortsHeld(v, d.DIP), held[d.DIP])
			}
			if got := l.DIPLeases(v, d.DIP); len(got) != d.Leases {
				t.Fatalf("vip %s dip %s: %d leases, DIPs says %d", v, d.DIP, len(got), d.Leases)
			}
			delete(held, d.DIP)
		}
		if len(held) != 0 {
			t.Fatalf("vip %s: DIPs misses %v", v, held)
		}
	}
	if total != l.Len() {
		t.Fatalf("Len %d, leases listed %d", l.Len(), total)
	}
}

func TestLeasesAllocateNoOverlapAcrossDIPs(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1, vip2)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		v := []netip.Addr{vip1, vip2}[rng.IntN(2)]
		d := dipN(rng.IntN(40))
		size := MinRangeSize << rng.IntN(5)
		_, err := l.Allocate(v, d, host1, size, t0.Add(time.Duration(i)*time.Millisecond), ttl)
		if err != nil && !errors.Is(err, ErrExhausted) && !errors.Is(err, ErrLimit) {
			t.Fatal(err)
		}
		if rng.IntN(4) == 0 {
			if ls := l.VIPLeases(v); len(ls) > 0 {
				x := ls[rng.IntN(len(ls))]
				if _, err := l.Release(v, x.Range, x.DIP); err != nil {
					t.Fatal(err)
				}
			}
		}
		if i%100 == 0 {
			checkInvariants(t, l)
		}
	}
	checkInvariants(t, l)
}

func TestLeasesHolderOnly(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1)
	a, err := l.Allocate(vip1, dipN(1), host1, 64, t0, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// Best fit: reserving 8080 split the block around it, and the smallest
	// free block of 64 ports is 8128-8191.
	want := Lease{VIP: vip1, Range: pr(8128, 8191), DIP: dipN(1), Host: host1, Expiry: t0.Add(ttl)}
	if a != want {
		t.Fatalf("Allocate = %+v, want %+v", a, want)
	}
	before := snapshot(t, l)
	if _, err := l.Renew(vip1, a.Range, dipN(2), t0, ttl); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("Renew by non-holder = %v", err)
	}
	if _, err := l.Release(vip1, a.Range, dipN(2)); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("Release by non-holder = %v", err)
	}
	if _, err := l.Release(vip1, pr(1024, 1031), dipN(1)); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("Release of a sub-range = %v", err)
	}
	if _, err := l.Renew(vip1, pr(2048, 2111), dipN(1), t0, ttl); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("Renew of an unleased range = %v", err)
	}
	if !bytes.Equal(before, snapshot(t, l)) {
		t.Fatal("rejected calls changed the state")
	}
	r, err := l.Renew(vip1, a.Range, dipN(1), t0.Add(30*time.Second), ttl)
	if err != nil || r.Expiry != t0.Add(90*time.Second) {
		t.Fatalf("Renew by holder = %+v, %v", r, err)
	}
	if got, err := l.Release(vip1, a.Range, dipN(1)); err != nil || got.Range != a.Range {
		t.Fatalf("Release by holder = %+v, %v", got, err)
	}
	if l.Len() != 0 || l.Available(vip1) != 65536-1024-8 {
		t.Fatalf("after release: Len %d, Available %d", l.Len(), l.Available(vip1))
	}
	if _, err := l.Release(vip1, a.Range, dipN(1)); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("second Release = %v", err)
	}
	// ForceRelease ignores the holder.
	b, _ := l.Allocate(vip1, dipN(3), host1, 8, t0, ttl)
	if got, err := l.ForceRelease(vip1, b.Range); err != nil || got != b {
		t.Fatalf("ForceRelease = %+v, %v", got, err)
	}
	if _, err := l.ForceRelease(vip1, b.Range); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("second ForceRelease = %v", err)
	}
}

func TestLeasesExpire(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1, vip2)
	rng := rand.New(rand.NewPCG(3, 4))
	type key struct {
		v netip.Addr
		r ananta.PortRange
	}
	expiry := map[key]time.Time{}
	for i := range 400 {
		v := []netip.Addr{vip2, vip1}[i%2]
		d := time.Duration(1+rng.IntN(60)) * time.Second
		x, err := l.Allocate(v, dipN(i%50), hostN(i%50), 8, t0, d)
		if err != nil {
			t.Fatal(err)
		}
		expiry[key{v, x.Range}] = x.Expiry
	}
	// Renew some: they move.
	for _, x := range l.VIPLeases(vip1)[:20] {
		y, err := l.Renew(vip1, x.Range, x.DIP, t0.Add(10*time.Second), 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		expiry[key{vip1, x.Range}] = y.Expiry
	}
	if l.Expire(t0) != nil {
		t.Fatal("Expire at t0 reclaimed leases")
	}
	for _, at := range []time.Duration{10 * time.Second, 10 * time.Second, 30 * time.Second, 59 * time.Second, 60 * time.Second, 129 * time.Second, 130 * time.Second} {
		now := t0.Add(at)
		var want []Lease
		for _, v := range l.VIPs() {
			for _, x := range l.VIPLeases(v) {
				if !x.Expiry.After(now) {
					want = append(want, x)
				}
			}
		}
		slices.SortFunc(want, func(a, b Lease) int {
			if c := a.Expiry.Compare(b.Expiry); c != 0 {
				return c
			}
			if c := a.VIP.Compare(b.VIP); c != 0 {
				return c
			}
			return int(a.Range.First) - int(b.Range.First)
		})
		got := l.Expire(now)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Expire(t0+%s) = %d leases, want %d", at, len(got), len(want))
		}
		for _, x := range got {
			if expiry[key{x.VIP, x.Range}] != x.Expiry {
				t.Fatalf("expired lease %+v has the wrong expiry", x)
			}
			delete(expiry, key{x.VIP, x.Range})
			if _, ok := l.Owner(x.VIP, x.Range.First); ok {
				t.Fatalf("expired lease %s still owns its ports", x.Range)
			}
		}
		if len(expiry) != l.Len() {
			t.Fatalf("after Expire(t0+%s): %d leases left, want %d", at, l.Len(), len(expiry))
		}
		if next, ok := l.NextExpiry(); ok && !next.After(now) {
			t.Fatalf("NextExpiry %s not after %s", next, now)
		}
		checkInvariants(t, l)
	}
	if l.Len() != 0 || l.Available(vip1) != 65536-1024-8 {
		t.Fatalf("after all expired: Len %d Available %d", l.Len(), l.Available(vip1))
	}
}

func TestLeasesOwnerIsReturnMap(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1, vip6)
	a, _ := l.Allocate(vip1, dipN(1), host1, 16, t0, ttl)
	b, _ := l.Allocate(vip1, dipN(2), host2, 8, t0, ttl)
	c, _ := l.Allocate(vip6, netip.MustParseAddr("fd00::2"), host2, 8, t0, ttl)
	for _, tc := range []struct {
		vip  netip.Addr
		port uint16
		want *Lease
	}{
		{vip1, a.Range.First, &a},
		{vip1, a.Range.Last, &a},
		{vip1, b.Range.First + 3, &b},
		{vip1, b.Range.Last + 1, nil},
		{vip1, 80, nil},
		{vip2, a.Range.First, nil},
		{vip6, c.Range.First, &c},
	} {
		got, ok := l.Owner(tc.vip, tc.port)
		if ok != (tc.want != nil) || (ok && got != *tc.want) {
			t.Errorf("Owner(%s, %d) = %+v, %v", tc.vip, tc.port, got, ok)
		}
	}
	if got, _ := l.Owner(vip1, a.Range.First); got.DIP != dipN(1) || got.Host != host1 {
		t.Fatalf("owner of %d: %+v", a.Range.First, got)
	}
}

func TestPreallocateAzureTable(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{1, 1024}, {50, 1024}, {51, 512}, {100, 512}, {101, 256}, {200, 256},
		{201, 128}, {400, 128}, {401, 64}, {800, 64}, {801, 32}, {1500, 32},
	} {
		l := newLeases(t, LeasesConfig{}, vip1)
		dips := make([]DIPHost, tc.n)
		for i := range dips {
			dips[i] = DIPHost{DIP: dipN(i + 1), Host: hostN(i/8 + 1)}
		}
		if got := l.PreallocSize(vip1, tc.n); got != tc.want {
			t.Fatalf("n=%d: PreallocSize = %d, want %d", tc.n, got, tc.want)
		}
		got, err := l.Preallocate(vip1, dips, t0, ttl)
		if err != nil {
			t.Fatalf("n=%d: %v", tc.n, err)
		}
		if len(got) != tc.n {
			t.Fatalf("n=%d: %d leases", tc.n, len(got))
		}
		for i, x := range got {
			if x.DIP != dips[i].DIP || x.Host != dips[i].Host || x.Range.Len() != tc.want {
				t.Fatalf("n=%d: lease %d = %+v, want %d ports for %s", tc.n, i, x, tc.want, dips[i].DIP)
			}
		}
		checkInvariants(t, l)
		// Again: every DIP holds enough, nothing changes.
		before := snapshot(t, l)
		if again, err := l.Preallocate(vip1, dips, t0.Add(time.Second), ttl); err != nil || len(again) != 0 {
			t.Fatalf("n=%d: second Preallocate = %d leases, %v", tc.n, len(again), err)
		}
		if !bytes.Equal(before, snapshot(t, l)) {
			t.Fatalf("n=%d: no-op Preallocate changed the state", tc.n)
		}
	}
}

func TestPreallocateOverridesAndTopUp(t *testing.T) {
	l := newLeases(t, LeasesConfig{})
	if err := l.ConfigureVIP(vip1, VIPConfig{PoolSize: 300}); err != nil {
		t.Fatal(err)
	}
	dips := []DIPHost{{dipN(1), host1}, {dipN(2), host1}, {dipN(3), host2}}
	// dip 2 already holds 8 ports, dip 3 holds 256.
	if _, err := l.Allocate(vip1, dipN(2), host1, 8, t0, ttl); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Allocate(vip1, dipN(3), host2, 256, t0, ttl); err != nil {
		t.Fatal(err)
	}
	got, err := l.Preallocate(vip1, dips, t0, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// PoolSize 300 -> 128 per DIP: dip1 gets 128, dip2 (8 held) gets 128, dip3 is skipped.
	if len(got) != 2 || got[0].DIP != dipN(1) || got[0].Range.Len() != 128 || got[1].DIP != dipN(2) || got[1].Range.Len() != 128 {
		t.Fatalf("Preallocate = %+v", got)
	}
	if l.PortsHeld(vip1, dipN(2)) != 136 || l.PortsHeld(vip1, dipN(3)) != 256 {
		t.Fatalf("held: %d, %d", l.PortsHeld(vip1, dipN(2)), l.PortsHeld(vip1, dipN(3)))
	}
	if err := l.ConfigureVIP(vip1, VIPConfig{PortsPerDIP: 512}); err != nil {
		t.Fatal(err)
	}
	got, err = l.Preallocate(vip1, dips[:1], t0, ttl)
	if err != nil || len(got) != 1 || got[0].Range.Len() != 512 {
		t.Fatalf("Preallocate with PortsPerDIP 512 = %+v, %v", got, err)
	}
	if l.PortsHeld(vip1, dipN(1)) != 640 {
		t.Fatalf("dip1 holds %d", l.PortsHeld(vip1, dipN(1)))
	}
	checkInvariants(t, l)
}

func TestVIPConfigOf(t *testing.T) {
	b := func(i int) ananta.Backend { return ananta.Backend{DIP: dipN(i), Host: host1, Weight: 1} }
	c := ananta.VIPConfig{
		VIP: vip1,
		Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolTCP, Port: 80, Backends: []ananta.Backend{b(1), b(2), b(3)}},
			{Protocol: ananta.ProtocolTCP, Port: 443, Backends: []ananta.Backend{b(2), b(3), b(4)}},
		},
		SNAT: ananta.SNATConfig{Enabled: true, PortsPerDIP: 64, Reserved: []ananta.PortRange{pr(80, 80), pr(443, 443)}},
	}
	got := VIPConfigOf(&c)
	if got.PoolSize != 4 || got.PortsPerDIP != 64 || len(got.Reserved) != 2 {
		t.Fatalf("VIPConfigOf = %+v", got)
	}
}

// TestLeasesHostileInput: invalid calls give the right error and leave the
// state byte-for-byte unchanged.
func TestLeasesHostileInput(t *testing.T) {
	l := newLeases(t, LeasesConfig{MaxPortsPerDIP: 1024}, vip1, vip6)
	held, err := l.Allocate(vip1, dipN(1), host1, 512, t0, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Allocate(vip1, dipN(2), host1, 64, t0, ttl); err != nil {
		t.Fatal(err)
	}
	// Fill vip6 completely so that every further allocation is exhausted.
	for _, size := range []int{1024, 8} {
		for i := 0; ; i++ {
			if _, err := l.Allocate(vip6, netip.AddrFrom16([16]byte{0xfd, 14: byte(size), 15: byte(i)}), host1, size, t0, ttl); err != nil {
				if !errors.Is(err, ErrExhausted) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	if l.Available(vip6) != 0 {
		t.Fatalf("vip6 has %d ports left", l.Available(vip6))
	}
	v6dip := netip.MustParseAddr("fd00::99")
	mapped := netip.MustParseAddr("::ffff:10.0.0.1")
	zoned := netip.MustParseAddr("fe80::1%eth0")
	cases := []struct {
		name string
		call func() error
		want error
	}{
		{"unknown vip", func() error { _, err := l.Allocate(vip2, dipN(1), host1, 8, t0, ttl); return err }, ErrUnknownVIP},
		{"zero vip", func() error { _, err := l.Allocate(netip.Addr{}, dipN(1), host1, 8, t0, ttl); return err }, ErrUnknownVIP},
		{"zero dip", func() error { _, err := l.Allocate(vip1, netip.Addr{}, host1, 8, t0, ttl); return err }, ErrInvalidAddr},
		{"unspecified dip", func() error {
			_, err := l.Allocate(vip1, netip.IPv4Unspecified(), host1, 8, t0, ttl)
			return err
		}, ErrInvalidAddr},
		{"multicast dip", func() error {
			_, err := l.Allocate(vip1, netip.MustParseAddr("224.0.0.1"), host1, 8, t0, ttl)
			return err
		}, ErrInvalidAddr},
		{"dip of other family", func() error { _, err := l.Allocate(vip1, v6dip, host1, 8, t0, ttl); return err }, ErrInvalidAddr},
		{"4in6 dip", func() error { _, err := l.Allocate(vip6, mapped, host1, 8, t0, ttl); return err }, ErrInvalidAddr},
		{"zoned dip", func() error { _, err := l.Allocate(vip6, zoned, host1, 8, t0, ttl); return err }, ErrInvalidAddr},
		{"zero host", func() error { _, err := l.Allocate(vip1, dipN(3), netip.Addr{}, 8, t0, ttl); return err }, ErrInvalidAddr},
		{"broadcast host", func() error {
			_, err := l.Allocate(vip1, dipN(3), netip.MustParseAddr("255.255.255.255"), 8, t0, ttl)
			return err
		}, ErrInvalidAddr},
		{"size 0", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 0, t0, ttl); return err }, ErrInvalidSize},
		{"size 12", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 12, t0, ttl); return err }, ErrInvalidSize},
		{"size 65536", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 65536, t0, ttl); return err }, ErrInvalidSize},
		{"size -8", func() error { _, err := l.Allocate(vip1, dipN(3), host1, -8, t0, ttl); return err }, ErrInvalidSize},
		{"zero time", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 8, time.Time{}, ttl); return err }, ErrInvalidTime},
		{"zero ttl", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 8, t0, 0); return err }, ErrInvalidTime},
		{"negative ttl", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 8, t0, -time.Second); return err }, ErrInvalidTime},
		{"huge ttl", func() error { _, err := l.Allocate(vip1, dipN(3), host1, 8, t0, 1000*time.Hour); return err }, ErrInvalidTime},
		{"expiry overflow", func() error {
			_, err := l.Allocate(vip1, dipN(3), host1, 8, time.Unix(0, 1<<63-1), time.Hour)
			return err
		}, ErrInvalidTime},
		{"over limit", func() error { _, err := l.Allocate(vip1, dipN(1), host1, 1024, t0, ttl); return err }, ErrLimit},
		{"exhausted", func() error { _, err := l.Allocate(vip6, v6dip, host1, 8, t0, ttl); return err }, ErrExhausted},
		{"renew unknown vip", func() error { _, err := l.Renew(vip2, held.Range, dipN(1), t0, ttl); return err }, ErrUnknownVIP},
		{"renew bad ttl", func() error { _, err := l.Renew(vip1, held.Range, dipN(1), t0, 0); return err }, ErrInvalidTime},
		{"renew zero time", func() error { _, err := l.Renew(vip1, held.Range, dipN(1), time.Time{}, ttl); return err }, ErrInvalidTime},
		{"renewall bad ttl", func() error { _, err := l.RenewAll(vip1, dipN(1), t0, 0); return err }, ErrInvalidTime},
		{"release unknown vip", func() error { _, err := l.Release(vip2, held.Range, dipN(1)); return err }, ErrUnknownVIP},
		{"release garbage range", func() error { _, err := l.Release(vip1, pr(5, 3), dipN(1)); return err }, ErrNotAllocated},
		{"force unknown", func() error { _, err := l.ForceRelease(vip1, pr(60000, 60007)); return err }, ErrNotAllocated},
		{"remove unknown vip", func() error { _, err := l.RemoveVIP(vip2); return err }, ErrUnknownVIP},
		{"configure zero vip", func() error { return l.ConfigureVIP(netip.Addr{}, VIPConfig{}) }, ErrInvalidAddr},
		{"configure bad ports per dip", func() error { return l.ConfigureVIP(vip1, VIPConfig{PortsPerDIP: 100}) }, ErrInvalidConfig},
		{"configure negative pool", func() error { return l.ConfigureVIP(vip1, VIPConfig{PoolSize: -1}) }, ErrInvalidConfig},
		{"configure overlapping reserved", func() error {
			return l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(100, 200), pr(150, 160)}})
		}, ErrOverlap},
		{"configure reserving a leased port", func() error {
			return l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(int(held.Range.First)+1, int(held.Range.First)+1)}})
		}, ErrReserved},
		{"preallocate duplicate", func() error {
			_, err := l.Preallocate(vip1, []DIPHost{{dipN(7), host1}, {dipN(8), host1}, {dipN(7), host2}}, t0, ttl)
			return err
		}, ErrDuplicate},
		{"preallocate zero host", func() error {
			_, err := l.Preallocate(vip1, []DIPHost{{dipN(7), host1}, {dipN(8), netip.Addr{}}}, t0, ttl)
			return err
		}, ErrInvalidAddr},
		{"preallocate exhausted rolls back", func() error {
			if err := l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(8080, 8080)}, PortsPerDIP: 1024}); err != nil {
				return err
			}
			defer l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(8080, 8080)}})
			dips := make([]DIPHost, 63) // 63 * 1024 ports do not fit
			for i := range dips {
				dips[i] = DIPHost{dipN(100 + i), host1}
			}
			_, err := l.Preallocate(vip1, dips, t0, ttl)
			return err
		}, ErrExhausted},
		{"preallocate over limit rolls back", func() error {
			if err := l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(8080, 8080)}, PortsPerDIP: 2048}); err != nil {
				return err
			}
			defer l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(8080, 8080)}})
			_, err := l.Preallocate(vip1, []DIPHost{{dipN(7), host1}}, t0, ttl)
			return err
		}, ErrLimit},
	}
	for _, tc := range cases {
		before := snapshot(t, l)
		err := tc.call()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if after := snapshot(t, l); !bytes.Equal(before, after) {
			t.Errorf("%s: state changed", tc.name)
		}
	}
	checkInvariants(t, l)
}

func TestLeasesLimit(t *testing.T) {
	if _, err := NewLeases(LeasesConfig{MaxPortsPerDIP: 4}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("MaxPortsPerDIP 4: %v", err)
	}
	if _, err := NewLeases(LeasesConfig{MaxPortsPerDIP: 70000}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("MaxPortsPerDIP 70000: %v", err)
	}
	l := newLeases(t, LeasesConfig{}, vip1)
	if l.Config().MaxPortsPerDIP != DefaultMaxPortsPerDIP {
		t.Fatalf("default limit %d", l.Config().MaxPortsPerDIP)
	}
	for range 2 {
		if _, err := l.Allocate(vip1, dipN(1), host1, 16384, t0, ttl); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Allocate(vip1, dipN(1), host1, 8, t0, ttl); !errors.Is(err, ErrLimit) {
		t.Fatalf("over default limit: %v", err)
	}
	if _, err := l.Allocate(vip1, dipN(2), host1, 8, t0, ttl); err != nil {
		t.Fatalf("another DIP: %v", err)
	}
	before := snapshot(t, l)
	if _, err := l.AllocateDemand(vip1, dipN(1), host1, t0, ttl); !errors.Is(err, ErrLimit) {
		t.Fatalf("AllocateDemand at the limit: %v", err)
	}
	if !bytes.Equal(before, snapshot(t, l)) {
		t.Fatal("failed AllocateDemand changed the state")
	}
}

func TestConfigureVIPKeepsLeases(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1)
	a, _ := l.Allocate(vip1, dipN(1), host1, 1024, t0, ttl)
	if err := l.ConfigureVIP(vip1, VIPConfig{Reserved: []ananta.PortRange{pr(3000, 3000), pr(80, 80)}, PortsPerDIP: 64}); err != nil {
		t.Fatal(err)
	}
	if got := l.VIPLeases(vip1); len(got) != 1 || got[0] != a {
		t.Fatalf("leases after reconfigure: %+v", got)
	}
	cfg, _ := l.VIPConfig(vip1)
	if !reflect.DeepEqual(cfg.Reserved, []ananta.PortRange{pr(80, 80), pr(3000, 3000)}) || cfg.PortsPerDIP != 64 {
		t.Fatalf("VIPConfig = %+v", cfg)
	}
	if _, err := l.AllocateDemand(vip1, dipN(2), host1, t0, ttl); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, l)
	ls, err := l.RemoveVIP(vip1)
	if err != nil || len(ls) != 2 || l.Len() != 0 || len(l.VIPs()) != 0 {
		t.Fatalf("RemoveVIP = %d leases, %v; Len %d", len(ls), err, l.Len())
	}
	if l.Expire(t0.Add(time.Hour)) != nil {
		t.Fatal("leases of a removed VIP expired later")
	}
}

func TestRenewAllAndReleaseDIP(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1)
	for range 3 {
		l.Allocate(vip1, dipN(1), host1, 8, t0, ttl)
	}
	l.Allocate(vip1, dipN(2), host1, 8, t0, ttl)
	got, err := l.RenewAll(vip1, dipN(1), t0.Add(time.Minute), ttl)
	if err != nil || len(got) != 3 {
		t.Fatalf("RenewAll = %d, %v", len(got), err)
	}
	if exp := l.Expire(t0.Add(ttl)); len(exp) != 1 || exp[0].DIP != dipN(2) {
		t.Fatalf("Expire = %+v", exp)
	}
	if got, _ := l.RenewAll(vip1, dipN(9), t0, ttl); got != nil {
		t.Fatalf("RenewAll of a DIP without leases = %+v", got)
	}
	rel, err := l.ReleaseDIP(vip1, dipN(1))
	if err != nil || len(rel) != 3 || l.Len() != 0 || l.PortsHeld(vip1, dipN(1)) != 0 {
		t.Fatalf("ReleaseDIP = %d, %v", len(rel), err)
	}
}

func TestAllocateDemandRampsAndDecays(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1)
	d := dipN(1)
	var sizes []int
	now := t0
	for range 6 { // six requests within one 10 s interval: slow start
		x, err := l.AllocateDemand(vip1, d, host1, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, x.Range.Len())
		now = now.Add(time.Second)
	}
	if want := []int{8, 8, 16, 32, 64, 128}; !reflect.DeepEqual(sizes, want) {
		t.Fatalf("sizes within an interval = %v, want %v", sizes, want)
	}
	// Quiet for a long time: back to the minimum.
	x, err := l.AllocateDemand(vip1, d, host1, now.Add(time.Hour), time.Hour)
	if err != nil || x.Range.Len() != 8 {
		t.Fatalf("after an idle hour: %d ports, %v", x.Range.Len(), err)
	}
	// The recommendation is capped (DefaultPredictMax) and fits the limit.
	l2 := newLeases(t, LeasesConfig{MaxPortsPerDIP: 3000}, vip1)
	for i := range 20 {
		if _, err := l2.AllocateDemand(vip1, d, host1, t0, time.Hour); err != nil {
			if errors.Is(err, ErrLimit) && i > 3 {
				break
			}
			t.Fatal(err)
		}
		if h := l2.PortsHeld(vip1, d); h > 3000 {
			t.Fatalf("holds %d ports over the limit", h)
		}
	}
	for _, x := range l2.DIPLeases(vip1, d) {
		if x.Range.Len() > DefaultPredictMax {
			t.Fatalf("lease of %d ports above the cap", x.Range.Len())
		}
	}
}

// randomOps applies n random operations with times from *now and returns a
// transcript of the results, so that two Leases can be compared.
func randomOps(l *Leases, rng *rand.Rand, now *time.Time, n int) []string {
	vips := []netip.Addr{vip1, vip2, vip6}
	var out []string
	for range n {
		*now = now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		v := vips[rng.IntN(len(vips))]
		d := dipN(rng.IntN(30))
		if v.Is6() {
			d = netip.AddrFrom16([16]byte{0xfd, 15: byte(rng.IntN(30))})
		}
		var res any
		var err error
		switch op := rng.IntN(12); op {
		case 0, 1, 2:
			res, err = l.Allocate(v, d, hostN(rng.IntN(5)), MinRangeSize<<rng.IntN(6), *now, time.Duration(1+rng.IntN(120))*time.Second)
		case 3, 4:
			res, err = l.AllocateDemand(v, d, hostN(rng.IntN(5)), *now, time.Duration(1+rng.IntN(120))*time.Second)
		case 5:
			if ls := l.VIPLeases(v); len(ls) > 0 {
				x := ls[rng.IntN(len(ls))]
				res, err = l.Renew(v, x.Range, x.DIP, *now, time.Minute)
			}
		case 6:
			if ls := l.VIPLeases(v); len(ls) > 0 {
				x := ls[rng.IntN(len(ls))]
				res, err = l.Release(v, x.Range, x.DIP)
			}
		case 7:
			res = l.Expire(*now)
		case 8:
			dips := make([]DIPHost, 1+rng.IntN(6))
			for i := range dips {
				dips[i] = DIPHost{dipN(100 + rng.IntN(200)), hostN(1)}
				if v.Is6() {
					dips[i].DIP = netip.AddrFrom16([16]byte{0xfe, 15: byte(rng.IntN(200))})
				}
			}
			res, err = l.Preallocate(v, dips, *now, time.Minute)
		case 9:
			res, err = l.RenewAll(v, d, *now, time.Minute)
		case 10:
			if ls := l.VIPLeases(v); len(ls) > 0 {
				res, err = l.ForceRelease(v, ls[rng.IntN(len(ls))].Range)
			}
		case 11:
			if rng.IntN(10) == 0 {
				res, err = l.RemoveVIP(v)
				l.ConfigureVIP(v, VIPConfig{Reserved: []ananta.PortRange{pr(8080, 8080), pr(uint16ToInt(rng), uint16ToInt(rng))}})
			}
		}
		out = append(out, fmt.Sprintf("%+v %v", res, err))
	}
	return out
}

func uint16ToInt(rng *rand.Rand) int { return 40000 + rng.IntN(8)*1000 }

func TestLeasesSnapshotRoundTrip(t *testing.T) {
	l := newLeases(t, LeasesConfig{MaxPortsPerDIP: 8192, Predictor: PredictorConfig{Interval: 5 * time.Second, Shift: 3, Horizon: 2, Max: 2048}}, vip1, vip2, vip6)
	rng := rand.New(rand.NewPCG(5, 6))
	now := t0
	randomOps(l, rng, &now, 3000)
	if l.Len() == 0 {
		t.Fatal("no leases to snapshot")
	}
	b1 := snapshot(t, l)
	r, _ := NewLeases(LeasesConfig{})
	if err := r.UnmarshalBinary(b1); err != nil {
		t.Fatal(err)
	}
	if b2 := snapshot(t, r); !bytes.Equal(b1, b2) {
		t.Fatal("re-marshalled snapshot differs")
	}
	if r.Config() != l.Config() {
		t.Fatalf("config %+v, want %+v", r.Config(), l.Config())
	}
	checkInvariants(t, r)
	// Behaviourally identical: the same operations give the same results.
	rngA, rngB := rand.New(rand.NewPCG(9, 9)), rand.New(rand.NewPCG(9, 9))
	nowA, nowB := now, now
	for round := range 20 {
		ta := randomOps(l, rngA, &nowA, 200)
		tb := randomOps(r, rngB, &nowB, 200)
		if !reflect.DeepEqual(ta, tb) {
			for i := range ta {
				if ta[i] != tb[i] {
					t.Fatalf("round %d op %d diverged:\n%s\n%s", round, i, ta[i], tb[i])
				}
			}
		}
		if !bytes.Equal(snapshot(t, l), snapshot(t, r)) {
			t.Fatalf("round %d: states diverged", round)
		}
	}
}

// TestLeasesDeterministic: two Leases fed the same calls end identical.
func TestLeasesDeterministic(t *testing.T) {
	a := newLeases(t, LeasesConfig{}, vip1, vip2, vip6)
	b := newLeases(t, LeasesConfig{}, vip1, vip2, vip6)
	ra, rb := rand.New(rand.NewPCG(11, 1)), rand.New(rand.NewPCG(11, 1))
	na, nb := t0, t0
	if !reflect.DeepEqual(randomOps(a, ra, &na, 4000), randomOps(b, rb, &nb, 4000)) {
		t.Fatal("transcripts differ")
	}
	if !bytes.Equal(snapshot(t, a), snapshot(t, b)) {
		t.Fatal("snapshots differ")
	}
}

func TestUnmarshalRejects(t *testing.T) {
	l := newLeases(t, LeasesConfig{}, vip1, vip6)
	l.Allocate(vip1, dipN(1), host1, 64, t0, ttl)
	l.Allocate(vip1, dipN(2), host2, 8, t0, ttl)
	l.Allocate(vip6, netip.MustParseAddr("fd00::1"), host2, 8, t0, ttl)
	good := snapshot(t, l)

	target := newLeases(t, LeasesConfig{}, vip2)
	target.Allocate(vip2, dipN(9), host1, 8, t0, ttl)
	before := snapshot(t, target)
	check := func(name string, data []byte) {
		t.Helper()
		if err := target.UnmarshalBinary(data); !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: err = %v, want ErrBadSnapshot", name, err)
		}
		if !bytes.Equal(before, snapshot(t, target)) {
			t.Fatalf("%s: failed restore changed the state", name)
		}
	}
	for n := range len(good) {
		check(fmt.Sprintf("truncated to %d", n), good[:n])
	}
	check("trailing byte", append(slices.Clone(good), 0))
	bad := slices.Clone(good)
	bad[4] = 2
	check("version 2", bad)
	bad = slices.Clone(good)
	bad[0] = 'X'
	check("bad magic", bad)
	check("nil", nil)
	// Hostile counts: a huge VIP count with nothing behind it.
	hdr := good[:5+4+8+2+4+4]
	check("huge vip count", append(slices.Clone(hdr), 0xff, 0xff, 0xff, 0xff))
	// Every single-byte corruption is either rejected or decodes to a state
	// that re-encodes to the same bytes.
	for i := range good {
		for _, x := range []byte{0x00, 0x01, 0x7f, 0xff, good[i] ^ 0x10} {
			data := slices.Clone(good)
			data[i] = x
			var r Leases
			if err := r.UnmarshalBinary(data); err == nil {
				if again := snapshot(t, &r); !bytes.Equal(again, data) {
					t.Fatalf("byte %d = %#x: accepted but re-encodes differently", i, x)
				}
			}
		}
	}
	// Crafted states: dip2's lease patched to overlap dip1's, to cover the
	// reserved port 8080, to start below 1024, to run past 65535, to be
	// misaligned.
	lc := newLeases(t, LeasesConfig{}, vip1)
	lc.Allocate(vip1, dipN(1), host1, 8, t0, ttl)
	lc.Allocate(vip1, dipN(2), host1, 8, t0, ttl)
	craft := snapshot(t, lc)
	at := bytes.Index(craft, []byte{4, 10, 0, 0, 2}) + 5 + 24 + 4 // dip2's first lease
	first := binary.BigEndian.Uint16(craft[at:])
	if first != lc.DIPLeases(vip1, dipN(2))[0].Range.First {
		t.Fatalf("offset arithmetic is off: found %d", first)
	}
	for _, tc := range []struct {
		name  string
		first uint16
		order byte
	}{
		{"overlap", lc.DIPLeases(vip1, dipN(1))[0].Range.First, 0},
		{"reserved", 8080, 0},
		{"below 1024", 1000, 0},
		{"past 65535", 65528, 1},
		{"misaligned", 1028, 0},
		{"order 13", 32768, 13},
	} {
		data := slices.Clone(craft)
		binary.BigEndian.PutUint16(data[at:], tc.first)
		data[at+2] = tc.order
		check(tc.name, data)
	}
	var r Leases
	if err := r.UnmarshalBinary(good); err != nil {
		t.Fatal(err)
	}
	if err := target.UnmarshalBinary(good); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshot(t, target), good) {
		t.Fatal("successful restore did not replace the state")
	}
}

func FuzzRestore(f *testing.F) {
	l := newLeases(f, LeasesConfig{}, vip1, vip6)
	f.Add(snapshot(f, l))
	l.Allocate(vip1, dipN(1), host1, 64, t0, ttl)
	l.Allocate(vip1, dipN(2), host2, 8, t0, ttl)
	l.Allocate(vip6, netip.MustParseAddr("fd00::1"), host2, 8, t0, ttl)
	l.AllocateDemand(vip1, dipN(2), host2, t0.Add(time.Second), ttl)
	f.Add(snapshot(f, l))
	f.Add([]byte("SNAT\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Leases
		if err := r.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("error %v does not match ErrBadSnapshot", err)
			}
			return
		}
		again := snapshot(t, &r)
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted input re-encodes differently:\n%x\n%x", data, again)
		}
		checkInvariants(t, &r)
		// The restored state is usable.
		for _, v := range r.VIPs() {
			d := dipN(1)
			if v.Is6() {
				d = netip.MustParseAddr("fd00::77")
			}
			r.Allocate(v, d, host1, 8, t0, ttl)
			r.Expire(t0)
		}
		checkInvariants(t, &r)
	})
}
