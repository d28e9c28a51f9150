package mux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/routing"
)

// Lifecycle defaults and limits (see Config.SelfCheckInterval).
const (
	DefaultSelfCheckInterval = time.Second
	MinSelfCheckInterval     = 5 * time.Millisecond
	// announceTimeout bounds one round of Announcer calls.
	announceTimeout = 10 * time.Second
)

// Self-check probe sources: documentation addresses (RFC 5737 TEST-NET-1
// and RFC 3849), which no real client uses, and a fixed source port.
var (
	probeSource4 = netip.MustParseAddr("192.0.2.1")
	probeSource6 = netip.MustParseAddr("2001:db8::1")
)

const (
	probeSourcePort = 65535
	// probeAllPortsPort is the destination port of probes to an
	// endpoint of every port.
	probeAllPortsPort = 9
)

// lifecycle is the announcement state of a Mux (see the package
// documentation, "Lifecycle").
type lifecycle struct {
	workers  atomic.Bool // Run's workers are up
	synced   atomic.Bool // SetSynced(true)
	checkOK  atomic.Bool // the last self-check passed
	draining atomic.Bool // Drain was called
	closed   atomic.Bool // Close was called

	checkFailures  atomic.Uint64
	announceErrors atomic.Uint64
	rounds         atomic.Uint64 // lifecycle loop rounds completed (tests)

	wake chan struct{} // buffered 1: a change to re-evaluate

	// annMu serialises the Announcer calls and guards announced and
	// lastCheckErr.
	annMu        sync.Mutex
	announced    map[netip.Prefix]bool
	lastCheckErr string
}

func (l *lifecycle) init() {
	l.wake = make(chan struct{}, 1)
	l.announced = make(map[netip.Prefix]bool)
}

// poke asks the lifecycle loop to re-evaluate now. It never blocks.
func (l *lifecycle) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// ready reports whether the Mux may announce its VIPs.
func (l *lifecycle) ready() bool {
	return l.workers.Load() && l.synced.Load() && l.checkOK.Load() && !l.draining.Load() && !l.closed.Load()
}

// SetSynced declares whether the Mux's configuration has caught up with the
// Manager. The owner of the configuration (for example the Watch client's
// owner, after the first snapshot is applied) calls SetSynced(true); the
// Mux announces nothing before. SetSynced(false) withdraws the VIPs until
// the next SetSynced(true). Without Config.Announcer it only records the
// state.
func (m *Mux) SetSynced(synced bool) {
	m.lc.synced.Store(synced)
	m.lc.poke()
}

// Announced returns the VIP prefixes the Mux currently announces through
// Config.Announcer (those whose last Announce succeeded), sorted.
func (m *Mux) Announced() []netip.Prefix {
	m.lc.annMu.Lock()
	defer m.lc.annMu.Unlock()
	out := make([]netip.Prefix, 0, len(m.lc.announced))
	for p := range m.lc.announced {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// route returns the announcement of vip, false if the Mux has no next hop
// of vip's family.
func (m *Mux) route(vip netip.Addr) (routing.Route, bool) {
	nh := m.cfg.NextHop6
	if vip.Is4() {
		nh = m.cfg.NextHop4
	}
	if !nh.IsValid() {
		return routing.Route{}, false
	}
	return routing.Route{
		Prefix:      netip.PrefixFrom(vip, vip.BitLen()),
		NextHop:     nh,
		Communities: m.cfg.Communities,
		MED:         m.cfg.MED,
	}, true
}

// reconcile makes the announced routes what the lifecycle state wants:
// every VIP while ready, none otherwise. Failed calls are counted and
// retried by the next round. It returns the first error.
func (m *Mux) reconcile(ctx context.Context) error {
	a := m.cfg.Announcer
	if a == nil {
		return nil
	}
	m.lc.annMu.Lock()
	defer m.lc.annMu.Unlock()
	if m.lc.closed.Load() {
		return nil // Close withdrew everything with Announcer.Close
	}
	want := make(map[netip.Prefix]routing.Route)
	if m.lc.ready() {
		m.mu.Lock()
		for vip := range m.vips {
			if r, ok := m.route(vip); ok {
				want[r.Prefix] = r
			}
		}
		m.mu.Unlock()
	}
	var first error
	fail := func(err error) {
		m.lc.announceErrors.Add(1)
		if first == nil {
			first = err
		}
	}
	for p := range m.lc.announced {
		if _, ok := want[p]; ok {
			continue
		}
		if err := a.Withdraw(ctx, p); err != nil {
			fail(fmt.Errorf("mux: withdraw %s: %w", p, err))
			continue
		}
		delete(m.lc.announced, p)
		m.log.Info("mux: VIP withdrawn", "prefix", p)
	}
	for p, r := range want {
		if m.lc.announced[p] {
			continue
		}
		if err := a.Announce(ctx, r); err != nil {
			fail(fmt.Errorf("mux: announce %s: %w", p, err))
			continue
		}
		m.lc.announced[p] = true
		m.log.Info("mux: VIP announced", "prefix", p, "next_hop", r.NextHop)
	}
	if first != nil {
		m.log.Warn("mux: announcer error", "error", first)
	}
	return first
}

// lifecycleLoop runs while Run's workers are up: every
// Config.SelfCheckInterval, and at every configuration or state change, it
// runs the self-check and reconciles the announcements.
func (m *Mux) lifecycleLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.SelfCheckInterval)
	defer t.Stop()
	for {
		m.runSelfCheck()
		rctx, cancel := context.WithTimeout(ctx, announceTimeout)
		_ = m.reconcile(rctx)
		cancel()
		m.lc.rounds.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.lc.wake:
		}
	}
}

