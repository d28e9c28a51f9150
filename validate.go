package ananta

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
	"unicode"
)

// ErrInvalidConfig is wrapped by every validation error of this package, so
// callers can test for it with errors.Is.
var ErrInvalidConfig = errors.New("invalid config")

// Limits on configuration sizes. They keep a hostile or mistaken API call
// from making the control plane or a data path allocate without bound.
const (
	MaxEndpoints          = 256   // endpoints per VIP
	MaxBackends           = 4096  // backends per endpoint
	MaxWeight             = 65535 // largest backend weight
	MaxACLRules           = 256   // ACL rules per endpoint
	MaxReservedRanges     = 64    // reserved SNAT port ranges per VIP
	MaxTenantLen          = 128   // bytes in a tenant name
	MaxProbePathLen       = 1024  // bytes in an HTTP probe path
	MinIdleTimeout        = time.Second
	MaxIdleTimeout        = 2 * time.Hour
	MinProbeInterval      = 100 * time.Millisecond
	MaxProbeInterval      = 5 * time.Minute
	MaxProbeThreshold     = 100
	MinSNATPortsPerDIP    = 8
	MaxSNATPortsPerDIP    = 32768
	DefaultIdleTimeout    = 4 * time.Minute
	DefaultProbeInterval  = 5 * time.Second
	DefaultProbeTimeout   = 2 * time.Second
	DefaultProbeRise      = 2
	DefaultProbeFall      = 2
	FirstSNATPort         = 1024 // lowest port SNAT ever leases
	LastSNATPort          = 65535
	maxReservedRangeCount = MaxReservedRanges
)

// ValidationError reports one invalid field. Field is a path such as
// "endpoints[2].backends[0].weight"; Rule says what it must satisfy.
type ValidationError struct {
	Field string
	Rule  string
}

// Error returns "field: rule".
func (e *ValidationError) Error() string { return e.Field + ": " + e.Rule }

// Unwrap makes every ValidationError match ErrInvalidConfig.
func (e *ValidationError) Unwrap() error { return ErrInvalidConfig }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

func idx(prefix string, i int, field string) string {
	s := prefix + "[" + strconv.Itoa(i) + "]"
	if field != "" {
		s += "." + field
	}
	return s
}

// ValidateUnicastAddr checks that a is a usable unicast address: valid, not
// unspecified, not multicast or broadcast, no zone, not IPv4-mapped IPv6.
// field names the address in the error.
func ValidateUnicastAddr(field string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return invalid(field, "must be a valid IP address")
	case a.IsUnspecified():
		return invalid(field, "must not be the unspecified address %s", a)
	case a.Zone() != "":
		return invalid(field, "must not carry an IPv6 zone")
	case a.Is4In6():
		return invalid(field, "must not be an IPv4-mapped IPv6 address; write %s", a.Unmap())
	case a.IsMulticast():
		return invalid(field, "must not be multicast")
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return invalid(field, "must not be the broadcast address")
	}
	return nil
}

// Validate checks the VIP configuration and returns a *ValidationError for
// the first rule it breaks.
func (c *VIPConfig) Validate() error {
	if err := ValidateUnicastAddr("vip", c.VIP); err != nil {
		return err
	}
	if c.Tenant == "" {
		return invalid("tenant", "must not be empty")
	}
	if len(c.Tenant) > MaxTenantLen {
		return invalid("tenant", "must be at most %d bytes", MaxTenantLen)
	}
	for _, r := range c.Tenant {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return invalid("tenant", "must be printable UTF-8")
		}
	}
	if err := validateIdle("idle_timeout", c.IdleTimeout); err != nil {
		return err
	}
	if len(c.Endpoints) == 0 && !c.SNAT.Enabled {
		return invalid("endpoints", "must not be empty unless snat is enabled")
	}
	if len(c.Endpoints) > MaxEndpoints {
		return invalid("endpoints", "must have at most %d entries, got %d", MaxEndpoints, len(c.Endpoints))
	}
	seen := make(map[Endpoint]int, len(c.Endpoints))
	for i := range c.Endpoints {
		e := &c.Endpoints[i]
		if err := e.validate(c.VIP, "endpoints["+strconv.Itoa(i)+"]"); err != nil {
			return err
		}
		key := e.Endpoint(c.VIP)
		if j, dup := seen[key]; dup {
			return invalid(idx("endpoints", i, ""), "duplicates endpoints[%d] (%s)", j, key)
		}
		seen[key] = i
	}
	if err := c.SNAT.validate("snat"); err != nil {
		return err
	}
	return c.Probe.Validate("probe")
}

