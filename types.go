package ananta

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Protocol is an IP protocol number (IANA). Endpoints use ProtocolTCP,
// ProtocolUDP or ProtocolAny; a FiveTuple may carry any protocol number.
type Protocol uint8

// Protocol numbers used by the SDK.
const (
	// ProtocolAny matches every protocol. With port 0 it forms an all-ports
	// endpoint (Azure's "HA ports").
	ProtocolAny    Protocol = 0
	ProtocolICMP   Protocol = 1
	ProtocolIPIP   Protocol = 4 // IPv4 encapsulated in IP (RFC 2003)
	ProtocolTCP    Protocol = 6
	ProtocolUDP    Protocol = 17
	ProtocolIPv6   Protocol = 41 // IPv6 encapsulated in IP (RFC 2473)
	ProtocolICMPv6 Protocol = 58
)

// String returns "tcp", "udp", "any", "icmp", "icmpv6" or the number.
func (p Protocol) String() string {
	switch p {
	case ProtocolAny:
		return "any"
	case ProtocolTCP:
		return "tcp"
	case ProtocolUDP:
		return "udp"
	case ProtocolICMP:
		return "icmp"
	case ProtocolICMPv6:
		return "icmpv6"
	case ProtocolIPIP:
		return "ipip"
	case ProtocolIPv6:
		return "ipv6"
	}
	return strconv.Itoa(int(p))
}

// ParseProtocol parses "tcp", "udp" or "any" (case-sensitive, as written by
// Protocol.String).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "tcp":
		return ProtocolTCP, nil
	case "udp":
		return ProtocolUDP, nil
	case "any", "":
		return ProtocolAny, nil
	}
	return 0, fmt.Errorf("%w: unknown protocol %q (want tcp, udp or any)", ErrInvalidConfig, s)
}

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for "tcp", "udp", "any".
func (p *Protocol) UnmarshalText(b []byte) error {
	v, err := ParseProtocol(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// FiveTuple identifies a flow. Ports are zero for protocols without ports
// and for non-first IP fragments.
type FiveTuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            Protocol
}

// Reverse returns the tuple of the opposite direction.
func (t FiveTuple) Reverse() FiveTuple {
	return FiveTuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort, Proto: t.Proto}
}

// String formats the tuple as "tcp 198.18.0.2:40000 -> 198.19.0.10:80".
func (t FiveTuple) String() string {
	return t.Proto.String() + " " + netip.AddrPortFrom(t.Src, t.SrcPort).String() +
		" -> " + netip.AddrPortFrom(t.Dst, t.DstPort).String()
}

// Endpoint names a load-balanced service: a VIP, a protocol and a port.
// ProtocolAny with port 0 means every port of every protocol (HA ports);
// ProtocolTCP or ProtocolUDP with port 0 means every port of that protocol.
type Endpoint struct {
	VIP      netip.Addr
	Protocol Protocol
	Port     uint16
}

// String formats the endpoint as "tcp/198.19.0.10:80".
func (e Endpoint) String() string {
	return e.Protocol.String() + "/" + netip.AddrPortFrom(e.VIP, e.Port).String()
}

// AllPorts reports whether the endpoint matches every destination port.
func (e Endpoint) AllPorts() bool { return e.Port == 0 }

// BackendState is the administrative or health state of a backend.
type BackendState uint8

// Backend states. The zero value is BackendActive.
const (
	// BackendActive receives new flows and keeps its existing ones.
	BackendActive BackendState = iota
	// BackendDraining receives no new flows; flows already pinned to it stay.
	BackendDraining
	// BackendDown receives no new flows; a Mux may move its existing flows.
	BackendDown
)

