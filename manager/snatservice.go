package manager

import (
	"context"
	"math/bits"
	"net/netip"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/snat"
)

type snatServer struct {
	api.UnimplementedSNATServiceServer
	m *Manager
}

// maxReleaseRanges caps the ranges of one ReleasePorts call: more than a
// VIP's whole port space in 8-port ranges cannot all be leased.
const maxReleaseRanges = (ananta.LastSNATPort - ananta.FirstSNATPort + 1) / snat.MinRangeSize

// parseVIPDIP parses and checks a VIP and one of its DIPs.
func parseVIPDIP(vipS, dipS string) (vip, dip netip.Addr, err error) {
	if vip, err = parseUnicast("vip", vipS); err != nil {
		return vip, dip, invalidArg(err)
	}
	if dip, err = parseUnicast("dip", dipS); err != nil {
		return vip, dip, invalidArg(err)
	}
	if dip.Is4() != vip.Is4() {
		return vip, dip, status.Errorf(codes.InvalidArgument, "dip: %s is not of the address family of vip %s", dip, vip)
	}
	return vip, dip, nil
}

// checkSNATVIP fails fast for a VIP that this replica does not know with
// SNAT enabled, after confirming with a linearizable read (the replica may
// lag behind a VIP just created).
func (m *Manager) checkSNATVIP(ctx context.Context, shard uint64, vip netip.Addr) error {
	if exists, enabled := m.sm(shard).snatInfo(vip); exists && enabled {
		return nil
	}
	var v api.VIP
	if err := m.read(ctx, shard, &api.Query{Q: &api.Query_GetVip{GetVip: &api.GetVIPRequest{Vip: vip.String()}}}, &v); err != nil {
		return err
	}
	if !v.GetConfig().GetSnat().GetEnabled() {
		return status.Errorf(codes.FailedPrecondition, "vip: %s does not have SNAT enabled", vip)
	}
	return nil
}

// sizeOfHint rounds a port hint up to a valid range size.
func sizeOfHint(hint uint32) uint32 {
	if hint == 0 {
		return 0
	}
	if hint <= snat.MinRangeSize {
		return snat.MinRangeSize
	}
	if hint >= snat.MaxRangeSize {
		return snat.MaxRangeSize
	}
	return 1 << bits.Len32(hint-1)
}

func (s *snatServer) AllocatePorts(ctx context.Context, req *api.AllocatePortsRequest) (*api.AllocatePortsResponse, error) {
	m := s.m
	vip, dip, err := parseVIPDIP(req.GetVip(), req.GetDip())
	if err != nil {
		return nil, err
	}
	host, err := parseUnicast("host", req.GetHost())
	if err != nil {
		return nil, invalidArg(err)
	}
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	shard := shardOf(vip, m.shards)
	if resp, ok, err := m.forwardAllocate(ctx, shard, req); ok {
		return resp, err
	}
	if err := m.checkSNATVIP(ctx, shard, vip); err != nil {
		return nil, err
	}
	res, joined, err := m.snat.allocate(ctx, shard, dipKey{vip, dip}, host, sizeOfHint(req.GetHint()))
	if err != nil {
		return nil, err
	}
	if codes.Code(res.Code) != codes.OK {
		return nil, status.Error(codes.Code(res.Code), res.Message)
	}
	return &api.AllocatePortsResponse{
		Lease: &api.Lease{
			Vip:    vip.String(),
			Range:  &api.PortRange{First: res.First, Last: res.Last},
			Dip:    dip.String(),
			Host:   host.String(),
			Expiry: timestamppb.New(time.Unix(0, res.Expiry)),
		},
		Joined: joined,
	}, nil
}

func (s *snatServer) ReleasePorts(ctx context.Context, req *api.ReleasePortsRequest) (*api.ReleasePortsResponse, error) {
	m := s.m
	vip, err := parseUnicast("vip", req.GetVip())
	if err != nil {
		return nil, invalidArg(err)
	}
	var dip netip.Addr
	if req.GetDip() != "" || !req.GetForce() {
		if _, dip, err = parseVIPDIP(req.GetVip(), req.GetDip()); err != nil {
			return nil, err
		}
	}
	if len(req.GetRanges()) == 0 && !dip.IsValid() {
		return nil, status.Error(codes.InvalidArgument, "ranges: must not be empty without a dip")
	}
	if len(req.GetRanges()) > maxReleaseRanges {
		return nil, status.Errorf(codes.InvalidArgument, "ranges: at most %d ranges per call", maxReleaseRanges)
	}
	for i, r := range req.GetRanges() {
		f := "ranges[" + strconv.Itoa(i) + "]"
		pr, err := portRangeFrom(f, r)
		if err != nil {
			return nil, invalidArg(err)
		}
		if r == nil || pr.Len() < snat.MinRangeSize || pr.Len()&(pr.Len()-1) != 0 || int(pr.First)%pr.Len() != 0 {
			return nil, status.Errorf(codes.InvalidArgument, "%s: must be an aligned power-of-two range of at least %d ports", f, snat.MinRangeSize)
		}
	}
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	cmd := &api.ReleaseCommand{Vip: addrBytes(vip), Dip: addrBytes(dip), Ranges: req.GetRanges(), Force: req.GetForce()}
	if !dip.IsValid() {
		cmd.Dip = nil
	}
	r, err := m.propose(ctx, shardOf(vip, m.shards), &api.Command{Id: newID(), Op: &api.Command_Release{Release: cmd}})
	if err != nil {
		return nil, err
	}
	if err := statusOf(r); err != nil {
		return nil, err
	}
	return &api.ReleasePortsResponse{Released: r.Leases}, nil
}

func (s *snatServer) RenewLeases(ctx context.Context, req *api.RenewLeasesRequest) (*api.RenewLeasesResponse, error) {
	m := s.m
	vip, dip, err := parseVIPDIP(req.GetVip(), req.GetDip())
	if err != nil {
		return nil, err
	}
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	cmd := &api.RenewCommand{Vip: addrBytes(vip), Dip: addrBytes(dip), Ttl: int64(m.cfg.LeaseTTL)}
	r, err := m.propose(ctx, shardOf(vip, m.shards), &api.Command{Id: newID(), Op: &api.Command_Renew{Renew: cmd}})
	if err != nil {
		return nil, err
	}
	if err := statusOf(r); err != nil {
		return nil, err
	}
	return &api.RenewLeasesResponse{Leases: r.Leases}, nil
}

func (s *snatServer) ListLeases(ctx context.Context, req *api.ListLeasesRequest) (*api.ListLeasesResponse, error) {
	m := s.m
	vip, err := parseUnicast("vip", req.GetVip())
	if err != nil {
		return nil, invalidArg(err)
	}
	q := &api.ListLeasesRequest{Vip: vip.String()}
	if req.GetDip() != "" {
		_, dip, err := parseVIPDIP(req.GetVip(), req.GetDip())
		if err != nil {
			return nil, err
		}
		q.Dip = dip.String()
	}
	var out api.ListLeasesResponse
	if err := m.read(ctx, shardOf(vip, m.shards), &api.Query{Q: &api.Query_ListLeases{ListLeases: q}}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
