package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/grpc"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/mux"
)

// MuxTarget returns the Target through which a Client applies the
// Manager's configuration to m: VIPs, SNAT return ranges and the backend
// states the Manager relays from Host Agents' health reports.
func MuxTarget(m *mux.Mux) Target { return muxTarget{m} }

type muxTarget struct{ m *mux.Mux }

func (t muxTarget) SetVIP(c ananta.VIPConfig) error { return t.m.SetVIP(c) }
func (t muxTarget) DeleteVIP(v netip.Addr) error    { return t.m.DeleteVIP(v) }
func (t muxTarget) SetBackendState(v, d netip.Addr, p uint16, s ananta.BackendState) error {
	return t.m.SetBackendState(v, d, p, s)
}
func (t muxTarget) SetSNATRanges(v netip.Addr, rs []SNATRange) error {
	out := make([]mux.SNATRange, len(rs))
	for i, r := range rs {
		out[i] = mux.SNATRange{Range: r.Range, DIP: r.DIP, Host: r.Host}
	}
	return t.m.SetSNATRanges(v, out)
}

// HostAgentTarget returns the Target through which a Client applies the
// Manager's configuration to ha: VIPs, and the VIPs' SNAT leases, of which
// the Host Agent keeps those of its own DIPs. Backend states relayed by the
// Manager are ignored: they come from the Host Agents' own probes, and a
// Host Agent already applies its probe results locally.
func HostAgentTarget(ha *hostagent.HostAgent) Target { return hostAgentTarget{ha} }

type hostAgentTarget struct{ ha *hostagent.HostAgent }

func (t hostAgentTarget) SetVIP(c ananta.VIPConfig) error { return t.ha.SetVIP(c) }
func (t hostAgentTarget) DeleteVIP(v netip.Addr) error    { return t.ha.DeleteVIP(v) }
func (t hostAgentTarget) SetBackendState(netip.Addr, netip.Addr, uint16, ananta.BackendState) error {
	return nil
}
func (t hostAgentTarget) SetSNATRanges(v netip.Addr, rs []SNATRange) error {
	ls := make([]hostagent.SNATLease, len(rs))
	for i, r := range rs {
		ls[i] = hostagent.SNATLease{Range: r.Range, DIP: r.DIP, Host: r.Host}
	}
	return t.ha.SetVIPSNATRanges(v, ls)
}

// HealthClient reports a Host Agent's probe results to the Manager, which
// relays them to every Mux as backend states. It implements
// hostagent.HealthReporter and is safe for concurrent use.
type HealthClient struct {
	c  api.AgentServiceClient
	id string
}

// NewHealthClient returns a HealthClient over conn, a connection to any
// Manager replica; agentID names the reporting Host Agent.
func NewHealthClient(conn grpc.ClientConnInterface, agentID string) *HealthClient {
	return &HealthClient{c: api.NewAgentServiceClient(conn), id: agentID}
}

// ErrIgnored is returned when the Manager does not know the reported VIP or
// backend (for example because the VIP was deleted meanwhile).
var ErrIgnored = errors.New("agent: the Manager ignored the health report")

// ReportHealth sends one health change. Errors are the Manager's gRPC
// status errors, or ErrIgnored.
func (h *HealthClient) ReportHealth(ctx context.Context, r hostagent.HealthReport) error {
	resp, err := h.c.ReportHealth(ctx, &api.ReportHealthRequest{AgentId: h.id, Reports: []*api.HealthReport{{
		Vip: r.VIP.String(), Dip: r.Backend.Addr().String(), Port: uint32(r.Backend.Port()), Healthy: r.Healthy,
	}}})
	if err != nil {
		return err
	}
	if resp.GetIgnored() > 0 {
		return fmt.Errorf("%w: %s backend %s", ErrIgnored, r.VIP, r.Backend)
	}
	return nil
}

var (
	_ Target                   = muxTarget{}
	_ Target                   = hostAgentTarget{}
	_ hostagent.PortAllocator  = (*SNATClient)(nil)
	_ hostagent.HealthReporter = (*HealthClient)(nil)
)
