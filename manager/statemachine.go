package manager

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/snat"
)

// SchemaVersion is the version of the state machine's snapshot format,
// written in every snapshot's header. Restore refuses other versions.
const SchemaVersion = 1

// snapshotMagic is the 8-byte snapshot header: 7 bytes of magic and the
// schema version.
var snapshotMagic = [8]byte{'A', 'N', 'A', 'N', 'T', 'A', 'M', SchemaVersion}

// Limits on agent-supplied identifiers.
const (
	maxIDLen      = 128 // agent IDs, idempotency keys
	maxAddressLen = 256 // agent addresses (informational)
)

// smConfig configures a shard's state machine. Everything in limits
// decides the results of Apply, so every replica must use the same values;
// the snapshot carries them and Restore refuses a snapshot taken with
// others.
type smConfig struct {
	shard    uint64
	limits   *api.Limits
	logSize  int                // changes retained for Watch (replica-local)
	onChange func(shard uint64) // called after every Apply that changed the state; must not block
}

// vipEntry is one configured VIP.
type vipEntry struct {
	cfg     ananta.VIPConfig
	pb      *api.VIPConfig // canonical API form; never modified
	version uint64         // rev of the last configuration change
}

type healthKey struct {
	vip     netip.Addr
	backend netip.AddrPort
}

// healthRec records a backend reported down. Healthy backends have none.
type healthRec struct {
	agent string
	at    int64
}

type agentRec struct {
	kind      api.AgentKind
	address   string
	applied   uint64
	lastSeen  int64
	connected bool
	session   string // the Watch stream that connected it last
}

type trafficKey struct {
	vip   netip.Addr
	agent string
}

type trafficRec struct {
	packets, bytes, drops uint64
	interval, at          int64
}

// dedupEntry remembers the result of a command (by ID) or of a keyed VIP
// change (by idempotency key, with a fingerprint of the request).
type dedupEntry struct {
	key     string
	fp      []byte
	expires int64
	result  []byte
}

// dedupCache is a FIFO of remembered results. Entries are added in apply
// order with expiry now + window, and now never decreases, so the oldest
// entry always expires first.
type dedupCache struct {
	order []*dedupEntry
	byKey map[string]*dedupEntry
}

func newDedup() dedupCache { return dedupCache{byKey: make(map[string]*dedupEntry)} }

func (d *dedupCache) get(key string, now int64) *dedupEntry {
	e := d.byKey[key]
	if e == nil || e.expires <= now {
		return nil
	}
	return e
}

func (d *dedupCache) add(e *dedupEntry) {
	if old := d.byKey[e.key]; old != nil { // an expired entry not evicted yet
		i := slices.Index(d.order, old)
		d.order = slices.Delete(d.order, i, i+1)
	}
	d.order = append(d.order, e)
	d.byKey[e.key] = e
}

func (d *dedupCache) evict(now int64, max int) {
	n := 0
	for n < len(d.order) && (d.order[n].expires <= now || len(d.order)-n > max) {
		delete(d.byKey, d.order[n].key)
		n++
	}
	if n > 0 {
		d.order = slices.Delete(d.order, 0, n)
	}
}

// changeLog retains the latest changes of the shard for Watch streams.
// entries[i] has version base+i+1. It is replica-local: not part of the
// snapshot, empty after Restore.
type changeLog struct {
	base    uint64
	entries []*api.Change
	size    int
}

func (l *changeLog) add(c *api.Change) {
	l.entries = append(l.entries, c)
	if len(l.entries) > 2*l.size {
		drop := len(l.entries) - l.size
		l.entries = slices.Clone(l.entries[drop:])
		l.base += uint64(drop)
	}
}

// stateMachine is the replicated state of one shard: its VIPs, their SNAT
// leases, backend health, the agents' applied versions, traffic reports,
// and the dedup caches that make retries safe. It implements
// consensus.StateMachine.
//
// Every Apply is deterministic: its inputs are the state and the command,
// which carries the proposer's time. A command that fails returns a Result
// with a non-OK code and leaves the state untouched; only bytes that do
// not decode as a Command are rejected with an error.
type stateMachine struct {
	cfg smConfig

	// mu guards everything below. Apply and Restore hold it for writing;
	// Query, Save and the Manager's local readers (Watch streams, waits
	// for agents) hold it for reading.
	mu      sync.RWMutex
	rev     uint64 // version of the last change visible to agents
	clock   int64  // latest command time applied, Unix ns
	vips    map[netip.Addr]*vipEntry
	leases  *snat.Leases
	health  map[healthKey]healthRec
	agents  map[string]*agentRec
	dedup   dedupCache // by command ID
	keys    dedupCache // by idempotency key
	traffic map[trafficKey]*trafficRec
	log     changeLog
}

var _ consensus.StateMachine = (*stateMachine)(nil)

func newStateMachine(cfg smConfig) (*stateMachine, error) {
	sm := &stateMachine{cfg: cfg}
	if err := sm.reset(); err != nil {
		return nil, err
	}
	return sm, nil
}

func (sm *stateMachine) leasesConfig() snat.LeasesConfig {
	return snat.LeasesConfig{MaxPortsPerDIP: int(sm.cfg.limits.GetMaxPortsPerDip())}
}

