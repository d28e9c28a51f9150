package snat

import (
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"time"

	"github.com/ananta-go/ananta"
)

// Lease limits and defaults.
const (
	// DefaultMaxPortsPerDIP is the default cap on the ports one DIP may
	// hold from one VIP: half of a VIP's port space, so one DIP can never
	// starve the others of a VIP completely.
	DefaultMaxPortsPerDIP = 32768
	// MaxPortsPerDIPLimit is the largest accepted LeasesConfig.MaxPortsPerDIP:
	// the whole port space FirstSNATPort..LastSNATPort.
	MaxPortsPerDIPLimit = ananta.LastSNATPort - ananta.FirstSNATPort + 1
	// MaxLeaseTTL is the longest lease a single call may grant or renew.
	MaxLeaseTTL = 24 * time.Hour
	// MaxPoolSize is the largest VIPConfig.PoolSize accepted.
	MaxPoolSize = 1 << 20
)

// LeasesConfig configures a Leases. The zero value selects the defaults.
type LeasesConfig struct {
	// MaxPortsPerDIP caps the ports one DIP may hold from one VIP (the sum
	// of its leases' sizes). 0 means DefaultMaxPortsPerDIP (32768);
	// otherwise MinRangeSize to MaxPortsPerDIPLimit.
	MaxPortsPerDIP int
	// Predictor tunes the demand prediction of AllocateDemand.
	Predictor PredictorConfig
}

func (c LeasesConfig) withDefaults() LeasesConfig {
	if c.MaxPortsPerDIP == 0 {
		c.MaxPortsPerDIP = DefaultMaxPortsPerDIP
	}
	c.Predictor = c.Predictor.withDefaults()
	return c
}

// Validate reports whether c is usable; errors match ErrInvalidConfig.
func (c LeasesConfig) Validate() error {
	d := c.withDefaults()
	if d.MaxPortsPerDIP < MinRangeSize || d.MaxPortsPerDIP > MaxPortsPerDIPLimit {
		return errorf(ErrInvalidConfig, "max ports per DIP %d out of range [%d, %d]", d.MaxPortsPerDIP, MinRangeSize, MaxPortsPerDIPLimit)
	}
	return d.Predictor.Validate()
}

// VIPConfig is the SNAT configuration of one VIP's port space.
type VIPConfig struct {
	// Reserved lists ports SNAT must never lease (the VIP's inbound ports,
	// for example); at most ananta.MaxReservedRanges non-overlapping ranges.
	Reserved []ananta.PortRange
	// PortsPerDIP is the preallocation size per DIP: 0 scales it with the
	// pool size (ananta.SNATPortsPerDIP), otherwise a power of two from
	// MinRangeSize to MaxRangeSize.
	PortsPerDIP int
	// PoolSize is the number of DIPs that use the VIP for SNAT, which sets
	// the preallocation size when PortsPerDIP is 0. 0 means "the number of
	// DIPs passed to Preallocate". At most MaxPoolSize.
	PoolSize int
}

// VIPConfigOf derives a VIP's SNAT configuration from its full
// configuration: its reserved ranges and PortsPerDIP, and as pool size the
// number of distinct DIPs over all its endpoints.
func VIPConfigOf(c *ananta.VIPConfig) VIPConfig {
	seen := make(map[netip.Addr]struct{})
	for _, e := range c.Endpoints {
		for _, b := range e.Backends {
			seen[b.DIP] = struct{}{}
		}
	}
	return VIPConfig{
		Reserved:    slices.Clone(c.SNAT.Reserved),
		PortsPerDIP: c.SNAT.PortsPerDIP,
		PoolSize:    len(seen),
	}
}

func (c *VIPConfig) validate() error {
	if c.PortsPerDIP != 0 {
		if _, ok := sizeOrder(c.PortsPerDIP); !ok {
			return errorf(ErrInvalidConfig, "ports per DIP %d is not 0 or a power of two from %d to %d", c.PortsPerDIP, MinRangeSize, MaxRangeSize)
		}
	}
	if c.PoolSize < 0 || c.PoolSize > MaxPoolSize {
		return errorf(ErrInvalidConfig, "pool size %d out of range [0, %d]", c.PoolSize, MaxPoolSize)
	}
	return nil
}