// String returns "active", "draining" or "down".
func (s BackendState) String() string {
	switch s {
	case BackendActive:
		return "active"
	case BackendDraining:
		return "draining"
	case BackendDown:
		return "down"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (s BackendState) MarshalText() ([]byte, error) {
	if s > BackendDown {
		return nil, fmt.Errorf("%w: unknown backend state %d", ErrInvalidConfig, s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *BackendState) UnmarshalText(b []byte) error {
	switch string(b) {
	case "active", "":
		*s = BackendActive
	case "draining":
		*s = BackendDraining
	case "down":
		*s = BackendDown
	default:
		return fmt.Errorf("%w: unknown backend state %q (want active, draining or down)", ErrInvalidConfig, b)
	}
	return nil
}

// Backend is one DIP behind an endpoint.
type Backend struct {
	// DIP is the backend's direct (private) address; same family as the VIP.
	DIP netip.Addr `json:"dip"`
	// Port is the DIP's port. Zero keeps the packet's destination port; it
	// is required for all-ports endpoints.
	Port uint16 `json:"port,omitempty"`
	// Host is the physical host that runs the DIP: the outer destination of
	// the Mux's IP-in-IP encapsulation. It may be of either address family.
	Host netip.Addr `json:"host"`
	// Weight is the backend's relative share of new flows (1..MaxWeight).
	Weight uint32 `json:"weight"`
	// State is the backend's state; the zero value is active.
	State BackendState `json:"state,omitempty"`
}

// Key returns the backend's stable identity: DIP and port. Two backends of
// one endpoint never share a key.
func (b Backend) Key() netip.AddrPort { return netip.AddrPortFrom(b.DIP, b.Port) }

// Usable reports whether the backend may receive new flows.
func (b Backend) Usable() bool { return b.State == BackendActive && b.Weight > 0 }

// PortRange is an inclusive range of ports.
type PortRange struct {
	First uint16 `json:"first"`
	Last  uint16 `json:"last"`
}

// Contains reports whether p lies in the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// Len returns the number of ports in the range.
func (r PortRange) Len() int {
	if r.Last < r.First {
		return 0
	}
	return int(r.Last) - int(r.First) + 1
}

// String formats the range as "1024-2047".
func (r PortRange) String() string {
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// ACLAction is what an ACL rule does with a matching flow.
type ACLAction uint8

// ACL actions.
const (
	ACLAllow ACLAction = iota
	ACLDeny
)

// String returns "allow" or "deny".
func (a ACLAction) String() string {
	if a == ACLDeny {
		return "deny"
	}
	return "allow"
}

// ACLRule allows or denies new inbound flows by source prefix and source
// port range. Rules are evaluated in order; the first match decides. Replies
// of allowed flows always pass.
type ACLRule struct {
	Action ACLAction `json:"action"`
	// Source is the source prefix the rule matches.
	Source netip.Prefix `json:"source"`
	// SourcePorts restricts the rule to these source ports; the zero value
	// matches every port.
	SourcePorts PortRange `json:"source_ports,omitzero"`
}

// Matches reports whether the rule matches a flow from src:port.
func (r ACLRule) Matches(src netip.Addr, port uint16) bool {
	if !r.Source.Contains(src) {
		return false
	}
	if r.SourcePorts == (PortRange{}) {
		return true
	}
	return r.SourcePorts.Contains(port)
}

// ProbeKind is the kind of health probe.
type ProbeKind uint8

// Probe kinds. The zero value disables probing.
const (
	ProbeNone ProbeKind = iota
	ProbeTCP            // a TCP connect that completes
	ProbeHTTP           // an HTTP GET that returns the expected status
)

// String returns "none", "tcp" or "http".
func (k ProbeKind) String() string {
	switch k {
	case ProbeTCP:
		return "tcp"
	case ProbeHTTP:
		return "http"
	}
	return "none"
}

// HealthProbe says how Host Agents probe the DIPs of a VIP.
type HealthProbe struct {
	Kind ProbeKind `json:"kind"`
	// Port is the DIP port to probe; zero probes the backend's own port.
	Port uint16 `json:"port,omitempty"`
	// Path is the HTTP request path (ProbeHTTP only); default "/".
	Path string `json:"path,omitempty"`
	// ExpectStatus is the HTTP status that means healthy; default 200.
	ExpectStatus int `json:"expect_status,omitempty"`
	// Interval between probes; default 5 s.
	Interval time.Duration `json:"interval,omitempty"`
	// Timeout of one probe; default 2 s, at most Interval.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Rise is how many consecutive successes mark a down DIP up; default 2.
	Rise int `json:"rise,omitempty"`
	// Fall is how many consecutive failures mark an up DIP down; default 2.
	Fall int `json:"fall,omitempty"`
}

// SNATConfig holds a VIP's outbound SNAT settings.
type SNATConfig struct {
	// Enabled turns on outbound SNAT: the VIP's DIPs reach the outside as
	// the VIP, with ports leased from the Manager.
	Enabled bool `json:"enabled"`
	// PortsPerDIP is how many ports each DIP gets preallocated when the VIP
	// is configured. Zero scales with the pool size as Azure does (1024 up
	// to 50 DIPs, 512 to 100, 256 to 200, 128 to 400, 64 to 800, 32 beyond).
	// Otherwise a power of two from 8 to 32768.
	PortsPerDIP int `json:"ports_per_dip,omitempty"`
	// Reserved lists port ranges of the VIP that SNAT must never lease
	// (for example the VIP's own inbound ports).
	Reserved []PortRange `json:"reserved,omitempty"`
}

// EndpointConfig is one load-balanced endpoint of a VIP with its backends.
type EndpointConfig struct {
	Protocol Protocol  `json:"protocol"`
	Port     uint16    `json:"port,omitempty"`
	Backends []Backend `json:"backends"`
	// IdleTimeout overrides the VIP's idle timeout for this endpoint; zero
	// keeps the VIP's.
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	// FloatingIP delivers packets without DNAT: the backend VM holds the VIP
	// on its loopback and sees the VIP as destination.
	FloatingIP bool `json:"floating_ip,omitempty"`
	// TCPResetOnIdle sends a TCP RST to both ends of an established
	// connection that reaches the idle timeout.
	TCPResetOnIdle bool `json:"tcp_reset_on_idle,omitempty"`
	// ACL filters new inbound flows; empty allows everything.
	ACL []ACLRule `json:"acl,omitempty"`
	// Probe overrides the VIP's health probe for this endpoint's DIPs.
	Probe *HealthProbe `json:"probe,omitempty"`
}

// Endpoint returns the endpoint's identity under vip.
func (e EndpointConfig) Endpoint(vip netip.Addr) Endpoint {
	return Endpoint{VIP: vip, Protocol: e.Protocol, Port: e.Port}
}

// VIPConfig is the whole configuration of one VIP.
type VIPConfig struct {
	VIP netip.Addr `json:"vip"`
	// Tenant owns the VIP; fairness (SNAT queues, packet-rate isolation) is
	// per tenant and per VIP.
	Tenant    string           `json:"tenant"`
	Endpoints []EndpointConfig `json:"endpoints"`
	// IdleTimeout is how long an idle flow is remembered; zero means
	// DefaultIdleTimeout (4 minutes).
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	SNAT        SNATConfig    `json:"snat,omitzero"`
	Probe       HealthProbe   `json:"probe,omitzero"`
}

// Idle returns the effective idle timeout of endpoint i.
func (c *VIPConfig) Idle(i int) time.Duration {
	if i >= 0 && i < len(c.Endpoints) && c.Endpoints[i].IdleTimeout != 0 {
		return c.Endpoints[i].IdleTimeout
	}
	if c.IdleTimeout != 0 {
		return c.IdleTimeout
	}
	return DefaultIdleTimeout
}

// EffectiveProbe returns the probe that applies to endpoint i with its
// defaults filled in.
func (c *VIPConfig) EffectiveProbe(i int) HealthProbe {
	p := c.Probe
	if i >= 0 && i < len(c.Endpoints) && c.Endpoints[i].Probe != nil {
		p = *c.Endpoints[i].Probe
	}
	return p.WithDefaults()
}

// WithDefaults returns the probe with zero fields set to their defaults.
func (p HealthProbe) WithDefaults() HealthProbe {
	if p.Kind == ProbeNone {
		return p
	}
	if p.Interval == 0 {
		p.Interval = DefaultProbeInterval
	}
	if p.Timeout == 0 {
		p.Timeout = min(DefaultProbeTimeout, p.Interval)
	}
	if p.Rise == 0 {
		p.Rise = DefaultProbeRise
	}
	if p.Fall == 0 {
		p.Fall = DefaultProbeFall
	}
	if p.Kind == ProbeHTTP {
		if p.Path == "" {
			p.Path = "/"
		}
		if p.ExpectStatus == 0 {
			p.ExpectStatus = 200
		}
	}
	return p
}

// Clone returns a deep copy of the config.
func (c VIPConfig) Clone() VIPConfig {
	out := c
	out.SNAT.Reserved = append([]PortRange(nil), c.SNAT.Reserved...)
	out.Endpoints = make([]EndpointConfig, len(c.Endpoints))
	for i, e := range c.Endpoints {
		e.Backends = append([]Backend(nil), e.Backends...)
		e.ACL = append([]ACLRule(nil), e.ACL...)
		if e.Probe != nil {
			p := *e.Probe
			e.Probe = &p
		}
		out.Endpoints[i] = e
	}
	return out
}

// SNATPortsPerDIP returns the number of ports preallocated to each DIP of a
// pool of n DIPs when PortsPerDIP is zero, after Azure's table.
func SNATPortsPerDIP(n int) int {
	switch {
	case n <= 50:
		return 1024
	case n <= 100:
		return 512
	case n <= 200:
		return 256
	case n <= 400:
		return 128
	case n <= 800:
		return 64
	default:
		return 32
	}
}