// reset empties the state.
func (sm *stateMachine) reset() error {
	l, err := snat.NewLeases(sm.leasesConfig())
	if err != nil {
		return err
	}
	sm.rev, sm.clock = 0, 0
	sm.vips = make(map[netip.Addr]*vipEntry)
	sm.leases = l
	sm.health = make(map[healthKey]healthRec)
	sm.agents = make(map[string]*agentRec)
	sm.dedup, sm.keys = newDedup(), newDedup()
	sm.traffic = make(map[trafficKey]*trafficRec)
	sm.log = changeLog{size: max(sm.cfg.logSize, 1)}
	return nil
}

// ErrBadCommand: Apply was given bytes that are not a valid command.
var ErrBadCommand = errors.New("manager: bad command")

// Apply implements consensus.StateMachine.
func (sm *stateMachine) Apply(cmd []byte) ([]byte, error) {
	var c api.Command
	if err := proto.Unmarshal(cmd, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if c.Op == nil {
		return nil, fmt.Errorf("%w: no operation", ErrBadCommand)
	}
	if c.Now <= 0 {
		return nil, fmt.Errorf("%w: time %d out of range", ErrBadCommand, c.Now)
	}
	sm.mu.Lock()
	out, changed := sm.apply(&c)
	sm.mu.Unlock()
	if changed && sm.cfg.onChange != nil {
		sm.cfg.onChange(sm.cfg.shard)
	}
	return out, nil
}

func result(code codes.Code, format string, args ...any) *api.Result {
	return &api.Result{Code: uint32(code), Message: fmt.Sprintf(format, args...)}
}

func marshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("manager: marshal: " + err.Error()) // unreachable for our messages
	}
	return b
}

// apply runs one command under mu and returns the encoded result and
// whether the state changed.
func (sm *stateMachine) apply(c *api.Command) ([]byte, bool) {
	now := max(c.Now, sm.clock)
	id := string(c.Id)
	if id != "" {
		if e := sm.dedup.get(id, now); e != nil {
			return slices.Clone(e.result), false
		}
	}
	var res *api.Result
	var changed bool
	switch op := c.Op.(type) {
	case *api.Command_PutVip:
		res, changed = sm.putVIP(now, op.PutVip)
	case *api.Command_DeleteVip:
		res, changed = sm.deleteVIP(now, op.DeleteVip)
	case *api.Command_Allocate:
		res, changed = sm.allocate(now, op.Allocate)
	case *api.Command_Release:
		res, changed = sm.release(now, op.Release)
	case *api.Command_Renew:
		res, changed = sm.renew(now, op.Renew)
	case *api.Command_Expire:
		res, changed = sm.expire(now)
	case *api.Command_Agents:
		res, changed = sm.agentsUpdate(now, op.Agents)
	case *api.Command_Health:
		res, changed = sm.healthUpdate(now, op.Health)
	case *api.Command_Traffic:
		res, changed = sm.trafficUpdate(now, op.Traffic)
	default:
		res = result(codes.InvalidArgument, "unknown operation")
	}
	out := marshal(res)
	if !changed {
		return out, false
	}
	sm.clock = now
	lim := sm.cfg.limits
	if id != "" {
		sm.dedup.add(&dedupEntry{key: id, expires: now + lim.GetDedupWindow(), result: out})
	}
	sm.dedup.evict(now, int(lim.GetDedupEntries()))
	sm.keys.evict(now, int(lim.GetDedupEntries()))
	return out, true
}

// change appends a change with the next version and returns the version.
func (sm *stateMachine) change(c *api.Change) uint64 {
	sm.rev++
	c.Version = sm.rev
	sm.log.add(c)
	return sm.rev
}

// checkKey looks an idempotency key up. It returns the remembered result
// when the key was used for the same request, a failure when it was used
// for another one, and nil when the key is new (or empty).
func (sm *stateMachine) checkKey(key string, fp []byte, now int64) *api.Result {
	if key == "" {
		return nil
	}
	e := sm.keys.get(key, now)
	if e == nil {
		return nil
	}
	if !bytes.Equal(e.fp, fp) {
		return result(codes.InvalidArgument, "idempotency_key: %s was used for a different request", quote(key))
	}
	var r api.Result
	if err := proto.Unmarshal(e.result, &r); err != nil {
		panic("manager: corrupt idempotency record: " + err.Error())
	}
	return &r
}

func (sm *stateMachine) rememberKey(key string, fp []byte, now int64, r *api.Result) {
	if key == "" {
		return
	}
	sm.keys.add(&dedupEntry{key: key, fp: fp, expires: now + sm.cfg.limits.GetDedupWindow(), result: marshal(r)})
}

func fingerprint(m proto.Message) []byte {
	h := sha256.Sum256(marshal(m))
	return h[:]
}

func checkKeyFormat(key string) *api.Result {
	if len(key) > maxIDLen || !utf8.ValidString(key) {
		return result(codes.InvalidArgument, "idempotency_key: must be valid UTF-8 of at most %d bytes", maxIDLen)
	}
	return nil
}

