package mux

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/hashring"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Addr4: mux4}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	for _, tc := range []struct {
		field string
		mod   func(*Config)
	}{
		{"Addr4", func(c *Config) { c.Addr4 = netip.Addr{} }},
		{"Addr4", func(c *Config) { c.Addr4 = mux6 }},
		{"Addr4", func(c *Config) { c.Addr4 = netip.MustParseAddr("224.0.0.1") }},
		{"Addr6", func(c *Config) { c.Addr6 = mux4 }},
		{"SourcePrefix4", func(c *Config) { c.SourcePrefix4 = netip.MustParsePrefix("198.18.0.0/7") }},
		{"SourcePrefix4", func(c *Config) { c.SourcePrefix4 = netip.MustParsePrefix("198.18.0.1/24") }},
		{"SourcePrefix4", func(c *Config) { c.SourcePrefix4 = rss6 }},
		{"SourcePrefix6", func(c *Config) { c.SourcePrefix6 = netip.MustParsePrefix("2001:db8::/48") }},
		{"SourcePrefix6", func(c *Config) { c.SourcePrefix6 = netip.MustParsePrefix("2001:db8::1/64") }},
		{"MTU", func(c *Config) { c.MTU = 1280 }},
		{"MTU", func(c *Config) { c.MTU = 65536 }},
		{"FlowTableBytes", func(c *Config) { c.FlowTableBytes = 1000 }},
		{"FlowTableShards", func(c *Config) { c.FlowTableShards = 3 }},
		{"FlowTableShards", func(c *Config) { c.FlowTableShards = 4096; c.FlowTableBytes = MinFlowTableBytes }},
		{"UntrustedShare", func(c *Config) { c.UntrustedShare = 1 }},
		{"UntrustedShare", func(c *Config) { c.UntrustedShare = -0.1 }},
		{"UntrustedIdleTimeout", func(c *Config) { c.UntrustedIdleTimeout = time.Millisecond }},
		{"UntrustedIdleTimeout", func(c *Config) { c.UntrustedIdleTimeout = 3 * time.Hour }},
		{"DownBackendFlows", func(c *Config) { c.DownBackendFlows = 7 }},
		{"Maglev.Size", func(c *Config) { c.Maglev = hashring.Config{Size: 1000} }},
		{"TooBigRate", func(c *Config) { c.TooBigRate = -1 }},
		{"TooBigBurst", func(c *Config) { c.TooBigBurst = -1 }},
		{"TalkerWindow", func(c *Config) { c.TalkerWindow = time.Millisecond }},
		{"Links[0].In", func(c *Config) { c.Links = []Link{{}} }},
		{"BatchSize", func(c *Config) { c.BatchSize = MaxBatchSize + 1 }},
		{"MaxPacket", func(c *Config) { c.MaxPacket = 100 }},
	} {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		var ve *ananta.ValidationError
		if !errors.As(err, &ve) || ve.Field != tc.field || !errors.Is(err, ananta.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want a ValidationError naming %s", tc.field, err, tc.field)
		}
		if _, err := New(c); err == nil || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("New with bad %s: %v", tc.field, err)
		}
	}
}

func TestSetVIPValidation(t *testing.T) {
	m := newMux(t, Config{Addr4: mux4, FlowTableBytes: MinFlowTableBytes})
	bad := simpleVIP(vip4, 80, backends4(1, 2))
	bad.Endpoints[0].Backends[1].Weight = 0
	if err := m.SetVIP(bad); !errors.Is(err, ananta.ErrInvalidConfig) || !strings.Contains(err.Error(), "endpoints[0].backends[1].weight") {
		t.Errorf("weight 0: %v", err)
	}
	// The Mux has no IPv6 source: an IPv6 host cannot be reached.
	v := simpleVIP(vip4, 80, backends4(1, 2))
	v.Endpoints[0].Backends[1].Host = host6(1)
	if err := m.SetVIP(v); !errors.Is(err, ananta.ErrInvalidConfig) || !strings.Contains(err.Error(), "endpoints[0].backends[1].host") {
		t.Errorf("IPv6 host without IPv6 source: %v", err)
	}
	// A Maglev table smaller than the backend set.
	m2 := newMux(t, Config{Addr4: mux4, FlowTableBytes: MinFlowTableBytes, Maglev: hashring.Config{Size: 251}})
	var many []ananta.Backend
	for i := range 300 {
		many = append(many, ananta.Backend{DIP: netip.AddrFrom4([4]byte{198, 18, 30 + byte(i/250), byte(i % 250)}), Host: host4(1), Weight: 1})
	}
	if err := m2.SetVIP(simpleVIP(vip4, 80, many)); !errors.Is(err, ananta.ErrInvalidConfig) {
		t.Errorf("300 backends in a 251-entry table: %v", err)
	}
	if len(m2.Stats().VIPs) != 0 {
		t.Errorf("a failed SetVIP left a VIP behind")
	}
	if err := m.DeleteVIP(vip6); !errors.Is(err, ErrUnknownVIP) {
		t.Errorf("DeleteVIP unknown: %v", err)
	}
	if err := m.SetBackendState(vip6, dip6(1), 0, ananta.BackendDown); !errors.Is(err, ErrUnknownVIP) {
		t.Errorf("SetBackendState unknown VIP: %v", err)
	}
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 2)))
	if err := m.SetBackendState(vip4, dip4(9), 0, ananta.BackendDown); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("SetBackendState unknown backend: %v", err)
	}
	if err := m.SetBackendState(vip4, dip4(1), 0, 9); !errors.Is(err, ananta.ErrInvalidConfig) {
		t.Errorf("SetBackendState bad state: %v", err)
	}
	for _, tc := range []struct {
		field  string
		ranges []SNATRange
	}{
		{"ranges[0].range", []SNATRange{{Range: ananta.PortRange{First: 0, Last: 10}, DIP: dip4(1), Host: host4(1)}}},
		{"ranges[0].range", []SNATRange{{Range: ananta.PortRange{First: 20, Last: 10}, DIP: dip4(1), Host: host4(1)}}},
		{"ranges[0].dip", []SNATRange{{Range: ananta.PortRange{First: 1024, Last: 1031}, DIP: dip6(1), Host: host4(1)}}},
		{"ranges[0].host", []SNATRange{{Range: ananta.PortRange{First: 1024, Last: 1031}, DIP: dip4(1), Host: host6(1)}}},
		{"ranges", []SNATRange{
			{Range: ananta.PortRange{First: 1024, Last: 1031}, DIP: dip4(1), Host: host4(1)},
			{Range: ananta.PortRange{First: 1030, Last: 1040}, DIP: dip4(2), Host: host4(2)},
		}},
	} {
		err := m.SetSNATRanges(vip4, tc.ranges)
		var ve *ananta.ValidationError
		if !errors.As(err, &ve) || ve.Field != tc.field {
			t.Errorf("SNAT %s: %v", tc.field, err)
		}
	}
	if err := m.SetSNATRanges(vip6, nil); !errors.Is(err, ErrUnknownVIP) {
		t.Errorf("SetSNATRanges unknown VIP: %v", err)
	}
	m.Close()
	if err := m.SetVIP(simpleVIP(vip4, 80, backends4(1, 2))); !errors.Is(err, ErrClosed) {
		t.Errorf("SetVIP after Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
