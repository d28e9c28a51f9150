package manager

import (
	"math"
	"net/netip"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/snat"
)

// Conversions between the API's messages and the SDK's value types. Every
// conversion from the API checks what the Go types cannot hold (ports above
// 65535, enum values out of range, unparsable addresses) and returns an
// *ananta.ValidationError naming the field in the API's own terms, so that
// the error of a bad request reads like one of VIPConfig.Validate.

func invalidField(field, rule string) error {
	return &ananta.ValidationError{Field: field, Rule: rule}
}

// quote quotes s for an error message, cut to 64 bytes so that hostile
// input cannot make the error huge.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}

// parseAddr parses a required address.
func parseAddr(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, invalidField(field, "must be set")
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, invalidField(field, "must be an IP address, got "+quote(s))
	}
	return a, nil
}

// parseUnicast parses an address and checks that it is unicast.
func parseUnicast(field, s string) (netip.Addr, error) {
	a, err := parseAddr(field, s)
	if err != nil {
		return a, err
	}
	if err := ananta.ValidateUnicastAddr(field, a); err != nil {
		return netip.Addr{}, err
	}
	return a, nil
}

func port16(field string, p uint32) (uint16, error) {
	if p > math.MaxUint16 {
		return 0, invalidField(field, "must be at most 65535, got "+strconv.FormatUint(uint64(p), 10))
	}
	return uint16(p), nil
}

func portRangeFrom(field string, r *api.PortRange) (ananta.PortRange, error) {
	if r == nil {
		return ananta.PortRange{}, nil
	}
	f, err := port16(field+".first", r.GetFirst())
	if err != nil {
		return ananta.PortRange{}, err
	}
	l, err := port16(field+".last", r.GetLast())
	if err != nil {
		return ananta.PortRange{}, err
	}
	return ananta.PortRange{First: f, Last: l}, nil
}

func durationFrom(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidField(field, "must be a valid duration")
	}
	if d.GetSeconds() > math.MaxInt64/int64(time.Second)-1 || d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, invalidField(field, "must be a non-negative duration of at most 292 years")
	}
	return d.AsDuration(), nil
}