// runSelfCheck runs the self-check and records its result.
func (m *Mux) runSelfCheck() {
	err := m.SelfCheck()
	m.lc.checkOK.Store(err == nil)
	msg := ""
	if err != nil {
		m.lc.checkFailures.Add(1)
		msg = err.Error()
	}
	m.lc.annMu.Lock()
	changed := msg != m.lc.lastCheckErr
	m.lc.lastCheckErr = msg
	m.lc.annMu.Unlock()
	if changed {
		if err != nil {
			m.log.Warn("mux: self-check failed", "error", err)
		} else {
			m.log.Info("mux: self-check passes")
		}
	}
}

// probeSpec is one endpoint to probe.
type probeSpec struct {
	vip   netip.Addr
	proto ananta.Protocol
	port  uint16
}

// SelfCheck checks the data path: Run's workers must be up, and a
// synthetic packet to every endpoint of every configured VIP must be
// forwarded. The probe is a TCP SYN (a UDP datagram for a UDP endpoint;
// destination port 9 for an endpoint of every port) from 192.0.2.1 or
// 2001:db8::1 (documentation addresses), port 65535, which goes through the data path's own steps
// on the published configuration: parsing, the flow hash, the VIP index,
// the endpoint lookup, the Maglev pick and the encapsulation, whose
// output is checked by decapsulating it. It skips the flow table, the SNAT
// map and the counters, so it changes no flow and no statistic. An
// endpoint without a usable backend passes: that is the backends' state,
// not a data-path failure. Without VIPs, only the workers are checked.
//
// The lifecycle loop runs it every Config.SelfCheckInterval while Run is
// running; it may also be called directly.
func (m *Mux) SelfCheck() error {
	if !m.lc.workers.Load() {
		return errors.New("mux: self-check: Run's workers are not running")
	}
	var specs []probeSpec
	m.mu.Lock()
	for vip, vc := range m.vips {
		for _, ep := range vc.cfg.Endpoints {
			specs = append(specs, probeSpec{vip: vip, proto: ep.Protocol, port: ep.Port})
		}
	}
	m.mu.Unlock()
	snap := m.snap.Load()
	buf := make([]byte, Headroom+60)
	for _, s := range specs {
		if err := m.probe(snap, s, buf); err != nil {
			return fmt.Errorf("mux: self-check: %s/%s: %w", s.proto, netip.AddrPortFrom(s.vip, s.port), err)
		}
	}
	return nil
}

// probe runs one synthetic packet for s through the data path's steps in
// buf (see SelfCheck).
func (m *Mux) probe(snap *snapshot, s probeSpec, buf []byte) error {
	pkt := buildProbe(buf[Headroom:Headroom], s)
	orig := bytes.Clone(pkt)
	start, end := Headroom, Headroom+len(pkt)
	var pi pktInfo
	if !fastParse(buf[start:end], &pi) {
		// Short packets (a UDP probe over IPv4) take Process's slow path.
		var p encap.Packet
		if err := encap.Parse(buf[start:end], &p); err != nil {
			return fmt.Errorf("probe packet does not parse: %w", err)
		}
		pi = pktInfo{totalLen: p.TotalLen, proto: p.Tuple.Proto, version: p.Version, sport: p.Tuple.SrcPort, dport: p.Tuple.DstPort}
	}
	var k flowKey
	keyFromPacket(&k, buf[start:], pi.version, pi.sport, pi.dport, pi.proto)
	h := k.hash(m.seed)
	ve := snap.vips.get(k.w[2], k.w[3])
	if ve == nil {
		return errors.New("the VIP is not in the data path (would drop: no-vip)")
	}
	ep, reason := ve.endpointFor(pi.proto, pi.dport, false)
	if ep == nil {
		return fmt.Errorf("the endpoint is not in the data path (would drop: %s)", reason)
	}
	be := ep.pick(h)
	if be == nil {
		return nil // no usable backend: not a data-path failure
	}
	src := &m.src6
	if be.host4 {
		src = &m.src4
	}
	if !src.ok {
		return fmt.Errorf("no outer source for host %s", be.host)
	}
	ns, err := encap.Encap(buf, start, end, src.addr(h), be.target.host, encap.EncapOptions{TTL: m.ttl})
	if err != nil {
		return fmt.Errorf("encapsulation to %s: %w", be.target.host, err)
	}
	inner, _, err := encap.Decap(buf[ns:end])
	if err != nil {
		return fmt.Errorf("encapsulated probe to %s does not decapsulate: %w", be.target.host, err)
	}
	if !bytes.Equal(inner, orig) {
		return fmt.Errorf("encapsulated probe to %s changed the inner packet", be.target.host)
	}
	return nil
}

