package ananta

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func validVIP() VIPConfig {
	return VIPConfig{
		VIP:    netip.MustParseAddr("198.19.0.10"),
		Tenant: "shop",
		Endpoints: []EndpointConfig{{
			Protocol: ProtocolTCP,
			Port:     80,
			Backends: []Backend{
				{DIP: netip.MustParseAddr("198.18.100.1"), Port: 8080, Host: netip.MustParseAddr("198.18.10.2"), Weight: 1},
				{DIP: netip.MustParseAddr("198.18.100.2"), Port: 8080, Host: netip.MustParseAddr("2001:db8:10::2"), Weight: 2, State: BackendDraining},
			},
		}, {
			Protocol: ProtocolAny,
			Backends: []Backend{{DIP: netip.MustParseAddr("198.18.100.3"), Host: netip.MustParseAddr("198.18.10.3"), Weight: 1}},
		}},
		SNAT:  SNATConfig{Enabled: true, Reserved: []PortRange{{80, 80}, {8000, 8100}}},
		Probe: HealthProbe{Kind: ProbeHTTP, Path: "/healthz"},
	}
}

func TestValidateAcceptsGoodConfig(t *testing.T) {
	c := validVIP()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	v6 := VIPConfig{
		VIP: netip.MustParseAddr("2001:db8:1::10"), Tenant: "t",
		Endpoints: []EndpointConfig{{Protocol: ProtocolUDP, Port: 53, Backends: []Backend{
			{DIP: netip.MustParseAddr("2001:db8:100::1"), Host: netip.MustParseAddr("198.18.10.2"), Weight: MaxWeight}}}},
	}
	if err := v6.Validate(); err != nil {
		t.Fatal(err)
	}
	snatOnly := VIPConfig{VIP: netip.MustParseAddr("198.19.0.11"), Tenant: "t", SNAT: SNATConfig{Enabled: true, PortsPerDIP: 64}}
	if err := snatOnly.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRejects(t *testing.T) {
	many := func(n int) []Backend {
		bs := make([]Backend, n)
		for i := range bs {
			a := [4]byte{198, 18, byte(100 + i>>8), byte(i)}
			bs[i] = Backend{DIP: netip.AddrFrom4(a), Host: netip.MustParseAddr("198.18.10.2"), Weight: 1, Port: 1}
		}
		return bs
	}
	tests := []struct {
		name      string
		mutate    func(c *VIPConfig)
		wantField string
		wantRule  string
	}{
		{"zero vip", func(c *VIPConfig) { c.VIP = netip.Addr{} }, "vip", "valid"},
		{"unspecified vip", func(c *VIPConfig) { c.VIP = netip.IPv4Unspecified() }, "vip", "unspecified"},
		{"multicast vip", func(c *VIPConfig) { c.VIP = netip.MustParseAddr("224.0.0.1") }, "vip", "multicast"},
		{"mapped vip", func(c *VIPConfig) { c.VIP = netip.MustParseAddr("::ffff:198.19.0.10") }, "vip", "IPv4-mapped"},
		{"zoned vip", func(c *VIPConfig) { c.VIP = netip.MustParseAddr("fe80::1%eth0") }, "vip", "zone"},
		{"empty tenant", func(c *VIPConfig) { c.Tenant = "" }, "tenant", "empty"},
		{"long tenant", func(c *VIPConfig) { c.Tenant = strings.Repeat("x", MaxTenantLen+1) }, "tenant", "at most"},
		{"control char tenant", func(c *VIPConfig) { c.Tenant = "a\x00b" }, "tenant", "printable"},
		{"no endpoints", func(c *VIPConfig) { c.Endpoints = nil; c.SNAT.Enabled = false }, "endpoints", "empty"},
		{"too many endpoints", func(c *VIPConfig) {
			c.Endpoints = make([]EndpointConfig, MaxEndpoints+1)
		}, "endpoints", "at most"},
		{"duplicate endpoint", func(c *VIPConfig) { c.Endpoints[1] = c.Endpoints[0] }, "endpoints[1]", "duplicates endpoints[0]"},
		{"bad protocol", func(c *VIPConfig) { c.Endpoints[0].Protocol = 1 }, "endpoints[0].protocol", "tcp, udp or any"},
		{"any with port", func(c *VIPConfig) { c.Endpoints[1].Port = 80 }, "endpoints[1].port", "must be 0"},
		{"no backends", func(c *VIPConfig) { c.Endpoints[0].Backends = nil }, "endpoints[0].backends", "empty"},
		{"too many backends", func(c *VIPConfig) { c.Endpoints[0].Backends = many(MaxBackends + 1) }, "endpoints[0].backends", "at most"},
		{"zero weight", func(c *VIPConfig) { c.Endpoints[0].Backends[1].Weight = 0 }, "endpoints[0].backends[1].weight", "must be > 0"},
		{"huge weight", func(c *VIPConfig) { c.Endpoints[0].Backends[1].Weight = MaxWeight + 1 }, "endpoints[0].backends[1].weight", "<="},
		{"zero dip", func(c *VIPConfig) { c.Endpoints[0].Backends[0].DIP = netip.Addr{} }, "endpoints[0].backends[0].dip", "valid"},
		{"family mismatch", func(c *VIPConfig) { c.Endpoints[0].Backends[0].DIP = netip.MustParseAddr("2001:db8::1") }, "endpoints[0].backends[0].dip", "family"},
		{"zero host", func(c *VIPConfig) { c.Endpoints[0].Backends[0].Host = netip.Addr{} }, "endpoints[0].backends[0].host", "valid"},
		{"port on all-ports", func(c *VIPConfig) { c.Endpoints[1].Backends[0].Port = 80 }, "endpoints[1].backends[0].port", "all-ports"},
		{"duplicate backend", func(c *VIPConfig) { c.Endpoints[0].Backends[1].DIP = c.Endpoints[0].Backends[0].DIP }, "endpoints[0].backends[1]", "duplicates backends[0]"},
		{"bad state", func(c *VIPConfig) { c.Endpoints[0].Backends[0].State = 9 }, "endpoints[0].backends[0].state", "active"},
		{"short idle", func(c *VIPConfig) { c.IdleTimeout = time.Millisecond }, "idle_timeout", "between"},
		{"long endpoint idle", func(c *VIPConfig) { c.Endpoints[0].IdleTimeout = 3 * time.Hour }, "endpoints[0].idle_timeout", "between"},
		{"acl family", func(c *VIPConfig) {
			c.Endpoints[0].ACL = []ACLRule{{Source: netip.MustParsePrefix("2001:db8::/32")}}
		}, "endpoints[0].acl[0].source", "family"},
		{"acl host bits", func(c *VIPConfig) {
			c.Endpoints[0].ACL = []ACLRule{{Source: netip.MustParsePrefix("198.18.0.1/16")}}
		}, "endpoints[0].acl[0].source", "host bits"},
		{"acl ports", func(c *VIPConfig) {
			c.Endpoints[0].ACL = []ACLRule{{Source: netip.MustParsePrefix("198.18.0.0/16"), SourcePorts: PortRange{10, 5}}}
		}, "endpoints[0].acl[0].source_ports", "first"},
		{"snat ports not power of two", func(c *VIPConfig) { c.SNAT.PortsPerDIP = 100 }, "snat.ports_per_dip", "power of two"},
		{"snat ports too few", func(c *VIPConfig) { c.SNAT.PortsPerDIP = 4 }, "snat.ports_per_dip", "power of two"},
		{"reserved overlap", func(c *VIPConfig) { c.SNAT.Reserved = append(c.SNAT.Reserved, PortRange{8050, 9000}) }, "snat.reserved[2]", "overlaps reserved[1]"},
		{"reserved inverted", func(c *VIPConfig) { c.SNAT.Reserved = []PortRange{{9, 8}} }, "snat.reserved[0]", "first <= last"},
		{"probe kind", func(c *VIPConfig) { c.Probe.Kind = 7 }, "probe.kind", "none, tcp or http"},
		{"probe path", func(c *VIPConfig) { c.Probe.Path = "healthz" }, "probe.path", "start with /"},
		{"probe path space", func(c *VIPConfig) { c.Probe.Path = "/a b" }, "probe.path", "spaces"},
		{"probe status", func(c *VIPConfig) { c.Probe.ExpectStatus = 700 }, "probe.expect_status", "100 to 599"},
		{"probe timeout", func(c *VIPConfig) { c.Probe.Interval = time.Second; c.Probe.Timeout = 2 * time.Second }, "probe.timeout", "<= interval"},
		{"probe interval", func(c *VIPConfig) { c.Probe.Interval = time.Millisecond }, "probe.interval", "between"},
		{"probe rise", func(c *VIPConfig) { c.Probe.Rise = MaxProbeThreshold + 1 }, "probe.rise", "between"},
		{"endpoint probe", func(c *VIPConfig) { c.Endpoints[1].Probe = &HealthProbe{Kind: ProbeTCP, Fall: -1} }, "endpoints[1].probe.fall", "between"},
		{"tcp probe with path", func(c *VIPConfig) { c.Probe = HealthProbe{Kind: ProbeTCP, Path: "/"} }, "probe.path", "only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validVIP()
			tc.mutate(&c)
			err := c.Validate()
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate() = %v, want a *ValidationError", err)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if ve.Field != tc.wantField || !strings.Contains(ve.Rule, tc.wantRule) {
				t.Errorf("Validate() = %q, want field %q and a rule mentioning %q", err, tc.wantField, tc.wantRule)
			}
		})
	}
}