// snatCodeOf maps a snat error to a gRPC code.
func snatCodeOf(err error) codes.Code {
	switch {
	case errors.Is(err, snat.ErrExhausted), errors.Is(err, snat.ErrLimit):
		return codes.ResourceExhausted
	case errors.Is(err, snat.ErrUnknownVIP), errors.Is(err, snat.ErrNotAllocated):
		return codes.NotFound
	case errors.Is(err, snat.ErrNotHolder), errors.Is(err, snat.ErrReserved):
		return codes.FailedPrecondition
	}
	return codes.InvalidArgument
}

// snatDIPs returns the distinct DIPs of a configuration with their hosts,
// in configuration order.
func snatDIPs(c *ananta.VIPConfig) []snat.DIPHost {
	var out []snat.DIPHost
	seen := make(map[netip.Addr]bool)
	for _, e := range c.Endpoints {
		for _, b := range e.Backends {
			if !seen[b.DIP] {
				seen[b.DIP] = true
				out = append(out, snat.DIPHost{DIP: b.DIP, Host: b.Host})
			}
		}
	}
	return out
}

func (sm *stateMachine) putVIP(now int64, c *api.PutVIPCommand) (*api.Result, bool) {
	if r := checkKeyFormat(c.IdempotencyKey); r != nil {
		return r, false
	}
	fp := fingerprint(c)
	if r := sm.checkKey(c.IdempotencyKey, fp, now); r != nil {
		return r, false
	}
	cfg, err := VIPConfigFromProto(c.Config)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		return result(codes.InvalidArgument, "%v", err), false
	}
	old := sm.vips[cfg.VIP]
	switch {
	case c.Create && old != nil:
		return result(codes.AlreadyExists, "vip: %s already exists (version %d)", cfg.VIP, old.version), false
	case !c.Create && old == nil:
		return result(codes.NotFound, "vip: %s does not exist", cfg.VIP), false
	case !c.Create && c.ExpectedVersion != 0 && c.ExpectedVersion != old.version:
		return result(codes.Aborted, "expected_version: %d does not match the current version %d of %s", c.ExpectedVersion, old.version, cfg.VIP), false
	}
	ttl := time.Duration(c.Ttl)
	// SNAT: configure the VIP's port space and preallocate, all or nothing.
	var prealloc []snat.Lease
	var released []snat.Lease
	hadSNAT := old != nil && old.cfg.SNAT.Enabled
	if cfg.SNAT.Enabled {
		var oldSNAT snat.VIPConfig
		if hadSNAT {
			oldSNAT, _ = sm.leases.VIPConfig(cfg.VIP)
		}
		if err := sm.leases.ConfigureVIP(cfg.VIP, snat.VIPConfigOf(&cfg)); err != nil {
			return result(snatCodeOf(err), "snat: %v", err), false
		}
		prealloc, err = sm.leases.Preallocate(cfg.VIP, snatDIPs(&cfg), time.Unix(0, now), ttl)
		if err != nil {
			if hadSNAT {
				if rerr := sm.leases.ConfigureVIP(cfg.VIP, oldSNAT); rerr != nil {
					panic("manager: cannot roll back SNAT configuration: " + rerr.Error())
				}
			} else if _, rerr := sm.leases.RemoveVIP(cfg.VIP); rerr != nil {
				panic("manager: cannot roll back SNAT configuration: " + rerr.Error())
			}
			return result(snatCodeOf(err), "snat: preallocation: %v", err), false
		}
	} else if hadSNAT {
		released, _ = sm.leases.RemoveVIP(cfg.VIP)
	}
	e := &vipEntry{cfg: cfg, pb: VIPConfigToProto(&cfg)}
	sm.vips[cfg.VIP] = e
	// Health of backends that left the configuration is forgotten.
	keep := backendKeys(&cfg)
	for k := range sm.health {
		if k.vip == cfg.VIP && !keep[k.backend] {
			delete(sm.health, k)
		}
	}
	for _, l := range released {
		sm.change(&api.Change{Change: &api.Change_SnatRemoved{SnatRemoved: snatRangeOf(l)}})
	}
	e.version = sm.change(&api.Change{Change: &api.Change_VipSet{VipSet: sm.effectiveVIP(e)}})
	for _, l := range prealloc {
		sm.change(&api.Change{Change: &api.Change_SnatAdded{SnatAdded: snatRangeOf(l)}})
	}
	r := &api.Result{Code: uint32(codes.OK), Vip: sm.vipMessage(e), Version: sm.rev}
	sm.rememberKey(c.IdempotencyKey, fp, now, r)
	return r, true
}

func backendKeys(c *ananta.VIPConfig) map[netip.AddrPort]bool {
	out := make(map[netip.AddrPort]bool)
	for _, e := range c.Endpoints {
		for _, b := range e.Backends {
			out[b.Key()] = true
		}
	}
	return out
}

func (sm *stateMachine) vipMessage(e *vipEntry) *api.VIP {
	return &api.VIP{Config: e.pb, Version: e.version, Shard: sm.cfg.shard}
}