// prealloc returns the preallocation size for a pool of n DIPs.
func (c *VIPConfig) prealloc(n int) int {
	if c.PortsPerDIP != 0 {
		return c.PortsPerDIP
	}
	if c.PoolSize != 0 {
		n = c.PoolSize
	}
	return ananta.SNATPortsPerDIP(n)
}

// DIPHost names a DIP and the physical host that runs it.
type DIPHost struct {
	DIP  netip.Addr
	Host netip.Addr
}

// Lease is a range of a VIP's ports leased to one DIP.
type Lease struct {
	VIP   netip.Addr
	Range ananta.PortRange
	// DIP holds the lease: only it may renew or release it.
	DIP netip.Addr
	// Host runs the DIP: the Muxes send return traffic for Range there.
	Host netip.Addr
	// Expiry is when the lease ends unless renewed: Expire(now) reclaims it
	// once Expiry <= now. It is always UTC without a monotonic reading, so
	// Lease values compare with ==.
	Expiry time.Time
}

// DIPPorts summarises what one DIP holds from a VIP.
type DIPPorts struct {
	DIP    netip.Addr
	Ports  int // sum of the leases' sizes
	Leases int // number of leases
}

type leaseEntry struct {
	vip       *vipState
	r         ananta.PortRange
	dip, host netip.Addr
	expiry    int64 // Unix nanoseconds
	hidx      int   // index in Leases.exp, -1 when not queued
}

func (e *leaseEntry) lease() Lease {
	return Lease{VIP: e.vip.addr, Range: e.r, DIP: e.dip, Host: e.host, Expiry: timeOf(e.expiry)}
}

type dipState struct {
	held   int      // ports held
	firsts []uint16 // First of each lease, ascending
	pred   predState
}

type vipState struct {
	addr    netip.Addr
	cfg     VIPConfig // Reserved sorted
	space   *Space
	byFirst map[uint16]*leaseEntry
	dips    map[netip.Addr]*dipState
}

// Leases is the Manager's SNAT lease bookkeeping for many VIPs: each VIP's
// port Space, the leases of its ranges to (DIP, host) pairs with their
// expiry, per-DIP limits and demand prediction, and the return map from
// VIP:port to the lease's host.
//
// Leases is a deterministic state machine, fit for replication with Raft:
// the same sequence of calls with the same arguments (times are explicit
// arguments, never read from a clock) yields the same results and the same
// state on every replica. There is no randomness, and no result depends on
// map iteration order: every list is returned in a defined order. A failed
// call changes nothing. MarshalBinary and UnmarshalBinary save and restore
// the exact state.
//
// Times are stored as int64 Unix nanoseconds; a time outside that range
// (years 1678 to 2262), including the zero time.Time, is rejected with
// ErrInvalidTime.
//
// A Leases is not safe for concurrent use; the Manager applies commands to
// it one at a time.
type Leases struct {
	cfg  LeasesConfig // with defaults
	vips map[netip.Addr]*vipState
	exp  expiryHeap
	n    int // leases
}

// NewLeases returns an empty Leases. It returns an error matching
// ErrInvalidConfig for an invalid cfg.
func NewLeases(cfg LeasesConfig) (*Leases, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Leases{cfg: cfg.withDefaults(), vips: make(map[netip.Addr]*vipState)}, nil
}

// Config returns the configuration with defaults filled in.
func (l *Leases) Config() LeasesConfig { return l.cfg }

func checkVIP(vip netip.Addr) error {
	if err := ananta.ValidateUnicastAddr("vip", vip); err != nil {
		return errorf(ErrInvalidAddr, "%v", err)
	}
	return nil
}

func checkDIP(vip, dip netip.Addr) error {
	if err := ananta.ValidateUnicastAddr("dip", dip); err != nil {
		return errorf(ErrInvalidAddr, "%v", err)
	}
	if dip.Is4() != vip.Is4() {
		return errorf(ErrInvalidAddr, "dip %s is not of the address family of vip %s", dip, vip)
	}
	return nil
}