func validateIdle(field string, d time.Duration) error {
	if d != 0 && (d < MinIdleTimeout || d > MaxIdleTimeout) {
		return invalid(field, "must be 0 (default %s) or between %s and %s", DefaultIdleTimeout, MinIdleTimeout, MaxIdleTimeout)
	}
	return nil
}

func (e *EndpointConfig) validate(vip netip.Addr, field string) error {
	switch e.Protocol {
	case ProtocolTCP, ProtocolUDP:
	case ProtocolAny:
		if e.Port != 0 {
			return invalid(field+".port", "must be 0 when protocol is any (all ports)")
		}
	default:
		return invalid(field+".protocol", "must be tcp, udp or any, got %d", e.Protocol)
	}
	if err := validateIdle(field+".idle_timeout", e.IdleTimeout); err != nil {
		return err
	}
	if len(e.Backends) == 0 {
		return invalid(field+".backends", "must not be empty")
	}
	if len(e.Backends) > MaxBackends {
		return invalid(field+".backends", "must have at most %d entries, got %d", MaxBackends, len(e.Backends))
	}
	seen := make(map[netip.AddrPort]int, len(e.Backends))
	for i := range e.Backends {
		b := &e.Backends[i]
		bf := idx(field+".backends", i, "")
		if err := b.validate(vip, e.Port == 0, bf); err != nil {
			return err
		}
		if j, dup := seen[b.Key()]; dup {
			return invalid(bf, "duplicates backends[%d] (%s)", j, b.Key())
		}
		seen[b.Key()] = i
	}
	if len(e.ACL) > MaxACLRules {
		return invalid(field+".acl", "must have at most %d rules, got %d", MaxACLRules, len(e.ACL))
	}
	for i, r := range e.ACL {
		rf := idx(field+".acl", i, "")
		if !r.Source.IsValid() {
			return invalid(rf+".source", "must be a valid prefix")
		}
		if r.Source.Addr().Is4() != vip.Is4() {
			return invalid(rf+".source", "must be of the VIP's address family")
		}
		if r.Source != r.Source.Masked() {
			return invalid(rf+".source", "has host bits set; write %s", r.Source.Masked())
		}
		if r.Action > ACLDeny {
			return invalid(rf+".action", "must be allow or deny")
		}
		if r.SourcePorts != (PortRange{}) && r.SourcePorts.Last < r.SourcePorts.First {
			return invalid(rf+".source_ports", "first must be <= last")
		}
	}
	if e.Probe != nil {
		return e.Probe.Validate(field + ".probe")
	}
	return nil
}

func (b *Backend) validate(vip netip.Addr, allPorts bool, field string) error {
	if err := ValidateUnicastAddr(field+".dip", b.DIP); err != nil {
		return err
	}
	if b.DIP.Is4() != vip.Is4() {
		return invalid(field+".dip", "must be of the VIP's address family (vip %s, dip %s)", vip, b.DIP)
	}
	if err := ValidateUnicastAddr(field+".host", b.Host); err != nil {
		return err
	}
	if allPorts && b.Port != 0 {
		return invalid(field+".port", "must be 0 for an all-ports endpoint")
	}
	if b.Weight == 0 {
		return invalid(field+".weight", "must be > 0")
	}
	if b.Weight > MaxWeight {
		return invalid(field+".weight", "must be <= %d", MaxWeight)
	}
	if b.State > BackendDown {
		return invalid(field+".state", "must be active, draining or down")
	}
	return nil
}

