package hostagent

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/snat"
)

// PortAllocator leases SNAT port ranges to the agent: the Manager's SNAT
// allocator seen from a host. The Manager's gRPC client implements it;
// MemAllocator is an in-memory implementation.
//
// The agent calls it from its own goroutines, at most one AllocatePorts at
// a time per (VIP, DIP), never while holding a lock of the data path, with
// a context that carries a deadline.
type PortAllocator interface {
	// AllocatePorts leases ports of vip to dip, which runs on host (the
	// Muxes send return traffic for the ports there). hint is the number
	// of ports wanted, a power of two of at least 8; the allocator may
	// grant fewer or more. It returns the granted ranges, which must not
	// overlap ranges dip already holds.
	AllocatePorts(ctx context.Context, vip, dip, host netip.Addr, hint int) ([]ananta.PortRange, error)
	// ReleasePorts ends the leases of ranges early: the agent no longer
	// uses them.
	ReleasePorts(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) error
	// RenewLeases extends the leases of ranges and returns those that are
	// still held by dip; the agent stops using the others.
	RenewLeases(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) ([]ananta.PortRange, error)
}

// MemAllocatorConfig configures a MemAllocator.
type MemAllocatorConfig struct {
	// TTL is the lease time granted and renewed. Default 5 minutes.
	TTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Leases configures the underlying snat.Leases (per-DIP limit,
	// predictor of AllocateDemand).
	Leases snat.LeasesConfig
}

// MemAllocator is an in-memory PortAllocator over snat.Leases, the
// Manager's own lease bookkeeping: the same buddy allocation of
// power-of-two ranges, per-DIP limits and lease expiry, without
// replication. VIPs are configured on first use with default SNAT settings
// unless ConfigureVIP was called. It is safe for concurrent use; Owner
// gives the Mux's SNAT return map (VIP:port -> host) for tests that play the
// Mux.
type MemAllocator struct {
	ttl time.Duration
	now func() time.Time

	// mu guards leases.
	mu     sync.Mutex
	leases *snat.Leases
}

// NewMemAllocator returns an allocator with no VIPs. Errors match
// ErrInvalidConfig.
func NewMemAllocator(cfg MemAllocatorConfig) (*MemAllocator, error) {
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Minute
	}
	if cfg.TTL < 0 || cfg.TTL > snat.MaxLeaseTTL {
		return nil, invalidf("TTL", "must be between 0 and %s", snat.MaxLeaseTTL)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l, err := snat.NewLeases(cfg.Leases)
	if err != nil {
		return nil, fmt.Errorf("%w: Leases: %w", ErrInvalidConfig, err)
	}
	return &MemAllocator{ttl: cfg.TTL, now: cfg.Now, leases: l}, nil
}

// ConfigureVIP sets the SNAT configuration of vip (reserved ports and
// preallocation size).
func (m *MemAllocator) ConfigureVIP(vip netip.Addr, cfg snat.VIPConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leases.ConfigureVIP(vip, cfg)
}

func (m *MemAllocator) ensure(vip netip.Addr) error {
	if _, ok := m.leases.VIPConfig(vip); ok {
		return nil
	}
	return m.leases.ConfigureVIP(vip, snat.VIPConfig{})
}

// AllocatePorts implements PortAllocator: one range of hint ports (rounded
// up to a power of two from 8 to 32768), or the largest free range that is
// smaller when none that big is left.
func (m *MemAllocator) AllocatePorts(ctx context.Context, vip, dip, host netip.Addr, hint int) ([]ananta.PortRange, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	size := max(snat.MinRangeSize, min(snat.MaxRangeSize, 1<<bits.Len(uint(max(hint, 1)-1))))
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.ensure(vip); err != nil {
		return nil, err
	}
	now := m.now()
	for ; size >= snat.MinRangeSize; size /= 2 {
		l, err := m.leases.Allocate(vip, dip, host, size, now, m.ttl)
		if err == nil {
			return []ananta.PortRange{l.Range}, nil
		}
		if !errors.Is(err, snat.ErrExhausted) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("hostagent: vip %s: %w", vip, snat.ErrExhausted)
}

// ReleasePorts implements PortAllocator.
func (m *MemAllocator) ReleasePorts(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, r := range ranges {
		if _, err := m.leases.Release(vip, r, dip); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RenewLeases implements PortAllocator; expired leases are reclaimed first,
// so a range whose lease ran out is not renewed.
func (m *MemAllocator) RenewLeases(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) ([]ananta.PortRange, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.leases.Expire(now)
	var out []ananta.PortRange
	for _, r := range ranges {
		if _, err := m.leases.Renew(vip, r, dip, now, m.ttl); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// Owner returns the lease that holds vip:port: the DIP and host the Muxes
// send return traffic to.
func (m *MemAllocator) Owner(vip netip.Addr, port uint16) (snat.Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leases.Owner(vip, port)
}

// PortsHeld returns the number of vip's ports leased to dip.
func (m *MemAllocator) PortsHeld(vip, dip netip.Addr) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leases.PortsHeld(vip, dip)
}

// Leases returns the leases dip holds from vip.
func (m *MemAllocator) Leases(vip, dip netip.Addr) []snat.Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leases.DIPLeases(vip, dip)
}

var _ PortAllocator = (*MemAllocator)(nil)