func checkHost(host netip.Addr) error {
	if err := ananta.ValidateUnicastAddr("host", host); err != nil {
		return errorf(ErrInvalidAddr, "%v", err)
	}
	return nil
}

// expiryOf checks now and ttl and returns now and now + ttl in Unix
// nanoseconds.
func expiryOf(now time.Time, ttl time.Duration) (ns, exp int64, err error) {
	ns, ok := nanos(now)
	if !ok {
		return 0, 0, errorf(ErrInvalidTime, "time %s is outside int64 Unix nanoseconds", now)
	}
	if ttl <= 0 || ttl > MaxLeaseTTL {
		return 0, 0, errorf(ErrInvalidTime, "ttl %s out of range (0, %s]", ttl, MaxLeaseTTL)
	}
	if ns > math.MaxInt64-int64(ttl) {
		return 0, 0, errorf(ErrInvalidTime, "expiry %s + %s overflows", now, ttl)
	}
	return ns, ns + int64(ttl), nil
}

func (l *Leases) vip(vip netip.Addr) (*vipState, error) {
	vs := l.vips[vip]
	if vs == nil {
		return nil, errorf(ErrUnknownVIP, "vip %s is not configured", vip)
	}
	return vs, nil
}

// ConfigureVIP sets up vip's port space, or reconfigures it. Reconfiguring
// keeps every lease; if a lease covers a port the new configuration
// reserves, it fails with an error matching ErrReserved and changes
// nothing (force-release such leases first). Other errors match
// ErrInvalidAddr, ErrInvalidConfig, ErrInvalidRange or ErrOverlap.
func (l *Leases) ConfigureVIP(vip netip.Addr, cfg VIPConfig) error {
	if err := checkVIP(vip); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	rs, err := checkReserved(cfg.Reserved)
	if err != nil {
		return err
	}
	cfg.Reserved = rs
	space, err := NewSpace(rs)
	if err != nil {
		return err
	}
	vs := l.vips[vip]
	if vs == nil {
		l.vips[vip] = &vipState{
			addr: vip, cfg: cfg, space: space,
			byFirst: make(map[uint16]*leaseEntry),
			dips:    make(map[netip.Addr]*dipState),
		}
		return nil
	}
	for _, r := range vs.space.Ranges() {
		if err := space.AllocateAt(r); err != nil {
			e := vs.byFirst[r.First]
			return errorf(ErrReserved, "vip %s: lease %s of dip %s covers ports the new configuration reserves", vip, r, e.dip)
		}
	}
	vs.cfg, vs.space = cfg, space
	return nil
}

// RemoveVIP removes vip and releases all its leases, which it returns in
// ascending range order. It returns an error matching ErrUnknownVIP if vip
// is not configured.
func (l *Leases) RemoveVIP(vip netip.Addr) ([]Lease, error) {
	vs, err := l.vip(vip)
	if err != nil {
		return nil, err
	}
	out := l.VIPLeases(vip)
	for _, x := range out { // in range order, so the heap ends the same on every replica
		l.exp.remove(vs.byFirst[x.Range.First])
	}
	l.n -= len(out)
	delete(l.vips, vip)
	return out, nil
}