// effectiveVIP returns the VIP as agents see it: backends reported down by
// health checks are down unless configured draining or down.
func (sm *stateMachine) effectiveVIP(e *vipEntry) *api.VIP {
	pb := e.pb
	cloned := false
	for i, ep := range e.cfg.Endpoints {
		for j, b := range ep.Backends {
			if b.State != ananta.BackendActive {
				continue
			}
			if _, down := sm.health[healthKey{e.cfg.VIP, b.Key()}]; !down {
				continue
			}
			if !cloned {
				pb = proto.Clone(pb).(*api.VIPConfig)
				cloned = true
			}
			pb.Endpoints[i].Backends[j].State = api.BackendState_BACKEND_STATE_DOWN
		}
	}
	return &api.VIP{Config: pb, Version: e.version, Shard: sm.cfg.shard}
}

func (sm *stateMachine) deleteVIP(now int64, c *api.DeleteVIPCommand) (*api.Result, bool) {
	if r := checkKeyFormat(c.IdempotencyKey); r != nil {
		return r, false
	}
	fp := fingerprint(c)
	if r := sm.checkKey(c.IdempotencyKey, fp, now); r != nil {
		return r, false
	}
	vip, err := parseAddr("vip", c.Vip)
	if err != nil {
		return result(codes.InvalidArgument, "%v", err), false
	}
	e := sm.vips[vip]
	if e == nil {
		return result(codes.NotFound, "vip: %s does not exist", vip), false
	}
	if c.ExpectedVersion != 0 && c.ExpectedVersion != e.version {
		return result(codes.Aborted, "expected_version: %d does not match the current version %d of %s", c.ExpectedVersion, e.version, vip), false
	}
	if e.cfg.SNAT.Enabled {
		if _, err := sm.leases.RemoveVIP(vip); err != nil {
			panic("manager: SNAT VIP without port space: " + err.Error())
		}
	}
	delete(sm.vips, vip)
	for k := range sm.health {
		if k.vip == vip {
			delete(sm.health, k)
		}
	}
	for k := range sm.traffic {
		if k.vip == vip {
			delete(sm.traffic, k)
		}
	}
	v := sm.change(&api.Change{Change: &api.Change_VipDeleted{VipDeleted: vip.String()}})
	r := &api.Result{Code: uint32(codes.OK), Vip: &api.VIP{Config: e.pb, Version: v, Shard: sm.cfg.shard}, Version: v}
	sm.rememberKey(c.IdempotencyKey, fp, now, r)
	return r, true
}

// snatVIP checks that vip is configured with SNAT.
func (sm *stateMachine) snatVIP(vip netip.Addr) (*vipEntry, *api.Result) {
	if !vip.IsValid() {
		return nil, result(codes.InvalidArgument, "vip: must be a valid IP address")
	}
	e := sm.vips[vip]
	if e == nil {
		return nil, result(codes.NotFound, "vip: %s does not exist", vip)
	}
	if !e.cfg.SNAT.Enabled {
		return nil, result(codes.FailedPrecondition, "vip: %s does not have SNAT enabled", vip)
	}
	return e, nil
}

func (sm *stateMachine) allocate(now int64, c *api.AllocateCommand) (*api.Result, bool) {
	res := &api.Result{Code: uint32(codes.OK), Items: make([]*api.AllocateResult, len(c.Items))}
	ttl := time.Duration(c.Ttl)
	t := time.Unix(0, now)
	changed := false
	for i, it := range c.Items {
		vip, dip, host := addrFromBytes(it.Vip), addrFromBytes(it.Dip), addrFromBytes(it.Host)
		_, fail := sm.snatVIP(vip)
		if fail != nil {
			res.Items[i] = &api.AllocateResult{Code: fail.Code, Message: fail.Message}
			continue
		}
		var l snat.Lease
		var err error
		if it.Size == 0 {
			l, err = sm.leases.AllocateDemand(vip, dip, host, t, ttl)
		} else {
			l, err = sm.leases.Allocate(vip, dip, host, int(it.Size), t, ttl)
		}
		if err != nil {
			res.Items[i] = &api.AllocateResult{Code: uint32(snatCodeOf(err)), Message: err.Error()}
			continue
		}
		changed = true
		sm.change(&api.Change{Change: &api.Change_SnatAdded{SnatAdded: snatRangeOf(l)}})
		res.Items[i] = &api.AllocateResult{First: uint32(l.Range.First), Last: uint32(l.Range.Last), Expiry: l.Expiry.UnixNano()}
	}
	res.Version = sm.rev
	return res, changed
}

