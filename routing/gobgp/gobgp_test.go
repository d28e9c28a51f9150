package gobgp_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/routing"
	"github.com/ananta-go/ananta/routing/gobgp"
	"github.com/ananta-go/ananta/routing/internal/muxproc"
)

func TestMain(m *testing.M) {
	muxproc.Main()
	os.Exit(m.Run())
}

func TestConfigValidate(t *testing.T) {
	good := gobgp.Config{
		ASN: 65001, RouterID: netip.MustParseAddr("198.18.1.2"), ListenPort: -1,
		Peers: []gobgp.PeerConfig{{Address: netip.MustParseAddr("198.18.1.1"), ASN: 65000}},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tt := range []struct {
		field string
		edit  func(c *gobgp.Config)
	}{
		{"ASN", func(c *gobgp.Config) { c.ASN = 0 }},
		{"RouterID", func(c *gobgp.Config) { c.RouterID = netip.Addr{} }},
		{"RouterID", func(c *gobgp.Config) { c.RouterID = netip.MustParseAddr("2001:db8::1") }},
		{"ListenPort", func(c *gobgp.Config) { c.ListenPort = 70000 }},
		{"ListenAddresses[0]", func(c *gobgp.Config) { c.ListenAddresses = []netip.Addr{{}} }},
		{"Peers[0].Address", func(c *gobgp.Config) { c.Peers[0].Address = netip.Addr{} }},
		{"Peers[1].Address", func(c *gobgp.Config) { c.Peers = append(c.Peers, c.Peers[0]) }},
		{"Peers[0].ASN", func(c *gobgp.Config) { c.Peers[0].ASN = 0 }},
		{"Peers[0].HoldTime", func(c *gobgp.Config) { c.Peers[0].HoldTime = 2 * time.Second }},
		{"Peers[0]: HoldTime", func(c *gobgp.Config) { c.Peers[0].HoldTime = 3500 * time.Millisecond }},
		{"Peers[0].KeepaliveInterval", func(c *gobgp.Config) { c.Peers[0].KeepaliveInterval = 3 * time.Second }},
		{"Peers[0].Passive", func(c *gobgp.Config) { c.Peers[0].Passive = true }},
		{"Peers[0].Password", func(c *gobgp.Config) { c.Peers[0].Password = strings.Repeat("x", 81) }},
	} {
		c := good
		c.Peers = append([]gobgp.PeerConfig(nil), good.Peers...)
		tt.edit(&c)
		err := c.Validate()
		if !errors.Is(err, gobgp.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("config with bad %s: Validate() = %v, want ErrInvalidConfig naming %s", tt.field, err, tt.field)
		}
		if _, err := gobgp.New(c); !errors.Is(err, gobgp.ErrInvalidConfig) {
			t.Errorf("New with bad %s: %v, want ErrInvalidConfig", tt.field, err)
		}
	}
	// Hold time 0 (default) and >= 3 s are fine.
	c := good
	c.Peers = []gobgp.PeerConfig{{Address: netip.MustParseAddr("198.18.1.1"), ASN: 65000, HoldTime: 30 * time.Second, KeepaliveInterval: 10 * time.Second}}
	if err := c.Validate(); err != nil {
		t.Errorf("hold 30s keepalive 10s: %v", err)
	}
}

func TestSpeakerAnnouncerSemantics(t *testing.T) {
	// No peers and no listener: no sockets, no privileges needed.
	s, err := gobgp.New(gobgp.Config{ASN: 65001, RouterID: netip.MustParseAddr("198.18.1.2"), ListenPort: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r4 := routing.Route{Prefix: netip.MustParsePrefix("198.19.0.30/32"), NextHop: netip.MustParseAddr("198.18.1.2"), Communities: []uint32{1}, MED: 3}
	r6 := routing.Route{Prefix: netip.MustParsePrefix("2001:db8:19::30/128"), NextHop: netip.MustParseAddr("2001:db8:1::2")}
	if err := s.Announce(ctx, routing.Route{Prefix: netip.MustParsePrefix("198.19.0.0/24"), NextHop: r4.NextHop}); !errors.Is(err, routing.ErrInvalidRoute) {
		t.Fatalf("non-host prefix: %v", err)
	}
	for _, r := range []routing.Route{r4, r6, r4} {
		if err := s.Announce(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	r4.MED = 4
	if err := s.Announce(ctx, r4); err != nil {
		t.Fatal(err)
	}
	if rs := s.Routes(); len(rs) != 2 || !rs[0].Equal(r4) || !rs[1].Equal(r6) {
		t.Fatalf("Routes() = %+v", rs)
	}
	if err := s.Withdraw(ctx, r6.Prefix); err != nil {
		t.Fatal(err)
	}
	if err := s.Withdraw(ctx, r6.Prefix); err != nil {
		t.Fatalf("second withdraw: %v", err)
	}
	if rs := s.Routes(); len(rs) != 1 {
		t.Fatalf("Routes() after withdraw = %+v", rs)
	}
	if ps, err := s.PeerStates(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("PeerStates() = %v, %v", ps, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if rs := s.Routes(); len(rs) != 0 {
		t.Fatalf("routes after Close: %+v", rs)
	}
	if err := s.Announce(ctx, r4); !errors.Is(err, routing.ErrClosed) {
		t.Fatalf("Announce after Close: %v", err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
}