func (s *SNATConfig) validate(field string) error {
	if s.PortsPerDIP != 0 {
		if s.PortsPerDIP < MinSNATPortsPerDIP || s.PortsPerDIP > MaxSNATPortsPerDIP || s.PortsPerDIP&(s.PortsPerDIP-1) != 0 {
			return invalid(field+".ports_per_dip", "must be 0 (scaled by pool size) or a power of two from %d to %d", MinSNATPortsPerDIP, MaxSNATPortsPerDIP)
		}
	}
	if len(s.Reserved) > maxReservedRangeCount {
		return invalid(field+".reserved", "must have at most %d ranges", maxReservedRangeCount)
	}
	for i, r := range s.Reserved {
		rf := idx(field+".reserved", i, "")
		if r.First == 0 || r.Last < r.First {
			return invalid(rf, "must be a range with 1 <= first <= last")
		}
		for j := range i {
			o := s.Reserved[j]
			if r.First <= o.Last && o.First <= r.Last {
				return invalid(rf, "overlaps reserved[%d] (%s)", j, o)
			}
		}
	}
	return nil
}

// Validate checks the probe; field names it in errors. A probe of kind
// ProbeNone is always valid.
func (p *HealthProbe) Validate(field string) error {
	switch p.Kind {
	case ProbeNone:
		return nil
	case ProbeTCP, ProbeHTTP:
	default:
		return invalid(field+".kind", "must be none, tcp or http")
	}
	d := p.WithDefaults()
	if d.Interval < MinProbeInterval || d.Interval > MaxProbeInterval {
		return invalid(field+".interval", "must be between %s and %s", MinProbeInterval, MaxProbeInterval)
	}
	if d.Timeout <= 0 || d.Timeout > d.Interval {
		return invalid(field+".timeout", "must be > 0 and <= interval")
	}
	if d.Rise < 1 || d.Rise > MaxProbeThreshold {
		return invalid(field+".rise", "must be between 1 and %d", MaxProbeThreshold)
	}
	if d.Fall < 1 || d.Fall > MaxProbeThreshold {
		return invalid(field+".fall", "must be between 1 and %d", MaxProbeThreshold)
	}
	if p.Kind == ProbeHTTP {
		if len(d.Path) > MaxProbePathLen || d.Path[0] != '/' {
			return invalid(field+".path", "must start with / and be at most %d bytes", MaxProbePathLen)
		}
		for _, r := range d.Path {
			if r <= ' ' || r == 0x7f {
				return invalid(field+".path", "must not contain spaces or control characters")
			}
		}
		if d.ExpectStatus < 100 || d.ExpectStatus > 599 {
			return invalid(field+".expect_status", "must be an HTTP status from 100 to 599")
		}
	} else if p.Path != "" || p.ExpectStatus != 0 {
		return invalid(field+".path", "is only allowed for http probes")
	}
	return nil
}

// Validate checks an endpoint identity on its own: a unicast VIP and a
// protocol/port combination an EndpointConfig accepts.
func (e Endpoint) Validate() error {
	if err := ValidateUnicastAddr("vip", e.VIP); err != nil {
		return err
	}
	switch e.Protocol {
	case ProtocolTCP, ProtocolUDP:
	case ProtocolAny:
		if e.Port != 0 {
			return invalid("port", "must be 0 when protocol is any (all ports)")
		}
	default:
		return invalid("protocol", "must be tcp, udp or any, got %d", e.Protocol)
	}
	return nil
}

// Validate checks a backend on its own (addresses, weight, state). The
// address-family and port rules that depend on the endpoint are checked by
// VIPConfig.Validate.
func (b Backend) Validate() error {
	return b.validate(b.DIP, false, "backend")
}
