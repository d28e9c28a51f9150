package manager

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta/api"
)

type vipServer struct {
	api.UnimplementedVIPServiceServer
	m *Manager
}

// statusOf turns a non-OK result into a status error.
func statusOf(r *api.Result) error {
	if codes.Code(r.Code) == codes.OK {
		return nil
	}
	return status.Error(codes.Code(r.Code), r.Message)
}

func invalidArg(err error) error { return status.Error(codes.InvalidArgument, err.Error()) }

func waitDuration(d *durationpb.Duration) (time.Duration, error) {
	w, err := durationFrom("wait_for_agents", d)
	if err != nil {
		return 0, invalidArg(err)
	}
	return w, nil
}

// change proposes a VIP change with priority over SNAT and, when asked,
// waits for the agents to apply it.
func (m *Manager) change(ctx context.Context, shard uint64, cmd *api.Command, wait time.Duration) (*api.VIPResponse, error) {
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	release := m.snat.hold(shard)
	r, err := m.propose(ctx, shard, cmd)
	release()
	if err != nil {
		return nil, err
	}
	if err := statusOf(r); err != nil {
		return nil, err
	}
	resp := &api.VIPResponse{Vip: r.Vip, Distribution: &api.Distribution{Shard: shard, Version: r.Version}}
	if wait > 0 {
		m.waitApplied(ctx, resp.Distribution, wait)
	}
	return resp, nil
}

// waitApplied waits until every connected agent has applied d.Version of
// d.Shard, for at most wait (and not past ctx), and fills in d.
func (m *Manager) waitApplied(ctx context.Context, d *api.Distribution, wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	timeout := int64(m.cfg.AgentTimeout)
	for {
		ch := m.changes()
		n, lagging := m.sm(d.Shard).agentLag(d.Version, m.cfg.Now().UnixNano(), timeout)
		d.Agents, d.Lagging, d.Complete = uint32(n), lagging, len(lagging) == 0
		if d.Complete {
			return
		}
		select {
		case <-ch:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		case <-m.ctx.Done():
			return
		}
	}
}

func (m *Manager) checkConfig(pb *api.VIPConfig) (uint64, error) {
	cfg, err := VIPConfigFromProto(pb)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		return 0, invalidArg(err)
	}
	return shardOf(cfg.VIP, m.shards), nil
}

func (s *vipServer) CreateVIP(ctx context.Context, req *api.CreateVIPRequest) (*api.VIPResponse, error) {
	m := s.m
	shard, err := m.checkConfig(req.GetConfig())
	if err != nil {
		return nil, err
	}
	if len(req.GetIdempotencyKey()) > maxIDLen {
		return nil, status.Errorf(codes.InvalidArgument, "idempotency_key: must be at most %d bytes", maxIDLen)
	}
	wait, err := waitDuration(req.GetWaitForAgents())
	if err != nil {
		return nil, err
	}
	cmd := &api.Command{Id: newID(), Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{
		Config: req.Config, Create: true, IdempotencyKey: req.IdempotencyKey, Ttl: int64(m.cfg.LeaseTTL),
	}}}
	return m.change(ctx, shard, cmd, wait)
}

func (s *vipServer) UpdateVIP(ctx context.Context, req *api.UpdateVIPRequest) (*api.VIPResponse, error) {
	m := s.m
	shard, err := m.checkConfig(req.GetConfig())
	if err != nil {
		return nil, err
	}
	if len(req.GetIdempotencyKey()) > maxIDLen {
		return nil, status.Errorf(codes.InvalidArgument, "idempotency_key: must be at most %d bytes", maxIDLen)
	}
	wait, err := waitDuration(req.GetWaitForAgents())
	if err != nil {
		return nil, err
	}
	cmd := &api.Command{Id: newID(), Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{
		Config: req.Config, ExpectedVersion: req.ExpectedVersion, IdempotencyKey: req.IdempotencyKey, Ttl: int64(m.cfg.LeaseTTL),
	}}}
	return m.change(ctx, shard, cmd, wait)
}

func (s *vipServer) DeleteVIP(ctx context.Context, req *api.DeleteVIPRequest) (*api.VIPResponse, error) {
	m := s.m
	vip, err := parseUnicast("vip", req.GetVip())
	if err != nil {
		return nil, invalidArg(err)
	}
	if len(req.GetIdempotencyKey()) > maxIDLen {
		return nil, status.Errorf(codes.InvalidArgument, "idempotency_key: must be at most %d bytes", maxIDLen)
	}
	wait, err := waitDuration(req.GetWaitForAgents())
	if err != nil {
		return nil, err
	}
	cmd := &api.Command{Id: newID(), Op: &api.Command_DeleteVip{DeleteVip: &api.DeleteVIPCommand{
		Vip: vip.String(), ExpectedVersion: req.ExpectedVersion, IdempotencyKey: req.IdempotencyKey,
	}}}
	return m.change(ctx, shardOf(vip, m.shards), cmd, wait)
}

func (s *vipServer) GetVIP(ctx context.Context, req *api.GetVIPRequest) (*api.VIP, error) {
	vip, err := parseUnicast("vip", req.GetVip())
	if err != nil {
		return nil, invalidArg(err)
	}
	var out api.VIP
	err = s.m.read(ctx, shardOf(vip, s.m.shards), &api.Query{Q: &api.Query_GetVip{GetVip: &api.GetVIPRequest{Vip: vip.String()}}}, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Page sizes of list calls.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func pageSize(n uint32) (int, error) {
	switch {
	case n == 0:
		return defaultPageSize, nil
	case n > maxPageSize:
		return 0, status.Errorf(codes.InvalidArgument, "page_size: must be at most %d", maxPageSize)
	}
	return int(n), nil
}

func (s *vipServer) ListVIPs(ctx context.Context, req *api.ListVIPsRequest) (*api.ListVIPsResponse, error) {
	m := s.m
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	if req.GetPageToken() != "" {
		if _, err := netip.ParseAddr(req.GetPageToken()); err != nil {
			return nil, status.Error(codes.InvalidArgument, "page_token: not a token of ListVIPs")
		}
	}
	if len(req.GetTenant()) > 1024 {
		return nil, status.Error(codes.InvalidArgument, "tenant: too long")
	}
	q := &api.Query{Q: &api.Query_ListVips{ListVips: &api.ListVIPsRequest{Tenant: req.Tenant, PageSize: uint32(size) + 1, PageToken: req.PageToken}}}
	var all []*api.VIP
	for _, shard := range m.shards {
		var part api.ListVIPsResponse
		if err := m.read(ctx, shard, q, &part); err != nil {
			return nil, err
		}
		all = append(all, part.Vips...)
	}
	slices.SortFunc(all, func(a, b *api.VIP) int {
		return netip.MustParseAddr(a.Config.Vip).Compare(netip.MustParseAddr(b.Config.Vip))
	})
	out := &api.ListVIPsResponse{}
	if len(all) > size {
		all = all[:size]
		out.NextPageToken = all[size-1].Config.Vip
	}
	out.Vips = all
	return out, nil
}
