package manager

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ananta-go/ananta/api"
)

// Forwarding of SNAT allocations to the shard leader's replica. When
// Config.Peers names the replicas' gRPC addresses, a replica that does not
// lead a VIP's shard hands AllocatePorts to the replica that does, so that
// a shard's requests meet in one set of per-VIP queues: batches are larger
// (fewer proposals for the same allocations), the "one pending request per
// DIP" and the rate limits hold cluster-wide, and the proposal skips
// Dragonboat's own forwarding hop. A forwarded request is never forwarded
// again; if the leader cannot be reached, the replica serves the request
// itself.

// forwardedKey marks a forwarded call in its gRPC metadata.
const forwardedKey = "ananta-forwarded"

// peers holds the connections to the other replicas.
type peers struct {
	m *Manager
	// mu guards conns.
	mu    sync.Mutex
	conns map[uint64]*grpc.ClientConn
}

func (p *peers) client(id uint64) (api.SNATServiceClient, bool) {
	addr, ok := p.m.cfg.Peers[id]
	if !ok {
		return nil, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = make(map[uint64]*grpc.ClientConn)
	}
	c := p.conns[id]
	if c == nil {
		opts := p.m.cfg.PeerDialOptions
		if opts == nil {
			opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		}
		var err error
		if c, err = grpc.NewClient(addr, opts...); err != nil {
			p.m.log.Warn("manager: cannot dial peer", "replica", id, "addr", addr, "err", err)
			return nil, false
		}
		p.conns[id] = c
	}
	return api.NewSNATServiceClient(c), true
}

func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// forwardAllocate hands req to shard's leader when that is another replica
// with a known address. ok is false when the request must be served here.
func (m *Manager) forwardAllocate(ctx context.Context, shard uint64, req *api.AllocatePortsRequest) (resp *api.AllocatePortsResponse, ok bool, err error) {
	if len(m.cfg.Peers) == 0 {
		return nil, false, nil
	}
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedKey)) > 0 {
		return nil, false, nil
	}
	leader, known := m.node.Leader(shard)
	if !known || leader == m.node.ID() {
		return nil, false, nil
	}
	c, found := m.peers.client(leader)
	if !found {
		return nil, false, nil
	}
	m.stats.snatForwarded.Add(1)
	resp, err = c.AllocatePorts(metadata.AppendToOutgoingContext(ctx, forwardedKey, "1"), req)
	if st, _ := status.FromError(err); err != nil && st.Code() == codes.Unavailable && ctx.Err() == nil {
		return nil, false, nil // the leader is gone: serve it here
	}
	return resp, true, err
}