func TestValidationErrorFormat(t *testing.T) {
	c := validVIP()
	c.Endpoints = append(c.Endpoints, EndpointConfig{Protocol: ProtocolTCP, Port: 443, Backends: []Backend{{
		DIP: netip.MustParseAddr("198.18.100.9"), Host: netip.MustParseAddr("198.18.10.2")}}})
	if got, want := c.Validate().Error(), "endpoints[2].backends[0].weight: must be > 0"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestEndpointAndBackendValidate(t *testing.T) {
	good := Endpoint{VIP: netip.MustParseAddr("198.19.0.1"), Protocol: ProtocolTCP, Port: 443}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, e := range []Endpoint{{}, {VIP: good.VIP, Protocol: ProtocolAny, Port: 1}, {VIP: good.VIP, Protocol: 99}} {
		if err := e.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%v: Validate() = %v, want ErrInvalidConfig", e, err)
		}
	}
	if err := (Backend{DIP: good.VIP, Host: good.VIP}).Validate(); err == nil || !strings.Contains(err.Error(), "weight") {
		t.Errorf("zero-weight backend: %v", err)
	}
}

func TestDefaultsAndClone(t *testing.T) {
	c := validVIP()
	c.Endpoints[1].IdleTimeout = time.Minute
	if got := c.Idle(0); got != DefaultIdleTimeout {
		t.Errorf("Idle(0) = %s, want %s", got, DefaultIdleTimeout)
	}
	if got := c.Idle(1); got != time.Minute {
		t.Errorf("Idle(1) = %s", got)
	}
	p := c.EffectiveProbe(0)
	if p.Path != "/healthz" || p.ExpectStatus != 200 || p.Interval != DefaultProbeInterval || p.Timeout != DefaultProbeTimeout || p.Rise != 2 || p.Fall != 2 {
		t.Errorf("EffectiveProbe = %+v", p)
	}
	c.Endpoints[0].Probe = &HealthProbe{Kind: ProbeTCP, Port: 9}
	d := c.Clone()
	d.Endpoints[0].Backends[0].Weight = 77
	d.Endpoints[0].Probe.Port = 10
	d.SNAT.Reserved[0].First = 1
	if c.Endpoints[0].Backends[0].Weight == 77 || c.Endpoints[0].Probe.Port == 10 || c.SNAT.Reserved[0].First == 1 {
		t.Error("Clone shares memory with the original")
	}
	for n, want := range map[int]int{1: 1024, 50: 1024, 51: 512, 100: 512, 200: 256, 400: 128, 800: 64, 1000: 32, 5000: 32} {
		if got := SNATPortsPerDIP(n); got != want {
			t.Errorf("SNATPortsPerDIP(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	c := validVIP()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"state":"draining"`) || !strings.Contains(string(b), `"protocol":"tcp"`) {
		t.Errorf("JSON does not use readable enums: %s", b)
	}
	var d VIPConfig
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(d)
	if string(b) != string(b2) {
		t.Errorf("round trip changed the config:\n%s\n%s", b, b2)
	}
	if err := json.Unmarshal([]byte(`{"protocol":"sctp"}`), &EndpointConfig{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("unknown protocol: %v", err)
	}
}

func TestTupleAndACL(t *testing.T) {
	ft := FiveTuple{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.19.0.10"), SrcPort: 40000, DstPort: 80, Proto: ProtocolTCP}
	if got := ft.String(); got != "tcp 198.18.0.2:40000 -> 198.19.0.10:80" {
		t.Errorf("String() = %q", got)
	}
	if ft.Reverse().Reverse() != ft || ft.Reverse().Src != ft.Dst || ft.Reverse().DstPort != 40000 {
		t.Error("Reverse is wrong")
	}
	r := ACLRule{Source: netip.MustParsePrefix("198.18.0.0/24"), SourcePorts: PortRange{1000, 2000}}
	if !r.Matches(ft.Src, 1500) || r.Matches(ft.Src, 40000) || r.Matches(netip.MustParseAddr("198.18.1.1"), 1500) {
		t.Error("ACLRule.Matches is wrong")
	}
	if (PortRange{5, 4}).Len() != 0 || (PortRange{1024, 2047}).Len() != 1024 {
		t.Error("PortRange.Len is wrong")
	}
}
