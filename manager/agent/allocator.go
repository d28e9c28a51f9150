package agent

import (
	"context"
	"fmt"
	"net/netip"

	"google.golang.org/grpc"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
)

// SNATClient leases SNAT ports from the Manager for a Host Agent. Its
// methods have the shape of hostagent.PortAllocator, so a Host Agent can
// use it directly as its allocator. It is safe for concurrent use.
type SNATClient struct {
	c api.SNATServiceClient
}

// NewSNATClient returns a SNATClient over conn, a connection to any
// Manager replica (every replica serves every call).
func NewSNATClient(conn grpc.ClientConnInterface) *SNATClient {
	return &SNATClient{c: api.NewSNATServiceClient(conn)}
}

func rangeOf(r *api.PortRange) (ananta.PortRange, error) {
	if r.GetFirst() > 65535 || r.GetLast() > 65535 || r.GetLast() < r.GetFirst() {
		return ananta.PortRange{}, fmt.Errorf("agent: manager returned an invalid range %v", r)
	}
	return ananta.PortRange{First: uint16(r.GetFirst()), Last: uint16(r.GetLast())}, nil
}

// AllocatePorts leases one range of about hint ports (rounded up to a
// power of two from 8 to 32768; 0 lets the Manager size it by demand) of
// vip to dip, which runs on host. Errors are the Manager's gRPC status
// errors (NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...).
func (s *SNATClient) AllocatePorts(ctx context.Context, vip, dip, host netip.Addr, hint int) ([]ananta.PortRange, error) {
	if hint < 0 {
		hint = 0
	}
	r, err := s.c.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip.String(), Dip: dip.String(), Host: host.String(), Hint: uint32(min(hint, 1<<16))})
	if err != nil {
		return nil, err
	}
	pr, err := rangeOf(r.GetLease().GetRange())
	if err != nil {
		return nil, err
	}
	return []ananta.PortRange{pr}, nil
}

// ReleasePorts ends dip's leases of ranges.
func (s *SNATClient) ReleasePorts(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) error {
	if len(ranges) == 0 {
		return nil
	}
	req := &api.ReleasePortsRequest{Vip: vip.String(), Dip: dip.String()}
	for _, r := range ranges {
		req.Ranges = append(req.Ranges, &api.PortRange{First: uint32(r.First), Last: uint32(r.Last)})
	}
	_, err := s.c.ReleasePorts(ctx, req)
	return err
}

// RenewLeases renews every lease dip holds from vip and returns those of
// ranges that dip still holds.
func (s *SNATClient) RenewLeases(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) ([]ananta.PortRange, error) {
	r, err := s.c.RenewLeases(ctx, &api.RenewLeasesRequest{Vip: vip.String(), Dip: dip.String()})
	if err != nil {
		return nil, err
	}
	held := make(map[ananta.PortRange]bool)
	for _, l := range r.GetLeases() {
		pr, err := rangeOf(l.GetRange())
		if err != nil {
			return nil, err
		}
		held[pr] = true
	}
	var out []ananta.PortRange
	for _, pr := range ranges {
		if held[pr] {
			out = append(out, pr)
		}
	}
	return out, nil
}
