package mux

import (
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/hashring"
	"github.com/ananta-go/ananta/packetio"
	"github.com/ananta-go/ananta/routing"
)

// Headroom is the number of bytes Process needs in front of a packet for
// the outer header: encap.OverheadIPv6. Configure packet I/O ports with at
// least this much headroom.
const Headroom = encap.OverheadIPv6

// Defaults and limits of Config.
const (
	DefaultMTU                  = 1500
	MinMTU                      = 1320 // IPv6 minimum (1280) + an IPv6 outer header
	DefaultFlowTableBytes       = 64 << 20
	MinFlowTableBytes           = 64 << 10
	MaxFlowTableBytes           = 1 << 40
	DefaultUntrustedShare       = 0.25
	DefaultUntrustedIdleTimeout = 10 * time.Second
	MinUntrustedIdleTimeout     = 100 * time.Millisecond
	DefaultTooBigRate           = 1000 // ICMP errors per second
	DefaultTooBigBurst          = 50
	DefaultTalkerWindow         = 10 * time.Second
	MinTalkerWindow             = 100 * time.Millisecond
	DefaultBatchSize            = 64
	MaxBatchSize                = 1024
	DefaultMaxPacket            = 9216
	// DefaultFlowHashSeed is the flow hash seed used when
	// Config.FlowHashSeed is 0: the ASCII bytes "anantaFH" read as a
	// big-endian integer.
	DefaultFlowHashSeed uint64 = 0x616e616e74614648
)

// DownPolicy says what happens to the tracked flows of a backend that goes
// down.
type DownPolicy uint8

// Down policies.
const (
	// DownMove (the default) re-balances a down backend's flows over the
	// endpoint's usable backends at their next packet, as if they were new.
	DownMove DownPolicy = iota
	// DownKeep keeps sending a down backend's tracked flows to it (only
	// new flows avoid it), for health checks that may be wrong.
	DownKeep
)

// String returns "move" or "keep".
func (p DownPolicy) String() string {
	if p == DownKeep {
		return "keep"
	}
	return "move"
}

// Link is the packet I/O of one worker of Run: it reads packets for VIPs
// from In, sends the encapsulated ones to Out and the ICMP errors it answers
// with to Reply. Give each worker its own ports (for AF_PACKET, several
// sockets in one fanout group).
type Link struct {
	// In is read for packets to VIPs. Its headroom must be at least
	// Headroom. Required.
	In packetio.Port
	// Out receives forwarded (encapsulated) packets; nil means In.
	Out packetio.Port
	// Reply receives the ICMP errors the Mux answers with; nil means In.
	Reply packetio.Port
}

