package manager

import (
	"context"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ananta-go/ananta/api"
)

type agentServer struct {
	api.UnimplementedAgentServiceServer
	m *Manager
}

// Limits of agent reports.
const (
	maxHealthReports = 1 << 14
	maxTrafficTop    = 1 << 12
)

func checkAgent(id string, kind api.AgentKind, address string) error {
	if !validID(id) {
		return status.Errorf(codes.InvalidArgument, "agent_id: must be 1 to %d printable bytes", maxIDLen)
	}
	if kind != api.AgentKind_AGENT_KIND_MUX && kind != api.AgentKind_AGENT_KIND_HOST_AGENT {
		return status.Error(codes.InvalidArgument, "kind: must be AGENT_KIND_MUX or AGENT_KIND_HOST_AGENT")
	}
	if len(address) > maxAddressLen || !utf8.ValidString(address) {
		return status.Errorf(codes.InvalidArgument, "address: must be UTF-8 of at most %d bytes", maxAddressLen)
	}
	return nil
}

// versionsOf checks a list of shard versions.
func (m *Manager) versionsOf(field string, vs []*api.ShardVersion) (map[uint64]uint64, error) {
	out := make(map[uint64]uint64, len(vs))
	for i, v := range vs {
		f := field + "[" + strconv.Itoa(i) + "]"
		if !slices.Contains(m.shards, v.GetShard()) {
			return nil, status.Errorf(codes.InvalidArgument, "%s.shard: %d is not a shard of this deployment (%v)", f, v.GetShard(), m.shards)
		}
		if _, dup := out[v.GetShard()]; dup {
			return nil, status.Errorf(codes.InvalidArgument, "%s.shard: %d listed twice", f, v.GetShard())
		}
		out[v.GetShard()] = v.GetVersion()
	}
	return out, nil
}

// Watch serves a stream from this replica's local applied state: per
// shard a snapshot when the agent's version is unknown or older than the
// retained change log, then the changes as they are applied.
func (s *agentServer) Watch(req *api.WatchRequest, stream api.AgentService_WatchServer) error {
	m := s.m
	if err := checkAgent(req.GetAgentId(), req.GetKind(), req.GetAddress()); err != nil {
		return err
	}
	from, err := m.versionsOf("from", req.GetFrom())
	if err != nil {
		return err
	}
	m.stats.watchStreams.Add(1)
	defer m.stats.watchStreams.Add(-1)
	session := hex.EncodeToString(newID())
	m.reporter.add(&api.AgentUpdate{Id: req.AgentId, Kind: req.Kind, Address: req.Address, Connected: true, Session: session}, from)
	defer func() {
		m.reporter.add(&api.AgentUpdate{Id: req.AgentId, Kind: req.Kind, Address: req.Address, Session: session}, nil)
	}()
	m.log.Debug("manager: watch", "agent", req.AgentId, "kind", req.Kind, "from", from)
	sent := make(map[uint64]uint64, len(m.shards))
	synced := make(map[uint64]bool, len(m.shards))
	for sh, v := range from {
		sent[sh], synced[sh] = v, true
	}
	ctx := stream.Context()
	for {
		ch := m.changes()
		for _, sh := range m.shards {
			v, ok := sent[sh], synced[sh]
			msgs := m.sm(sh).watchStep(&v, &ok)
			sent[sh], synced[sh] = v, ok
			for _, msg := range msgs {
				if err := stream.Send(msg); err != nil {
					return err
				}
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-m.ctx.Done():
			return status.Error(codes.Unavailable, "manager replica is closing")
		}
	}
}

func (s *agentServer) ReportApplied(ctx context.Context, req *api.ReportAppliedRequest) (*api.ReportAppliedResponse, error) {
	m := s.m
	if err := checkAgent(req.GetAgentId(), req.GetKind(), req.GetAddress()); err != nil {
		return nil, err
	}
	vs, err := m.versionsOf("applied", req.GetApplied())
	if err != nil {
		return nil, err
	}
	last := m.reporter.lastVersions(req.AgentId)
	for sh, v := range vs {
		last[sh] = v
	}
	m.reporter.add(&api.AgentUpdate{Id: req.AgentId, Kind: req.Kind, Address: req.Address, AppliedOnly: true}, last)
	return &api.ReportAppliedResponse{}, nil
}

func (s *agentServer) ReportHealth(ctx context.Context, req *api.ReportHealthRequest) (*api.ReportHealthResponse, error) {
	m := s.m
	if !validID(req.GetAgentId()) {
		return nil, status.Errorf(codes.InvalidArgument, "agent_id: must be 1 to %d printable bytes", maxIDLen)
	}
	if len(req.GetReports()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "reports: must not be empty")
	}
	if len(req.GetReports()) > maxHealthReports {
		return nil, status.Errorf(codes.InvalidArgument, "reports: at most %d per call", maxHealthReports)
	}
	byShard := make(map[uint64][]*api.HealthReport)
	for i, r := range req.GetReports() {
		f := "reports[" + strconv.Itoa(i) + "]"
		vip, dip, err := parseVIPDIP(r.GetVip(), r.GetDip())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s.%s", f, status.Convert(err).Message())
		}
		if _, err := port16(f+".port", r.GetPort()); err != nil {
			return nil, invalidArg(err)
		}
		sh := shardOf(vip, m.shards)
		byShard[sh] = append(byShard[sh], &api.HealthReport{Vip: vip.String(), Dip: dip.String(), Port: r.Port, Healthy: r.Healthy})
	}
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	ignored := 0
	for _, sh := range m.shards {
		reps := byShard[sh]
		if len(reps) == 0 {
			continue
		}
		release := m.snat.hold(sh)
		r, err := m.propose(ctx, sh, &api.Command{Op: &api.Command_Health{Health: &api.HealthCommand{AgentId: req.AgentId, Reports: reps}}})
		release()
		if err != nil {
			return nil, err
		}
		ignored += int(r.Ignored)
	}
	if ignored == len(req.Reports) {
		return nil, status.Error(codes.NotFound, "every report names an unknown VIP or backend")
	}
	return &api.ReportHealthResponse{Ignored: uint32(ignored)}, nil
}

