package gobgp_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

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