// Config configures a Mux. It is passed by value; the zero value of every
// field but the source addresses selects a default. New calls Validate.
type Config struct {
	// Addr4 and Addr6 are the Mux's own addresses: the outer source of
	// packets tunnelled to hosts of that family when the family has no
	// SourcePrefix. At least one of Addr4, Addr6, SourcePrefix4 and
	// SourcePrefix6 is required, and SetVIP refuses a backend whose host is
	// of a family without a source.
	Addr4, Addr6 netip.Addr
	// SourcePrefix4 and SourcePrefix6, when set, are prefixes of outer
	// source addresses that every host accepts tunnelled packets from (for
	// example a /24 or a /64). The outer source is then derived from the
	// flow hash inside the prefix, so that the hosts' receive-side scaling,
	// which hashes the outer addresses, spreads tunnelled flows over their
	// queues. IPv4 prefixes may be /8 to /32, IPv6 ones /64 to /128.
	SourcePrefix4, SourcePrefix6 netip.Prefix
	// MTU is the path MTU towards the hosts, outer header included.
	// A packet that would exceed it once encapsulated is answered with an
	// ICMP "fragmentation needed" / "packet too big" advertising MTU minus
	// the outer header, or dropped. Default DefaultMTU (1500); at least
	// MinMTU.
	MTU int
	// TTL is the outer TTL or hop limit; 0 means encap.DefaultTTL (64).
	TTL uint8

	// FlowTableBytes is the flow table's memory quota in bytes, allocated
	// once by New; it fixes the table's capacity (FlowEntryBytes per flow).
	// Default DefaultFlowTableBytes (64 MiB, about 1.37 million flows).
	FlowTableBytes int
	// FlowTableShards is the number of independently locked shards of the
	// flow table, a power of two; 0 picks up to 64 by size.
	FlowTableShards int
	// UntrustedShare is the share of the table's capacity that untrusted
	// flows (one packet seen) may hold, in (0, 1); trusted flows (more
	// than one packet seen) may hold the rest. Default 0.25.
	UntrustedShare float64
	// UntrustedIdleTimeout is how long an untrusted flow is remembered
	// without a second packet; a trusted flow is remembered for its
	// endpoint's idle timeout (ananta.VIPConfig.Idle). Default 10 s, at
	// least 100 ms, at most ananta.MaxIdleTimeout.
	UntrustedIdleTimeout time.Duration
	// DownBackendFlows says what happens to the tracked flows of a backend
	// that goes down: DownMove (default) or DownKeep. Flows of a draining
	// backend always stay; flows of a removed backend always move.
	DownBackendFlows DownPolicy

	// FlowHashSeed seeds the flow hash (see the package documentation);
	// 0 means DefaultFlowHashSeed. Every Mux of a pool must use the same
	// seed and Maglev config to pick the same backends.
	FlowHashSeed uint64
	// Maglev sets the size and seed of the endpoints' Maglev tables.
	Maglev hashring.Config

	// TooBigRate and TooBigBurst bound the ICMP "fragmentation needed" /
	// "packet too big" answers with a token bucket: TooBigRate per second
	// (default 1000), bursts of TooBigBurst (default 50).
	TooBigRate  float64
	TooBigBurst int

	// TalkerWindow is the sliding window of TopTalkers; default 10 s.
	TalkerWindow time.Duration

	// Links are the workers' packet I/O for Run, one worker each. The Mux
	// owns the ports: Run and Close close them. Process works without.
	Links []Link
	// BatchSize is the number of packets a worker reads at once; default 64.
	BatchSize int
	// MaxPacket is the largest packet a worker receives, in bytes; default
	// 9216.
	MaxPacket int

	// Announcer, if set, announces the Mux's VIPs to the routers (see
	// the package documentation, "Lifecycle"): the /32 or /128 of every
	// configured VIP while Run's workers are up, SetSynced(true) has been
	// called and the self-check passes. The Mux owns it: Close calls its
	// Close, which withdraws everything. nil: the Mux announces nothing
	// (an external speaker or a static route brings traffic).
	Announcer routing.Announcer
	// NextHop4 and NextHop6 are the Mux's addresses the routers send VIP
	// traffic to, the announcements' next hops; default Addr4 and Addr6.
	// A VIP of a family without a next hop is not announced.
	NextHop4, NextHop6 netip.Addr
	// Communities and MED are attached to every announcement.
	Communities []uint32
	MED         uint32
	// SelfCheckInterval is how often Run checks its data path
	// (SelfCheck) and reconciles the announcements; default
	// DefaultSelfCheckInterval (1 s), at least MinSelfCheckInterval.
	SelfCheckInterval time.Duration

	// Logger receives configuration changes and worker errors, never a
	// line per packet. nil discards.
	Logger *slog.Logger
	// Clock, if set, replaces the system's monotonic clock: it returns the
	// time elapsed since an arbitrary origin and is called for every packet
	// and by the Mux's background goroutine, so it must be safe for
	// concurrent use (for deterministic tests and simulations). If nil, the Mux reads the
	// monotonic clock once per batch of packets and every 10 ms.
	Clock func() time.Duration
}