func (s *agentServer) ReportTraffic(ctx context.Context, req *api.ReportTrafficRequest) (*api.ReportTrafficResponse, error) {
	m := s.m
	if !validID(req.GetAgentId()) {
		return nil, status.Errorf(codes.InvalidArgument, "agent_id: must be 1 to %d printable bytes", maxIDLen)
	}
	iv, err := durationFrom("interval", req.GetInterval())
	if err != nil {
		return nil, invalidArg(err)
	}
	if iv <= 0 {
		return nil, status.Error(codes.InvalidArgument, "interval: must be > 0")
	}
	if len(req.GetTop()) > maxTrafficTop {
		return nil, status.Errorf(codes.InvalidArgument, "top: at most %d entries", maxTrafficTop)
	}
	byShard := make(map[uint64][]*api.TrafficEntry)
	for i, t := range req.GetTop() {
		vip, err := parseUnicast("top["+strconv.Itoa(i)+"].vip", t.GetVip())
		if err != nil {
			return nil, invalidArg(err)
		}
		sh := shardOf(vip, m.shards)
		byShard[sh] = append(byShard[sh], &api.TrafficEntry{Vip: vip.String(), Packets: t.Packets, Bytes: t.Bytes, Drops: t.Drops})
	}
	ctx, cancel := m.withDeadline(ctx)
	defer cancel()
	ignored := 0
	for _, sh := range m.shards {
		es := byShard[sh]
		if len(es) == 0 {
			continue
		}
		r, err := m.propose(ctx, sh, &api.Command{Op: &api.Command_Traffic{Traffic: &api.TrafficCommand{AgentId: req.AgentId, Interval: int64(iv), Entries: es}}})
		if err != nil {
			return nil, err
		}
		ignored += int(r.Ignored)
	}
	if len(req.Top) > 0 && ignored == len(req.Top) {
		return nil, status.Error(codes.NotFound, "every entry names an unknown VIP")
	}
	return &api.ReportTrafficResponse{Ignored: uint32(ignored)}, nil
}

func (s *agentServer) ListAgents(ctx context.Context, req *api.ListAgentsRequest) (*api.ListAgentsResponse, error) {
	m := s.m
	if req.GetKind() < 0 || req.GetKind() > api.AgentKind_AGENT_KIND_HOST_AGENT {
		return nil, status.Error(codes.InvalidArgument, "kind: unknown agent kind")
	}
	byID := make(map[string]*api.Agent)
	now := m.cfg.Now()
	for _, sh := range m.shards {
		var part api.ListAgentsResponse
		if err := m.read(ctx, sh, &api.Query{Q: &api.Query_ListAgents{ListAgents: &api.ListAgentsRequest{Kind: req.Kind}}}, &part); err != nil {
			return nil, err
		}
		for _, a := range part.Agents {
			a.Connected = a.Connected && now.Sub(a.LastSeen.AsTime()) < m.cfg.AgentTimeout
			old := byID[a.Id]
			if old == nil {
				byID[a.Id] = a
				continue
			}
			old.Applied = append(old.Applied, a.Applied...)
			old.Lag = append(old.Lag, a.Lag...)
			if a.LastSeen.AsTime().After(old.LastSeen.AsTime()) {
				old.LastSeen, old.Address, old.Kind = a.LastSeen, a.Address, a.Kind
			}
			old.Connected = old.Connected || a.Connected
		}
	}
	out := &api.ListAgentsResponse{}
	for _, id := range slices.Sorted(mapsKeys(byID)) {
		out.Agents = append(out.Agents, byID[id])
	}
	return out, nil
}

func (s *agentServer) GetTraffic(ctx context.Context, req *api.GetTrafficRequest) (*api.GetTrafficResponse, error) {
	m := s.m
	limit, err := pageSize(req.GetLimit())
	if err != nil {
		return nil, err
	}
	out := &api.GetTrafficResponse{}
	for _, sh := range m.shards {
		var part api.GetTrafficResponse
		if err := m.read(ctx, sh, &api.Query{Q: &api.Query_Traffic{Traffic: &api.GetTrafficRequest{}}}, &part); err != nil {
			return nil, err
		}
		out.Vips = append(out.Vips, part.Vips...)
	}
	slices.SortStableFunc(out.Vips, func(a, b *api.VIPTraffic) int {
		switch {
		case a.PacketsPerSecond > b.PacketsPerSecond:
			return -1
		case a.PacketsPerSecond < b.PacketsPerSecond:
			return 1
		}
		return netip.MustParseAddr(a.Vip).Compare(netip.MustParseAddr(b.Vip))
	})
	if len(out.Vips) > limit {
		out.Vips = out.Vips[:limit]
	}
	return out, nil
}