func (sm *stateMachine) release(now int64, c *api.ReleaseCommand) (*api.Result, bool) {
	vip, dip := addrFromBytes(c.Vip), addrFromBytes(c.Dip)
	if _, fail := sm.snatVIP(vip); fail != nil {
		return fail, false
	}
	if !c.Force && !dip.IsValid() {
		return result(codes.InvalidArgument, "dip: must be a valid IP address"), false
	}
	var leases []snat.Lease
	if len(c.Ranges) == 0 {
		if !dip.IsValid() {
			return result(codes.InvalidArgument, "ranges: must not be empty without a dip"), false
		}
		leases, _ = sm.leases.ReleaseDIP(vip, dip)
	} else {
		// Check every range first: all or nothing.
		seen := make(map[uint16]bool, len(c.Ranges))
		for i, pr := range c.Ranges {
			f := "ranges[" + strconv.Itoa(i) + "]"
			r, err := portRangeFrom(f, pr)
			if err != nil {
				return result(codes.InvalidArgument, "%v", err), false
			}
			if seen[r.First] {
				return result(codes.InvalidArgument, "%s: %s listed twice", f, r), false
			}
			seen[r.First] = true
			l, ok := sm.leases.Owner(vip, r.First)
			if !ok || l.Range != r {
				return result(codes.NotFound, "%s: %s of %s is not leased", f, r, vip), false
			}
			if !c.Force && l.DIP != dip {
				return result(codes.FailedPrecondition, "%s: %s of %s is leased to %s, not %s", f, r, vip, l.DIP, dip), false
			}
		}
		for _, pr := range c.Ranges {
			l, err := sm.leases.ForceRelease(vip, ananta.PortRange{First: uint16(pr.First), Last: uint16(pr.Last)})
			if err != nil {
				panic("manager: release after check failed: " + err.Error())
			}
			leases = append(leases, l)
		}
	}
	res := &api.Result{Code: uint32(codes.OK)}
	for _, l := range leases {
		sm.change(&api.Change{Change: &api.Change_SnatRemoved{SnatRemoved: snatRangeOf(l)}})
		res.Leases = append(res.Leases, leaseToProto(l))
	}
	res.Version = sm.rev
	return res, len(leases) > 0
}

func (sm *stateMachine) renew(now int64, c *api.RenewCommand) (*api.Result, bool) {
	vip, dip := addrFromBytes(c.Vip), addrFromBytes(c.Dip)
	if _, fail := sm.snatVIP(vip); fail != nil {
		return fail, false
	}
	if !dip.IsValid() {
		return result(codes.InvalidArgument, "dip: must be a valid IP address"), false
	}
	leases, err := sm.leases.RenewAll(vip, dip, time.Unix(0, now), time.Duration(c.Ttl))
	if err != nil {
		return result(snatCodeOf(err), "%v", err), false
	}
	res := &api.Result{Code: uint32(codes.OK), Version: sm.rev}
	for _, l := range leases {
		res.Leases = append(res.Leases, leaseToProto(l))
	}
	return res, len(leases) > 0
}

func (sm *stateMachine) expire(now int64) (*api.Result, bool) {
	changed := false
	for _, l := range sm.leases.Expire(time.Unix(0, now)) {
		sm.change(&api.Change{Change: &api.Change_SnatRemoved{SnatRemoved: snatRangeOf(l)}})
		changed = true
	}
	lim := sm.cfg.limits
	for id, a := range sm.agents {
		if a.lastSeen+lim.GetAgentForget() <= now {
			delete(sm.agents, id)
			changed = true
		}
	}
	for k, t := range sm.traffic {
		if t.at+lim.GetTrafficTtl() <= now {
			delete(sm.traffic, k)
			changed = true
		}
	}
	if e := sm.dedup; len(e.order) > 0 && e.order[0].expires <= now {
		changed = true // apply evicts
	}
	if e := sm.keys; len(e.order) > 0 && e.order[0].expires <= now {
		changed = true
	}
	return &api.Result{Code: uint32(codes.OK), Version: sm.rev}, changed
}

// needsExpire reports whether an Expire command at now would change
// anything; the Manager proposes one only then.
func (sm *stateMachine) needsExpire(now int64) bool {
	sm.mu.RLock()
	defer sm.mu.RUnlock()
	if t, ok := sm.leases.NextExpiry(); ok && t.UnixNano() <= now {
		return true
	}
	lim := sm.cfg.limits
	for _, a := range sm.agents {
		if a.lastSeen+lim.GetAgentForget() <= now {
			return true
		}
	}
	for _, t := range sm.traffic {
		if t.at+lim.GetTrafficTtl() <= now {
			return true
		}
	}
	for _, d := range []*dedupCache{&sm.dedup, &sm.keys} {
		if len(d.order) > 0 && d.order[0].expires <= now {
			return true
		}
	}
	return false
}