func invalid(field, format string, args ...any) error {
	return &ananta.ValidationError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

func (c *Config) setDefaults() {
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.TTL == 0 {
		c.TTL = encap.DefaultTTL
	}
	if c.FlowTableBytes == 0 {
		c.FlowTableBytes = DefaultFlowTableBytes
	}
	if c.UntrustedShare == 0 {
		c.UntrustedShare = DefaultUntrustedShare
	}
	if c.UntrustedIdleTimeout == 0 {
		c.UntrustedIdleTimeout = DefaultUntrustedIdleTimeout
	}
	if c.FlowHashSeed == 0 {
		c.FlowHashSeed = DefaultFlowHashSeed
	}
	if c.TooBigRate == 0 {
		c.TooBigRate = DefaultTooBigRate
	}
	if c.TooBigBurst == 0 {
		c.TooBigBurst = DefaultTooBigBurst
	}
	if c.TalkerWindow == 0 {
		c.TalkerWindow = DefaultTalkerWindow
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxPacket == 0 {
		c.MaxPacket = DefaultMaxPacket
	}
	if !c.NextHop4.IsValid() {
		c.NextHop4 = c.Addr4
	}
	if !c.NextHop6.IsValid() {
		c.NextHop6 = c.Addr6
	}
	if c.SelfCheckInterval == 0 {
		c.SelfCheckInterval = DefaultSelfCheckInterval
	}
}

// Validate reports whether the config, with its defaults applied, is
// usable. Errors are *ananta.ValidationError values naming the field, and
// match ananta.ErrInvalidConfig.
func (c Config) Validate() error {
	c.setDefaults()
	if !c.Addr4.IsValid() && !c.Addr6.IsValid() && !c.SourcePrefix4.IsValid() && !c.SourcePrefix6.IsValid() {
		return invalid("Addr4", "one of Addr4, Addr6, SourcePrefix4, SourcePrefix6 is required")
	}
	if c.Addr4.IsValid() {
		if err := ananta.ValidateUnicastAddr("Addr4", c.Addr4); err != nil {
			return err
		}
		if !c.Addr4.Is4() {
			return invalid("Addr4", "must be an IPv4 address, got %s", c.Addr4)
		}
	}
	if c.Addr6.IsValid() {
		if err := ananta.ValidateUnicastAddr("Addr6", c.Addr6); err != nil {
			return err
		}
		if !c.Addr6.Is6() {
			return invalid("Addr6", "must be an IPv6 address, got %s", c.Addr6)
		}
	}
	if p := c.SourcePrefix4; p.IsValid() {
		if !p.Addr().Is4() || p.Bits() < 8 {
			return invalid("SourcePrefix4", "must be an IPv4 prefix of length 8 to 32, got %s", p)
		}
		if p != p.Masked() {
			return invalid("SourcePrefix4", "has host bits set; write %s", p.Masked())
		}
	}
	if p := c.SourcePrefix6; p.IsValid() {
		if !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() < 64 {
			return invalid("SourcePrefix6", "must be an IPv6 prefix of length 64 to 128, got %s", p)
		}
		if p != p.Masked() {
			return invalid("SourcePrefix6", "has host bits set; write %s", p.Masked())
		}
	}
	if c.MTU < MinMTU || c.MTU > 65535 {
		return invalid("MTU", "must be between %d and 65535, got %d", MinMTU, c.MTU)
	}
	if c.FlowTableBytes < MinFlowTableBytes || c.FlowTableBytes > MaxFlowTableBytes {
		return invalid("FlowTableBytes", "must be between %d and %d, got %d", MinFlowTableBytes, int64(MaxFlowTableBytes), c.FlowTableBytes)
	}
	if s := c.FlowTableShards; s < 0 || s > 4096 || s&(s-1) != 0 {
		return invalid("FlowTableShards", "must be 0 or a power of two up to 4096, got %d", s)
	}
	if s := c.FlowTableShards; s > 0 && c.FlowTableBytes/FlowEntryBytes/ways < s {
		return invalid("FlowTableShards", "%d shards need FlowTableBytes >= %d", s, s*ways*FlowEntryBytes)
	}
	if math.IsNaN(c.UntrustedShare) || c.UntrustedShare <= 0 || c.UntrustedShare >= 1 {
		return invalid("UntrustedShare", "must be in (0, 1), got %v", c.UntrustedShare)
	}
	if c.UntrustedIdleTimeout < MinUntrustedIdleTimeout || c.UntrustedIdleTimeout > ananta.MaxIdleTimeout {
		return invalid("UntrustedIdleTimeout", "must be between %s and %s, got %s", MinUntrustedIdleTimeout, ananta.MaxIdleTimeout, c.UntrustedIdleTimeout)
	}
	if c.DownBackendFlows > DownKeep {
		return invalid("DownBackendFlows", "must be DownMove or DownKeep, got %d", c.DownBackendFlows)
	}
	if err := c.Maglev.Validate(); err != nil {
		return invalid("Maglev.Size", "%v", err)
	}
	if math.IsNaN(c.TooBigRate) || c.TooBigRate < 0 || math.IsInf(c.TooBigRate, 0) {
		return invalid("TooBigRate", "must be a finite rate > 0, got %v", c.TooBigRate)
	}
	if c.TooBigBurst < 1 || c.TooBigBurst > 1<<20 {
		return invalid("TooBigBurst", "must be between 1 and %d, got %d", 1<<20, c.TooBigBurst)
	}
	if c.TalkerWindow < MinTalkerWindow || c.TalkerWindow > time.Hour {
		return invalid("TalkerWindow", "must be between %s and 1h, got %s", MinTalkerWindow, c.TalkerWindow)
	}
	for i, l := range c.Links {
		if l.In == nil {
			return invalid(fmt.Sprintf("Links[%d].In", i), "must not be nil")
		}
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		return invalid("BatchSize", "must be between 1 and %d, got %d", MaxBatchSize, c.BatchSize)
	}
	if c.MaxPacket < 1280 || c.MaxPacket > 65535 {
		return invalid("MaxPacket", "must be between 1280 and 65535, got %d", c.MaxPacket)
	}
	if a := c.NextHop4; a.IsValid() {
		if err := ananta.ValidateUnicastAddr("NextHop4", a); err != nil {
			return err
		}
		if !a.Is4() {
			return invalid("NextHop4", "must be an IPv4 address, got %s", a)
		}
	}
	if a := c.NextHop6; a.IsValid() {
		if err := ananta.ValidateUnicastAddr("NextHop6", a); err != nil {
			return err
		}
		if !a.Is6() || a.Is4In6() {
			return invalid("NextHop6", "must be an IPv6 address, got %s", a)
		}
	}
	if c.SelfCheckInterval < MinSelfCheckInterval || c.SelfCheckInterval > time.Hour {
		return invalid("SelfCheckInterval", "must be between %s and 1h, got %s", MinSelfCheckInterval, c.SelfCheckInterval)
	}
	return nil
}
