package snat_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/snat"
)

// The Manager leases a range of a VIP's ports to a DIP; the Muxes route
// return traffic for those ports to the DIP's host.
func ExampleLeases() {
	vip := netip.MustParseAddr("198.19.0.10")
	dip := netip.MustParseAddr("10.0.0.1")
	host := netip.MustParseAddr("198.18.10.2")
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

	l, _ := snat.NewLeases(snat.LeasesConfig{})
	_ = l.ConfigureVIP(vip, snat.VIPConfig{Reserved: []ananta.PortRange{{First: 80, Last: 80}}})
	lease, _ := l.Allocate(vip, dip, host, 64, now, time.Minute)
	fmt.Println(lease.Range, lease.Expiry.Format(time.TimeOnly))

	owner, _ := l.Owner(vip, 1050)
	fmt.Println(owner.DIP, owner.Host)

	fmt.Println(len(l.Expire(now.Add(time.Minute))), "expired")
	// Output:
	// 1024-1087 00:01:00
	// 10.0.0.1 198.18.10.2
	// 1 expired
}

// The Host Agent picks VIP ports for outbound flows from its leased ranges:
// TCP ports are reused across destinations, a UDP source port keeps one VIP
// port for all its destinations.
func ExamplePool() {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p, _ := snat.NewPool(snat.PoolConfig{})
	_ = p.Add(ananta.PortRange{First: 1024, Last: 1031}, now)

	a := netip.MustParseAddrPort("198.18.200.1:443")
	b := netip.MustParseAddrPort("198.18.200.2:443")
	p1, _ := p.Acquire(ananta.ProtocolTCP, a, now)
	p2, _ := p.Acquire(ananta.ProtocolTCP, a, now)
	p3, _ := p.Acquire(ananta.ProtocolTCP, b, now)
	fmt.Println(p1, p2, p3)

	u1, _ := p.AcquireUDP(5353, a, now)
	u2, _ := p.AcquireUDP(5353, b, now)
	fmt.Println(u1, u2)
	// Output:
	// 1024 1025 1024
	// 1024 1024
}