func validID(s string) bool {
	if s == "" || len(s) > maxIDLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

func (sm *stateMachine) agentsUpdate(now int64, c *api.AgentsCommand) (*api.Result, bool) {
	for i, u := range c.Updates {
		if !validID(u.Id) {
			return result(codes.InvalidArgument, "updates[%d].id: must be 1 to %d printable bytes", i, maxIDLen), false
		}
		if u.Kind != api.AgentKind_AGENT_KIND_MUX && u.Kind != api.AgentKind_AGENT_KIND_HOST_AGENT {
			return result(codes.InvalidArgument, "updates[%d].kind: must be mux or host agent", i), false
		}
		if len(u.Address) > maxAddressLen || !utf8.ValidString(u.Address) {
			return result(codes.InvalidArgument, "updates[%d].address: must be UTF-8 of at most %d bytes", i, maxAddressLen), false
		}
	}
	if len(c.Updates) == 0 {
		return result(codes.InvalidArgument, "updates: must not be empty"), false
	}
	changed := false
	for _, u := range c.Updates {
		a := sm.agents[u.Id]
		switch {
		case u.AppliedOnly || u.Connected:
			if a == nil {
				a = &agentRec{connected: true}
				sm.agents[u.Id] = a
			}
			a.kind, a.address, a.applied, a.lastSeen = u.Kind, u.Address, u.Applied, now
			if !u.AppliedOnly {
				a.connected, a.session = true, u.Session
			}
			changed = true
		case a != nil && a.session == u.Session && a.connected:
			// The end of the agent's current Watch stream.
			a.connected, a.lastSeen = false, now
			changed = true
		}
	}
	return &api.Result{Code: uint32(codes.OK), Version: sm.rev}, changed
}

func (sm *stateMachine) healthUpdate(now int64, c *api.HealthCommand) (*api.Result, bool) {
	if !validID(c.AgentId) {
		return result(codes.InvalidArgument, "agent_id: must be 1 to %d printable bytes", maxIDLen), false
	}
	ignored := 0
	type upd struct {
		k       healthKey
		healthy bool
	}
	var ups []upd
	keys := make(map[netip.Addr]map[netip.AddrPort]bool) // backends per VIP, computed once
	for _, h := range c.Reports {
		vip, err1 := netip.ParseAddr(h.Vip)
		dip, err2 := netip.ParseAddr(h.Dip)
		e := sm.vips[vip]
		if err1 != nil || err2 != nil || h.Port > 65535 || e == nil {
			ignored++
			continue
		}
		k := healthKey{vip, netip.AddrPortFrom(dip, uint16(h.Port))}
		bk := keys[vip]
		if bk == nil {
			bk = backendKeys(&e.cfg)
			keys[vip] = bk
		}
		if !bk[k.backend] {
			ignored++
			continue
		}
		ups = append(ups, upd{k, h.Healthy})
	}
	res := &api.Result{Code: uint32(codes.OK), Ignored: uint32(ignored)}
	if len(ups) == 0 && ignored > 0 {
		res.Code, res.Message = uint32(codes.NotFound), "every report names an unknown VIP or backend"
		return res, false
	}
	changed := false
	for _, u := range ups {
		_, down := sm.health[u.k]
		if down != u.healthy { // no change
			continue
		}
		if u.healthy {
			delete(sm.health, u.k)
		} else {
			sm.health[u.k] = healthRec{agent: c.AgentId, at: now}
		}
		changed = true
		// Relay the backend's effective state, unless its configured
		// state (draining, down) overrides health anyway.
		if sm.activeBackend(u.k) {
			st := api.BackendState_BACKEND_STATE_ACTIVE
			if !u.healthy {
				st = api.BackendState_BACKEND_STATE_DOWN
			}
			sm.change(&api.Change{Change: &api.Change_BackendState{BackendState: &api.BackendStateChange{
				Vip: u.k.vip.String(), Dip: u.k.backend.Addr().String(), Port: uint32(u.k.backend.Port()), State: st,
			}}})
		}
	}
	res.Version = sm.rev
	return res, changed
}

// activeBackend reports whether a backend with key k is configured active
// in some endpoint of its VIP.
func (sm *stateMachine) activeBackend(k healthKey) bool {
	for _, ep := range sm.vips[k.vip].cfg.Endpoints {
		for _, b := range ep.Backends {
			if b.Key() == k.backend && b.State == ananta.BackendActive {
				return true
			}
		}
	}
	return false
}

func (sm *stateMachine) trafficUpdate(now int64, c *api.TrafficCommand) (*api.Result, bool) {
	if !validID(c.AgentId) {
		return result(codes.InvalidArgument, "agent_id: must be 1 to %d printable bytes", maxIDLen), false
	}
	if c.Interval <= 0 {
		return result(codes.InvalidArgument, "interval: must be > 0"), false
	}
	ignored := 0
	changed := false
	for _, t := range c.Entries {
		vip, err := netip.ParseAddr(t.Vip)
		if err != nil || sm.vips[vip] == nil {
			ignored++
			continue
		}
		sm.traffic[trafficKey{vip, c.AgentId}] = &trafficRec{packets: t.Packets, bytes: t.Bytes, drops: t.Drops, interval: c.Interval, at: now}
		changed = true
	}
	res := &api.Result{Code: uint32(codes.OK), Ignored: uint32(ignored)}
	if !changed && ignored > 0 {
		res.Code, res.Message = uint32(codes.NotFound), "every entry names an unknown VIP"
	}
	return res, changed
}

// Query implements consensus.StateMachine. Errors are gRPC status errors.
func (sm *stateMachine) Query(q []byte) ([]byte, error) {
	var query api.Query
	if err := proto.Unmarshal(q, &query); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad query: %v", err)
	}
	sm.mu.RLock()
	defer sm.mu.RUnlock()
	var out proto.Message
	var err error
	switch x := query.Q.(type) {
	case *api.Query_GetVip:
		out, err = sm.queryGetVIP(x.GetVip)
	case *api.Query_ListVips:
		out, err = sm.queryListVIPs(x.ListVips)
	case *api.Query_ListLeases:
		out, err = sm.queryListLeases(x.ListLeases)
	case *api.Query_ListAgents:
		out = sm.queryListAgents(x.ListAgents)
	case *api.Query_Traffic:
		out = sm.queryTraffic()
	default:
		err = status.Error(codes.InvalidArgument, "unknown query")
	}
	if err != nil {
		return nil, err
	}
	return marshal(out), nil
}