func durationTo(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func probeFrom(field string, p *api.HealthProbe) (ananta.HealthProbe, error) {
	var out ananta.HealthProbe
	if p == nil {
		return out, nil
	}
	if p.GetKind() < 0 || p.GetKind() > api.ProbeKind_PROBE_KIND_HTTP {
		return out, invalidField(field+".kind", "must be none, tcp or http")
	}
	out.Kind = ananta.ProbeKind(p.GetKind())
	var err error
	if out.Port, err = port16(field+".port", p.GetPort()); err != nil {
		return out, err
	}
	out.Path = p.GetPath()
	out.ExpectStatus = int(p.GetExpectStatus())
	if out.Interval, err = durationFrom(field+".interval", p.GetInterval()); err != nil {
		return out, err
	}
	if out.Timeout, err = durationFrom(field+".timeout", p.GetTimeout()); err != nil {
		return out, err
	}
	out.Rise = int(p.GetRise())
	out.Fall = int(p.GetFall())
	return out, nil
}

func probeTo(p ananta.HealthProbe) *api.HealthProbe {
	if p == (ananta.HealthProbe{}) {
		return nil
	}
	return &api.HealthProbe{
		Kind:         api.ProbeKind(p.Kind),
		Port:         uint32(p.Port),
		Path:         p.Path,
		ExpectStatus: int32(p.ExpectStatus),
		Interval:     durationTo(p.Interval),
		Timeout:      durationTo(p.Timeout),
		Rise:         int32(p.Rise),
		Fall:         int32(p.Fall),
	}
}

// VIPConfigFromProto converts an API VIP configuration to the SDK's type.
// It returns an *ananta.ValidationError for what the SDK type cannot hold
// (unparsable addresses, ports above 65535, unknown enum values, lists
// longer than the SDK's limits); the result still needs Validate.
func VIPConfigFromProto(pb *api.VIPConfig) (ananta.VIPConfig, error) {
	var c ananta.VIPConfig
	if pb == nil {
		return c, invalidField("config", "must be set")
	}
	var err error
	if c.VIP, err = parseAddr("vip", pb.GetVip()); err != nil {
		return c, err
	}
	c.Tenant = pb.GetTenant()
	if c.IdleTimeout, err = durationFrom("idle_timeout", pb.GetIdleTimeout()); err != nil {
		return c, err
	}
	if n := len(pb.GetEndpoints()); n > ananta.MaxEndpoints {
		return c, invalidField("endpoints", "must have at most "+strconv.Itoa(ananta.MaxEndpoints)+" entries, got "+strconv.Itoa(n))
	}
	c.Endpoints = make([]ananta.EndpointConfig, len(pb.GetEndpoints()))
	for i, ep := range pb.GetEndpoints() {
		f := "endpoints[" + strconv.Itoa(i) + "]"
		e := &c.Endpoints[i]
		if ep.GetProtocol() < 0 || ep.GetProtocol() > math.MaxUint8 {
			return c, invalidField(f+".protocol", "must be tcp, udp or any")
		}
		e.Protocol = ananta.Protocol(ep.GetProtocol())
		if e.Port, err = port16(f+".port", ep.GetPort()); err != nil {
			return c, err
		}
		if e.IdleTimeout, err = durationFrom(f+".idle_timeout", ep.GetIdleTimeout()); err != nil {
			return c, err
		}
		e.FloatingIP = ep.GetFloatingIp()
		e.TCPResetOnIdle = ep.GetTcpResetOnIdle()
		if n := len(ep.GetBackends()); n > ananta.MaxBackends {
			return c, invalidField(f+".backends", "must have at most "+strconv.Itoa(ananta.MaxBackends)+" entries, got "+strconv.Itoa(n))
		}
		e.Backends = make([]ananta.Backend, len(ep.GetBackends()))
		for j, b := range ep.GetBackends() {
			bf := f + ".backends[" + strconv.Itoa(j) + "]"
			be := &e.Backends[j]
			if be.DIP, err = parseAddr(bf+".dip", b.GetDip()); err != nil {
				return c, err
			}
			if be.Host, err = parseAddr(bf+".host", b.GetHost()); err != nil {
				return c, err
			}
			if be.Port, err = port16(bf+".port", b.GetPort()); err != nil {
				return c, err
			}
			be.Weight = b.GetWeight()
			if b.GetState() < 0 || b.GetState() > api.BackendState_BACKEND_STATE_DOWN {
				return c, invalidField(bf+".state", "must be active, draining or down")
			}
			be.State = ananta.BackendState(b.GetState())
		}
		if n := len(ep.GetAcl()); n > ananta.MaxACLRules {
			return c, invalidField(f+".acl", "must have at most "+strconv.Itoa(ananta.MaxACLRules)+" rules, got "+strconv.Itoa(n))
		}
		if len(ep.GetAcl()) > 0 {
			e.ACL = make([]ananta.ACLRule, len(ep.GetAcl()))
		}
		for k, r := range ep.GetAcl() {
			rf := f + ".acl[" + strconv.Itoa(k) + "]"
			if r.GetAction() < 0 || r.GetAction() > api.ACLAction_ACL_ACTION_DENY {
				return c, invalidField(rf+".action", "must be allow or deny")
			}
			e.ACL[k].Action = ananta.ACLAction(r.GetAction())
			p, perr := netip.ParsePrefix(r.GetSource())
			if perr != nil {
				return c, invalidField(rf+".source", "must be a prefix such as 198.18.0.0/16, got "+quote(r.GetSource()))
			}
			e.ACL[k].Source = p
			if e.ACL[k].SourcePorts, err = portRangeFrom(rf+".source_ports", r.GetSourcePorts()); err != nil {
				return c, err
			}
		}
		if ep.GetProbe() != nil {
			p, perr := probeFrom(f+".probe", ep.GetProbe())
			if perr != nil {
				return c, perr
			}
			e.Probe = &p
		}
	}
	if s := pb.GetSnat(); s != nil {
		c.SNAT.Enabled = s.GetEnabled()
		if s.GetPortsPerDip() > ananta.MaxSNATPortsPerDIP {
			return c, invalidField("snat.ports_per_dip", "must be 0 (scaled by pool size) or a power of two from 8 to 32768")
		}
		c.SNAT.PortsPerDIP = int(s.GetPortsPerDip())
		if n := len(s.GetReserved()); n > ananta.MaxReservedRanges {
			return c, invalidField("snat.reserved", "must have at most "+strconv.Itoa(ananta.MaxReservedRanges)+" ranges, got "+strconv.Itoa(n))
		}
		for i, r := range s.GetReserved() {
			pr, perr := portRangeFrom("snat.reserved["+strconv.Itoa(i)+"]", r)
			if perr != nil {
				return c, perr
			}
			c.SNAT.Reserved = append(c.SNAT.Reserved, pr)
		}
	}
	if c.Probe, err = probeFrom("probe", pb.GetProbe()); err != nil {
		return c, err
	}
	return c, nil
}

// VIPConfigToProto converts a VIP configuration to its API form. It is the
// inverse of VIPConfigFromProto for every valid configuration, and its
// output is canonical (zero durations and probes are omitted).
func VIPConfigToProto(c *ananta.VIPConfig) *api.VIPConfig {
	pb := &api.VIPConfig{
		Vip:         c.VIP.String(),
		Tenant:      c.Tenant,
		IdleTimeout: durationTo(c.IdleTimeout),
		Probe:       probeTo(c.Probe),
		Endpoints:   make([]*api.Endpoint, len(c.Endpoints)),
	}
	if c.SNAT.Enabled || c.SNAT.PortsPerDIP != 0 || len(c.SNAT.Reserved) > 0 {
		s := &api.SNATConfig{Enabled: c.SNAT.Enabled, PortsPerDip: uint32(c.SNAT.PortsPerDIP)}
		for _, r := range c.SNAT.Reserved {
			s.Reserved = append(s.Reserved, &api.PortRange{First: uint32(r.First), Last: uint32(r.Last)})
		}
		pb.Snat = s
	}
	for i := range c.Endpoints {
		e := &c.Endpoints[i]
		ep := &api.Endpoint{
			Protocol:       api.Protocol(e.Protocol),
			Port:           uint32(e.Port),
			IdleTimeout:    durationTo(e.IdleTimeout),
			FloatingIp:     e.FloatingIP,
			TcpResetOnIdle: e.TCPResetOnIdle,
			Backends:       make([]*api.Backend, len(e.Backends)),
		}
		for j, b := range e.Backends {
			ep.Backends[j] = &api.Backend{
				Dip: b.DIP.String(), Port: uint32(b.Port), Host: b.Host.String(),
				Weight: b.Weight, State: api.BackendState(b.State),
			}
		}
		for _, r := range e.ACL {
			ar := &api.ACLRule{Action: api.ACLAction(r.Action), Source: r.Source.String()}
			if r.SourcePorts != (ananta.PortRange{}) {
				ar.SourcePorts = &api.PortRange{First: uint32(r.SourcePorts.First), Last: uint32(r.SourcePorts.Last)}
			}
			ep.Acl = append(ep.Acl, ar)
		}
		if e.Probe != nil {
			ep.Probe = probeTo(*e.Probe)
			if ep.Probe == nil {
				ep.Probe = &api.HealthProbe{}
			}
		}
		pb.Endpoints[i] = ep
	}
	return pb
}

// leaseToProto converts a lease.
func leaseToProto(l snat.Lease) *api.Lease {
	return &api.Lease{
		Vip:    l.VIP.String(),
		Range:  &api.PortRange{First: uint32(l.Range.First), Last: uint32(l.Range.Last)},
		Dip:    l.DIP.String(),
		Host:   l.Host.String(),
		Expiry: timestamppb.New(l.Expiry),
	}
}

// snatRangeOf returns the Mux-facing form of a lease.
func snatRangeOf(l snat.Lease) *api.SNATRange {
	return &api.SNATRange{
		Vip:   l.VIP.String(),
		Range: &api.PortRange{First: uint32(l.Range.First), Last: uint32(l.Range.Last)},
		Dip:   l.DIP.String(),
		Host:  l.Host.String(),
	}
}

// addrBytes encodes an address compactly (4 or 16 bytes) for the log.
func addrBytes(a netip.Addr) []byte { return a.AsSlice() }

// addrFromBytes decodes addrBytes; an invalid address for anything else.
func addrFromBytes(b []byte) netip.Addr {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}
	}
	return a
}