// VIPs returns the configured VIPs in ascending order.
func (l *Leases) VIPs() []netip.Addr {
	out := make([]netip.Addr, 0, len(l.vips))
	for a := range l.vips {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// VIPConfig returns vip's configuration (reserved ranges sorted).
func (l *Leases) VIPConfig(vip netip.Addr) (VIPConfig, bool) {
	vs := l.vips[vip]
	if vs == nil {
		return VIPConfig{}, false
	}
	c := vs.cfg
	c.Reserved = slices.Clone(c.Reserved)
	return c, true
}

// PreallocSize returns the number of ports Preallocate gives each of n DIPs
// of vip (0 if vip is not configured).
func (l *Leases) PreallocSize(vip netip.Addr, n int) int {
	vs := l.vips[vip]
	if vs == nil {
		return 0
	}
	return vs.cfg.prealloc(n)
}

// add records a lease of an allocated range.
func (l *Leases) add(vs *vipState, r ananta.PortRange, dip, host netip.Addr, expiry int64) *leaseEntry {
	e := &leaseEntry{vip: vs, r: r, dip: dip, host: host, expiry: expiry, hidx: -1}
	vs.byFirst[r.First] = e
	ds := vs.dips[dip]
	if ds == nil {
		ds = &dipState{}
		vs.dips[dip] = ds
	}
	ds.held += r.Len()
	i, _ := slices.BinarySearch(ds.firsts, r.First)
	ds.firsts = slices.Insert(ds.firsts, i, r.First)
	l.exp.push(e)
	l.n++
	return e
}

// drop removes a lease and frees its range.
func (l *Leases) drop(e *leaseEntry) {
	vs := e.vip
	if err := vs.space.Free(e.r); err != nil {
		panic("snat: lease without allocated range: " + err.Error()) // unreachable: invariant
	}
	delete(vs.byFirst, e.r.First)
	ds := vs.dips[e.dip]
	ds.held -= e.r.Len()
	if i, ok := slices.BinarySearch(ds.firsts, e.r.First); ok {
		ds.firsts = slices.Delete(ds.firsts, i, i+1)
	}
	if len(ds.firsts) == 0 {
		delete(vs.dips, e.dip)
	}
	l.exp.remove(e)
	l.n--
}

// Allocate leases a free range of size ports of vip to dip, which runs on
// host, until now + ttl, and counts the ports as dip's demand for
// AllocateDemand. Each lease records its own host, so the leases of a DIP
// that moved to another host may name different hosts until the old ones
// end. Errors match ErrUnknownVIP, ErrInvalidAddr (dip or host
// not unicast, dip of another family than vip), ErrInvalidSize,
// ErrInvalidTime (now out of range, ttl not in (0, MaxLeaseTTL]), ErrLimit
// (dip would hold more than MaxPortsPerDIP ports of vip) or ErrExhausted.
func (l *Leases) Allocate(vip, dip, host netip.Addr, size int, now time.Time, ttl time.Duration) (Lease, error) {
	vs, err := l.check(vip, dip, host)
	if err != nil {
		return Lease{}, err
	}
	if _, ok := sizeOrder(size); !ok {
		return Lease{}, errorf(ErrInvalidSize, "size %d is not a power of two from %d to %d", size, MinRangeSize, MaxRangeSize)
	}
	ns, exp, err := expiryOf(now, ttl)
	if err != nil {
		return Lease{}, err
	}
	if held := vs.held(dip); held+size > l.cfg.MaxPortsPerDIP {
		return Lease{}, errorf(ErrLimit, "vip %s dip %s holds %d ports; %d more exceed the limit of %d", vip, dip, held, size, l.cfg.MaxPortsPerDIP)
	}
	r, err := vs.space.Allocate(size)
	if err != nil {
		return Lease{}, errorf(ErrExhausted, "vip %s: %v", vip, err)
	}
	e := l.add(vs, r, dip, host, exp)
	vs.dips[dip].pred.record(&l.cfg.Predictor, ns, size)
	return e.lease(), nil
}

// AllocateDemand leases to dip a range sized by its recent demand (see
// Predictor; the demand is that of earlier Allocate and AllocateDemand
// calls for this (vip, dip) while it held leases): the recommendation,
// reduced to fit under the per-DIP limit, and halved down to MinRangeSize
// while no free range of that size is left. Errors are those of Allocate.
func (l *Leases) AllocateDemand(vip, dip, host netip.Addr, now time.Time, ttl time.Duration) (Lease, error) {
	vs, err := l.check(vip, dip, host)
	if err != nil {
		return Lease{}, err
	}
	ns, _, err := expiryOf(now, ttl)
	if err != nil {
		return Lease{}, err
	}
	var pred predState
	if ds := vs.dips[dip]; ds != nil {
		pred = ds.pred // a copy: a failed call must not change the state
	}
	size := pred.recommend(&l.cfg.Predictor, ns)
	room := l.cfg.MaxPortsPerDIP - vs.held(dip)
	if room < MinRangeSize {
		return Lease{}, errorf(ErrLimit, "vip %s dip %s holds %d ports, the limit is %d", vip, dip, vs.held(dip), l.cfg.MaxPortsPerDIP)
	}
	size = min(size, 1<<(bits.Len(uint(room))-1))
	for size > MinRangeSize && vs.space.Largest() < size {
		size /= 2
	}
	return l.Allocate(vip, dip, host, size, now, ttl)
}

// check validates the addresses of a lease request and returns the VIP.
func (l *Leases) check(vip, dip, host netip.Addr) (*vipState, error) {
	vs, err := l.vip(vip)
	if err != nil {
		return nil, err
	}
	if err := checkDIP(vip, dip); err != nil {
		return nil, err
	}
	if err := checkHost(host); err != nil {
		return nil, err
	}
	return vs, nil
}

func (vs *vipState) held(dip netip.Addr) int {
	if ds := vs.dips[dip]; ds != nil {
		return ds.held
	}
	return 0
}

// Preallocate gives each DIP of dips the VIP's preallocation size (its
// PortsPerDIP, else ananta.SNATPortsPerDIP of its PoolSize, else of
// len(dips)) in one range, leased until now + ttl. A DIP that already
// holds at least that many ports is skipped; one that holds fewer gets one
// more range of the smallest size that covers the shortfall. Ranges are
// allocated in the order of dips. It returns the new leases in that order.
// The call is all or nothing: on any error (those of Allocate, or
// ErrDuplicate for a DIP listed twice) nothing changes.
func (l *Leases) Preallocate(vip netip.Addr, dips []DIPHost, now time.Time, ttl time.Duration) ([]Lease, error) {
	vs, err := l.vip(vip)
	if err != nil {
		return nil, err
	}
	_, exp, err := expiryOf(now, ttl)
	if err != nil {
		return nil, err
	}
	seen := make(map[netip.Addr]struct{}, len(dips))
	for _, d := range dips {
		if err := checkDIP(vip, d.DIP); err != nil {
			return nil, err
		}
		if err := checkHost(d.Host); err != nil {
			return nil, err
		}
		if _, dup := seen[d.DIP]; dup {
			return nil, errorf(ErrDuplicate, "dip %s listed twice", d.DIP)
		}
		seen[d.DIP] = struct{}{}
	}
	target := vs.cfg.prealloc(len(dips))
	type grant struct {
		d DIPHost
		r ananta.PortRange
	}
	var grants []grant
	undo := func() {
		for _, g := range grants {
			_ = vs.space.Free(g.r)
		}
	}
	for _, d := range dips {
		held := vs.held(d.DIP)
		if held >= target {
			continue
		}
		size := max(MinRangeSize, 1<<bits.Len(uint(target-held-1)))
		if held+size > l.cfg.MaxPortsPerDIP {
			undo()
			return nil, errorf(ErrLimit, "vip %s dip %s holds %d ports; %d more exceed the limit of %d", vip, d.DIP, held, size, l.cfg.MaxPortsPerDIP)
		}
		r, err := vs.space.Allocate(size)
		if err != nil {
			undo()
			return nil, errorf(ErrExhausted, "vip %s: preallocating for dip %s: %v", vip, d.DIP, err)
		}
		grants = append(grants, grant{d, r})
	}
	out := make([]Lease, 0, len(grants))
	for _, g := range grants {
		out = append(out, l.add(vs, g.r, g.d.DIP, g.d.Host, exp).lease())
	}
	return out, nil
}

// holder finds the lease of exactly r in vip and checks that dip holds it.
func (l *Leases) holder(vip netip.Addr, r ananta.PortRange, dip netip.Addr, checkHolder bool) (*leaseEntry, error) {
	vs, err := l.vip(vip)
	if err != nil {
		return nil, err
	}
	e := vs.byFirst[r.First]
	if e == nil || e.r != r {
		return nil, errorf(ErrNotAllocated, "vip %s: range %s is not leased", vip, r)
	}
	if checkHolder && e.dip != dip {
		return nil, errorf(ErrNotHolder, "vip %s: range %s is leased to %s, not %s", vip, r, e.dip, dip)
	}
	return e, nil
}

// Renew extends the lease of r to now + ttl (which may also shorten it).
// Only the holder may renew. A lease past its expiry that Expire has not
// reclaimed yet can still be renewed. Errors match ErrUnknownVIP,
// ErrNotAllocated, ErrNotHolder or ErrInvalidTime.
func (l *Leases) Renew(vip netip.Addr, r ananta.PortRange, dip netip.Addr, now time.Time, ttl time.Duration) (Lease, error) {
	e, err := l.holder(vip, r, dip, true)
	if err != nil {
		return Lease{}, err
	}
	_, exp, err := expiryOf(now, ttl)
	if err != nil {
		return Lease{}, err
	}
	e.expiry = exp
	l.exp.fix(e.hidx)
	return e.lease(), nil
}

// RenewAll renews every lease dip holds from vip to now + ttl and returns
// them in ascending range order (none if dip holds nothing). Errors match
// ErrUnknownVIP or ErrInvalidTime.
func (l *Leases) RenewAll(vip, dip netip.Addr, now time.Time, ttl time.Duration) ([]Lease, error) {
	vs, err := l.vip(vip)
	if err != nil {
		return nil, err
	}
	_, exp, err := expiryOf(now, ttl)
	if err != nil {
		return nil, err
	}
	ds := vs.dips[dip]
	if ds == nil {
		return nil, nil
	}
	out := make([]Lease, 0, len(ds.firsts))
	for _, f := range ds.firsts {
		e := vs.byFirst[f]
		e.expiry = exp
		l.exp.fix(e.hidx)
		out = append(out, e.lease())
	}
	return out, nil
}

// Release ends the lease of r early; only the holder may release it. It
// returns the released lease. Errors match ErrUnknownVIP, ErrNotAllocated
// or ErrNotHolder.
func (l *Leases) Release(vip netip.Addr, r ananta.PortRange, dip netip.Addr) (Lease, error) {
	e, err := l.holder(vip, r, dip, true)
	if err != nil {
		return Lease{}, err
	}
	out := e.lease()
	l.drop(e)
	return out, nil
}

// ForceRelease ends the lease of r whoever holds it (an operator action,
// or a DIP that was deleted). Errors match ErrUnknownVIP or
// ErrNotAllocated.
func (l *Leases) ForceRelease(vip netip.Addr, r ananta.PortRange) (Lease, error) {
	e, err := l.holder(vip, r, netip.Addr{}, false)
	if err != nil {
		return Lease{}, err
	}
	out := e.lease()
	l.drop(e)
	return out, nil
}

// ReleaseDIP ends every lease dip holds from vip (the DIP was removed) and
// returns them in ascending range order. It returns an error matching
// ErrUnknownVIP if vip is not configured.
func (l *Leases) ReleaseDIP(vip, dip netip.Addr) ([]Lease, error) {
	vs, err := l.vip(vip)
	if err != nil {
		return nil, err
	}
	ds := vs.dips[dip]
	if ds == nil {
		return nil, nil
	}
	firsts := slices.Clone(ds.firsts)
	out := make([]Lease, 0, len(firsts))
	for _, f := range firsts {
		e := vs.byFirst[f]
		out = append(out, e.lease())
		l.drop(e)
	}
	return out, nil
}

// Expire reclaims every lease whose expiry is at or before now and returns
// them ordered by expiry, then VIP, then range. Times out of range are
// clamped.
func (l *Leases) Expire(now time.Time) []Lease {
	t := clampNanos(now)
	var out []Lease
	for len(l.exp) > 0 && l.exp[0].expiry <= t {
		e := l.exp[0]
		out = append(out, e.lease())
		l.drop(e)
	}
	return out
}

// NextExpiry returns the earliest expiry of all leases; false when there
// are none.
func (l *Leases) NextExpiry() (time.Time, bool) {
	if len(l.exp) == 0 {
		return time.Time{}, false
	}
	return timeOf(l.exp[0].expiry), true
}

// Len returns the number of leases over all VIPs.
func (l *Leases) Len() int { return l.n }

// VIPLeases returns vip's leases in ascending range order (none for an
// unknown VIP).
func (l *Leases) VIPLeases(vip netip.Addr) []Lease {
	vs := l.vips[vip]
	if vs == nil {
		return nil
	}
	out := make([]Lease, 0, len(vs.byFirst))
	for _, e := range vs.byFirst {
		out = append(out, e.lease())
	}
	slices.SortFunc(out, func(a, b Lease) int { return int(a.Range.First) - int(b.Range.First) })
	return out
}

// DIPLeases returns the leases dip holds from vip in ascending range order.
func (l *Leases) DIPLeases(vip, dip netip.Addr) []Lease {
	vs := l.vips[vip]
	if vs == nil {
		return nil
	}
	ds := vs.dips[dip]
	if ds == nil {
		return nil
	}
	out := make([]Lease, 0, len(ds.firsts))
	for _, f := range ds.firsts {
		out = append(out, vs.byFirst[f].lease())
	}
	return out
}

// PortsHeld returns the number of vip's ports dip holds.
func (l *Leases) PortsHeld(vip, dip netip.Addr) int {
	if vs := l.vips[vip]; vs != nil {
		return vs.held(dip)
	}
	return 0
}

// DIPs returns, for each DIP holding ports of vip, how many ports and
// leases it holds, in ascending DIP order.
func (l *Leases) DIPs(vip netip.Addr) []DIPPorts {
	vs := l.vips[vip]
	if vs == nil {
		return nil
	}
	out := make([]DIPPorts, 0, len(vs.dips))
	for a, ds := range vs.dips {
		out = append(out, DIPPorts{DIP: a, Ports: ds.held, Leases: len(ds.firsts)})
	}
	slices.SortFunc(out, func(a, b DIPPorts) int { return a.DIP.Compare(b.DIP) })
	return out
}

// Owner returns the lease that holds vip:port: the Mux's SNAT return map,
// which sends return traffic for the port to the lease's Host and DIP.
func (l *Leases) Owner(vip netip.Addr, port uint16) (Lease, bool) {
	vs := l.vips[vip]
	if vs == nil {
		return Lease{}, false
	}
	r, ok := vs.space.Lookup(port)
	if !ok {
		return Lease{}, false
	}
	return vs.byFirst[r.First].lease(), true
}

// Available returns the number of vip's free ports (0 for an unknown VIP).
func (l *Leases) Available(vip netip.Addr) int {
	if vs := l.vips[vip]; vs != nil {
		return vs.space.Available()
	}
	return 0
}

// expiryHeap is a binary min-heap of leases ordered by (expiry, VIP,
// First): a total order, so the heap pops in the same order on every
// replica whatever its internal layout.
type expiryHeap []*leaseEntry

func (h expiryHeap) less(i, j int) bool {
	a, b := h[i], h[j]
	if a.expiry != b.expiry {
		return a.expiry < b.expiry
	}
	if c := a.vip.addr.Compare(b.vip.addr); c != 0 {
		return c < 0
	}
	return a.r.First < b.r.First
}

func (h expiryHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}

func (h expiryHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h.swap(i, p)
		i = p
	}
}

func (h expiryHeap) down(i int) bool {
	i0 := i
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if r := c + 1; r < len(h) && h.less(r, c) {
			c = r
		}
		if !h.less(c, i) {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > i0
}

func (h *expiryHeap) push(e *leaseEntry) {
	e.hidx = len(*h)
	*h = append(*h, e)
	h.up(e.hidx)
}

func (h *expiryHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h *expiryHeap) remove(e *leaseEntry) {
	i := e.hidx
	if i < 0 {
		return
	}
	n := len(*h) - 1
	if i != n {
		h.swap(i, n)
	}
	(*h)[n] = nil
	*h = (*h)[:n]
	if i != n {
		h.fix(i)
	}
	e.hidx = -1
}