func (sm *stateMachine) queryGetVIP(q *api.GetVIPRequest) (*api.VIP, error) {
	vip, err := parseAddr("vip", q.Vip)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	e := sm.vips[vip]
	if e == nil {
		return nil, status.Errorf(codes.NotFound, "vip: %s does not exist", vip)
	}
	return sm.vipMessage(e), nil
}

// queryListVIPs returns the shard's VIPs after page_token (an address) in
// ascending order, at most page_size, filtered by tenant.
func (sm *stateMachine) queryListVIPs(q *api.ListVIPsRequest) (*api.ListVIPsResponse, error) {
	var after netip.Addr
	if q.PageToken != "" {
		a, err := netip.ParseAddr(q.PageToken)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "page_token: not a token of ListVIPs")
		}
		after = a
	}
	addrs := make([]netip.Addr, 0, len(sm.vips))
	for a, e := range sm.vips {
		if (!after.IsValid() || a.Compare(after) > 0) && (q.Tenant == "" || e.cfg.Tenant == q.Tenant) {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	if n := int(q.PageSize); n > 0 && len(addrs) > n {
		addrs = addrs[:n]
	}
	out := &api.ListVIPsResponse{Vips: make([]*api.VIP, len(addrs))}
	for i, a := range addrs {
		out.Vips[i] = sm.vipMessage(sm.vips[a])
	}
	return out, nil
}

func (sm *stateMachine) queryListLeases(q *api.ListLeasesRequest) (*api.ListLeasesResponse, error) {
	vip, err := parseAddr("vip", q.Vip)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if sm.vips[vip] == nil {
		return nil, status.Errorf(codes.NotFound, "vip: %s does not exist", vip)
	}
	var leases []snat.Lease
	if q.Dip != "" {
		dip, err := parseAddr("dip", q.Dip)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		leases = sm.leases.DIPLeases(vip, dip)
	} else {
		leases = sm.leases.VIPLeases(vip)
	}
	out := &api.ListLeasesResponse{Leases: make([]*api.Lease, len(leases))}
	for i, l := range leases {
		out.Leases[i] = leaseToProto(l)
	}
	return out, nil
}

// queryListAgents returns the shard's view of the agents: one Agent per
// agent with this shard's applied version and lag only.
func (sm *stateMachine) queryListAgents(q *api.ListAgentsRequest) *api.ListAgentsResponse {
	out := &api.ListAgentsResponse{}
	for _, id := range slices.Sorted(mapsKeys(sm.agents)) {
		a := sm.agents[id]
		if q.Kind != api.AgentKind_AGENT_KIND_UNSPECIFIED && q.Kind != a.kind {
			continue
		}
		lag := uint64(0)
		if sm.rev > a.applied {
			lag = sm.rev - a.applied
		}
		out.Agents = append(out.Agents, &api.Agent{
			Id: id, Kind: a.kind, Address: a.address,
			Applied:   []*api.ShardVersion{{Shard: sm.cfg.shard, Version: a.applied}},
			Lag:       []*api.ShardVersion{{Shard: sm.cfg.shard, Version: lag}},
			LastSeen:  timestamppb.New(time.Unix(0, a.lastSeen)),
			Connected: a.connected,
		})
	}
	return out
}

// queryTraffic returns the shard's traffic records as per-VIP sums (not
// yet sorted or limited).
func (sm *stateMachine) queryTraffic() *api.GetTrafficResponse {
	sums := make(map[netip.Addr]*api.VIPTraffic)
	for k, t := range sm.traffic {
		v := sums[k.vip]
		if v == nil {
			v = &api.VIPTraffic{Vip: k.vip.String()}
			sums[k.vip] = v
		}
		sec := time.Duration(t.interval).Seconds()
		v.PacketsPerSecond += float64(t.packets) / sec
		v.BytesPerSecond += float64(t.bytes) / sec
		v.DropsPerSecond += float64(t.drops) / sec
		v.Muxes++
	}
	out := &api.GetTrafficResponse{}
	for _, a := range slices.SortedFunc(mapsKeys(sums), netip.Addr.Compare) {
		out.Vips = append(out.Vips, sums[a])
	}
	return out
}

// Save implements consensus.StateMachine: an 8-byte header with the
// schema version, then the ShardSnapshot message, deterministic: equal
// states give equal bytes.
func (sm *stateMachine) Save(w io.Writer) error {
	sm.mu.RLock()
	snap, err := sm.snapshot()
	sm.mu.RUnlock()
	if err != nil {
		return err
	}
	if _, err := w.Write(snapshotMagic[:]); err != nil {
		return err
	}
	_, err = w.Write(marshal(snap))
	return err
}

func (sm *stateMachine) snapshot() (*api.ShardSnapshot, error) {
	lb, err := sm.leases.MarshalBinary()
	if err != nil {
		return nil, err
	}
	s := &api.ShardSnapshot{Rev: sm.rev, Clock: sm.clock, Leases: lb, Limits: sm.cfg.limits}
	for _, a := range slices.SortedFunc(mapsKeys(sm.vips), netip.Addr.Compare) {
		e := sm.vips[a]
		s.Vips = append(s.Vips, &api.VIPRecord{Config: e.pb, Version: e.version})
	}
	hk := slices.SortedFunc(mapsKeys(sm.health), func(a, b healthKey) int {
		if c := a.vip.Compare(b.vip); c != 0 {
			return c
		}
		return a.backend.Compare(b.backend)
	})
	for _, k := range hk {
		h := sm.health[k]
		s.Health = append(s.Health, &api.HealthRecord{Vip: k.vip.String(), Dip: k.backend.Addr().String(), Port: uint32(k.backend.Port()), AgentId: h.agent, At: h.at})
	}
	for _, id := range slices.Sorted(mapsKeys(sm.agents)) {
		a := sm.agents[id]
		s.Agents = append(s.Agents, &api.AgentRecord{Id: id, Kind: a.kind, Address: a.address, Applied: a.applied, LastSeen: a.lastSeen, Connected: a.connected, Session: a.session})
	}
	for _, e := range sm.dedup.order {
		s.Dedup = append(s.Dedup, &api.DedupRecord{Id: []byte(e.key), Expires: e.expires, Result: e.result})
	}
	for _, e := range sm.keys.order {
		s.Keys = append(s.Keys, &api.IdempotencyRecord{Key: e.key, Fingerprint: e.fp, Expires: e.expires, Result: e.result})
	}
	tk := slices.SortedFunc(mapsKeys(sm.traffic), func(a, b trafficKey) int {
		if c := a.vip.Compare(b.vip); c != 0 {
			return c
		}
		return strings.Compare(a.agent, b.agent)
	})
	for _, k := range tk {
		t := sm.traffic[k]
		s.Traffic = append(s.Traffic, &api.TrafficRecord{Vip: k.vip.String(), AgentId: k.agent, Packets: t.packets, Bytes: t.bytes, Drops: t.drops, Interval: t.interval, At: t.at})
	}
	return s, nil
}

// ErrBadSnapshot: Restore was given a snapshot it cannot use (another
// schema version, other limits, corrupt content).
var ErrBadSnapshot = errors.New("manager: bad snapshot")

// Restore implements consensus.StateMachine.
func (sm *stateMachine) Restore(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(b) < len(snapshotMagic) || !bytes.Equal(b[:7], snapshotMagic[:7]) {
		return fmt.Errorf("%w: no snapshot header", ErrBadSnapshot)
	}
	if b[7] != SchemaVersion {
		return fmt.Errorf("%w: schema version %d, this build reads %d", ErrBadSnapshot, b[7], SchemaVersion)
	}
	var s api.ShardSnapshot
	if err := proto.Unmarshal(b[8:], &s); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	if !proto.Equal(s.Limits, sm.cfg.limits) {
		return fmt.Errorf("%w: taken with limits %v, this replica has %v; every replica must be configured alike", ErrBadSnapshot, s.Limits, sm.cfg.limits)
	}
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if err := sm.restore(&s); err != nil {
		_ = sm.reset()
		return err
	}
	if sm.cfg.onChange != nil {
		defer sm.cfg.onChange(sm.cfg.shard)
	}
	return nil
}

func (sm *stateMachine) restore(s *api.ShardSnapshot) error {
	if err := sm.reset(); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadSnapshot}, args...)...)
	}
	sm.rev, sm.clock = s.Rev, s.Clock
	sm.log.base = s.Rev
	if err := sm.leases.UnmarshalBinary(s.Leases); err != nil {
		return bad("leases: %v", err)
	}
	for _, rec := range s.Vips {
		cfg, err := VIPConfigFromProto(rec.Config)
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			return bad("vip %s: %v", rec.GetConfig().GetVip(), err)
		}
		sm.vips[cfg.VIP] = &vipEntry{cfg: cfg, pb: VIPConfigToProto(&cfg), version: rec.Version}
	}
	for _, h := range s.Health {
		vip, err1 := netip.ParseAddr(h.Vip)
		dip, err2 := netip.ParseAddr(h.Dip)
		if err1 != nil || err2 != nil || h.Port > 65535 {
			return bad("health record %v", h)
		}
		sm.health[healthKey{vip, netip.AddrPortFrom(dip, uint16(h.Port))}] = healthRec{agent: h.AgentId, at: h.At}
	}
	for _, a := range s.Agents {
		sm.agents[a.Id] = &agentRec{kind: a.Kind, address: a.Address, applied: a.Applied, lastSeen: a.LastSeen, connected: a.Connected, session: a.Session}
	}
	for _, d := range s.Dedup {
		sm.dedup.add(&dedupEntry{key: string(d.Id), expires: d.Expires, result: d.Result})
	}
	for _, k := range s.Keys {
		sm.keys.add(&dedupEntry{key: k.Key, fp: k.Fingerprint, expires: k.Expires, result: k.Result})
	}
	for _, t := range s.Traffic {
		vip, err := netip.ParseAddr(t.Vip)
		if err != nil {
			return bad("traffic record %v", t)
		}
		sm.traffic[trafficKey{vip, t.AgentId}] = &trafficRec{packets: t.Packets, bytes: t.Bytes, drops: t.Drops, interval: t.Interval, at: t.At}
	}
	return nil
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