// buildProbe appends the probe packet for s to b (which must have room
// for 60 bytes) and returns it.
func buildProbe(b []byte, s probeSpec) []byte {
	proto := ananta.ProtocolTCP
	if s.proto == ananta.ProtocolUDP {
		proto = ananta.ProtocolUDP
	}
	dport := s.port
	if dport == 0 {
		dport = probeAllPortsPort
	}
	l4len := 20
	if proto == ananta.ProtocolUDP {
		l4len = 8
	}
	src := probeSource6
	hl := 40
	if s.vip.Is4() {
		src, hl = probeSource4, 20
	}
	b = b[:hl+l4len]
	clear(b)
	if s.vip.Is4() {
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		binary.BigEndian.PutUint16(b[6:], 0x4000) // DF
		b[8] = 64
		b[9] = byte(proto)
		a, d := src.As4(), s.vip.As4()
		copy(b[12:], a[:])
		copy(b[16:], d[:])
		binary.BigEndian.PutUint16(b[10:], encap.Checksum(b[:20]))
	} else {
		b[0] = 0x60
		binary.BigEndian.PutUint16(b[4:], uint16(l4len))
		b[6] = byte(proto)
		b[7] = 64
		a, d := src.As16(), s.vip.As16()
		copy(b[8:], a[:])
		copy(b[24:], d[:])
	}
	l4 := b[hl:]
	binary.BigEndian.PutUint16(l4[0:], probeSourcePort)
	binary.BigEndian.PutUint16(l4[2:], dport)
	if proto == ananta.ProtocolTCP {
		binary.BigEndian.PutUint32(l4[4:], 1)
		l4[12] = 5 << 4
		l4[13] = encap.TCPFlagSYN
		binary.BigEndian.PutUint16(l4[14:], 65535)
		binary.BigEndian.PutUint16(l4[16:], encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(src, s.vip, proto, len(l4)))))
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		c := encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(src, s.vip, proto, len(l4))))
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	}
	return b
}

// Drain takes the Mux out of service without breaking connections: it
// withdraws every VIP (for good: a drained Mux announces nothing again),
// keeps forwarding while the routers move the traffic to the other Muxes,
// and returns nil once the Mux has seen no packet to its VIPs for settle
// (forwarded, answered or dropped for a VIP reason; probes do not count).
// It returns the Announcer's error if a withdrawal fails, or ctx's error
// if ctx ends first. Close afterwards stops forwarding.
func (m *Mux) Drain(ctx context.Context, settle time.Duration) error {
	m.lc.draining.Store(true)
	m.log.Info("mux: draining", "settle", settle)
	if err := m.reconcile(ctx); err != nil {
		return err
	}
	poll := min(max(settle/10, time.Millisecond), 100*time.Millisecond)
	t := time.NewTicker(poll)
	defer t.Stop()
	last := m.vipPackets()
	quiet := time.Now()
	for time.Since(quiet) < settle {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if n := m.vipPackets(); n != last {
			last, quiet = n, time.Now()
		}
	}
	m.log.Info("mux: drained")
	return nil
}

// vipPackets counts the packets seen for the VIPs: forwarded, answered,
// and dropped for a reason that concerns a VIP.
func (m *Mux) vipPackets() uint64 {
	m.mu.Lock()
	n := m.retired.packets
	m.mu.Unlock()
	for _, ve := range m.snap.Load().list {
		p, _, _ := ve.ctr.totals()
		n += p
	}
	n += m.replies.Load()
	for i := range m.drops {
		for _, r := range []DropReason{DropNoEndpoint, DropNoBackend, DropFragment, DropICMPNoFlow, DropTooBig, DropTooBigRateLimited} {
			n += m.drops[i].n[r].Load()
		}
	}
	return n
}
