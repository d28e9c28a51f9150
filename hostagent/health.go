package hostagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/internal/netns"
)

// HealthReport is a change of health of one backend of one endpoint, as the
// agent's probes saw it.
type HealthReport struct {
	VIP      netip.Addr
	Endpoint ananta.Endpoint
	// Backend is the backend's key: its DIP and Backend.Port.
	Backend netip.AddrPort
	Healthy bool
	// Detail is the last probe's error when unhealthy.
	Detail string
	// At is when the probe that changed the state ended.
	At time.Time
}

// HealthReporter receives health changes, for the Manager to relay to the
// Muxes. The agent applies them locally (no new flows to an unhealthy
// backend) whatever the reporter does.
//
// ReportHealth is called from the probe goroutines, one call per affected
// (VIP, endpoint, backend) and transition, with a context that carries a
// deadline; calls for one backend come in order. An error is logged; the
// state is reported again at the next transition only, so a reporter that
// must not lose reports retries on its own (or reads HostAgent.Health).
type HealthReporter interface {
	ReportHealth(ctx context.Context, r HealthReport) error
}

// HealthReporterFunc adapts a function to HealthReporter.
type HealthReporterFunc func(ctx context.Context, r HealthReport) error

// ReportHealth calls f.
func (f HealthReporterFunc) ReportHealth(ctx context.Context, r HealthReport) error { return f(ctx, r) }

// BackendHealth is the current state of one probed DIP service.
type BackendHealth struct {
	DIP     netip.Addr
	Port    uint16 // the probed port (HealthPort)
	Kind    ananta.ProbeKind
	Healthy bool
	Detail  string    // last probe error while unhealthy
	Since   time.Time // last transition, or when probing started
}

// probeTarget is one probed service: equal targets of several endpoints
// share one prober.
type probeTarget struct {
	netns string
	dip   netip.Addr
	port  uint16
	probe ananta.HealthProbe // with defaults
}

type probeUser struct {
	vip     netip.Addr
	ep      ananta.Endpoint
	backend netip.AddrPort
}

type prober struct {
	target probeTarget
	cancel context.CancelFunc
	client *http.Client

	// mu guards the fields below (read by Health).
	mu     sync.Mutex
	users  []probeUser
	up     bool
	succ   int
	fail   int
	detail string
	since  time.Time
}

// health runs the probes of the agent's local backends.
type health struct {
	a *HostAgent

	// mu guards the fields below.
	mu      sync.Mutex
	ctx     context.Context // nil until Run starts the probers
	probers map[probeTarget]*prober
	wg      sync.WaitGroup
}

// targets computes the probes the configuration asks for.
func (a *HostAgent) targets() map[probeTarget][]probeUser {
	out := make(map[probeTarget][]probeUser)
	for _, vip := range a.eng.VIPs() {
		cfg, ok := a.eng.VIP(vip)
		if !ok {
			continue
		}
		for i := range cfg.Endpoints {
			p := cfg.EffectiveProbe(i)
			if p.Kind == ananta.ProbeNone {
				continue
			}
			ec := &cfg.Endpoints[i]
			for _, b := range ec.Backends {
				vm, ok := a.vmOf[b.DIP]
				if !ok {
					continue
				}
				port := HealthPort(&cfg, i, b)
				if port == 0 {
					continue // all-ports backend and no probe port: nothing to probe
				}
				t := probeTarget{netns: a.cfg.VMs[vm].NetNS, dip: b.DIP, port: port, probe: p}
				out[t] = append(out[t], probeUser{vip: vip, ep: ec.Endpoint(vip), backend: b.Key()})
			}
		}
	}
	return out
}

// reconcile starts and stops probers to match the configuration.
func (h *health) reconcile() {
	want := h.a.targets()
	h.mu.Lock()
	defer h.mu.Unlock()
	for t, p := range h.probers {
		if _, ok := want[t]; !ok {
			if p.cancel != nil {
				p.cancel()
			}
			delete(h.probers, t)
			// A backend no longer probed is no longer held down.
			h.a.eng.SetHealth(t.dip, t.port, true)
		}
	}
	for t, users := range want {
		p := h.probers[t]
		if p == nil {
			p = &prober{target: t, up: true, since: time.Now()}
			if t.probe.Kind == ananta.ProbeHTTP {
				p.client = newProbeClient(t)
			}
			h.probers[t] = p
			if h.ctx != nil {
				h.start(p)
			}
		}
		p.mu.Lock()
		p.users = users
		p.mu.Unlock()
	}
}

// startAll starts every prober under ctx. h.mu must not be held.
func (h *health) startAll(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ctx = ctx
	for _, p := range h.probers {
		h.start(p)
	}
}

// start starts p's goroutine. h.mu is held.
func (h *health) start(p *prober) {
	ctx, cancel := context.WithCancel(h.ctx)
	p.cancel = cancel
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.loop(ctx, p)
	}()
}

// stopAll stops every prober and waits for them; probers added later are
// not started.
func (h *health) stopAll() {
	h.mu.Lock()
	h.ctx = nil
	for _, p := range h.probers {
		if p.cancel != nil {
			p.cancel()
		}
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (h *health) loop(ctx context.Context, p *prober) {
	if p.client != nil {
		defer p.client.CloseIdleConnections()
	}
	tick := time.NewTicker(p.target.probe.Interval)
	defer tick.Stop()
	for {
		err := probeOnce(ctx, p)
		if ctx.Err() != nil {
			return
		}
		h.record(ctx, p, err)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// record applies one probe result to p's rise/fall state machine.
func (h *health) record(ctx context.Context, p *prober, err error) {
	now := time.Now()
	pr := &p.target.probe
	p.mu.Lock()
	changed := false
	if err == nil {
		p.succ, p.fail = p.succ+1, 0
		if !p.up && p.succ >= pr.Rise {
			p.up, p.detail, p.since, changed = true, "", now, true
		}
	} else {
		p.fail, p.succ = p.fail+1, 0
		if !p.up {
			p.detail = err.Error()
		}
		if p.up && p.fail >= pr.Fall {
			p.up, p.detail, p.since, changed = false, err.Error(), now, true
		}
	}
	up, detail, users := p.up, p.detail, slices.Clone(p.users)
	p.mu.Unlock()
	if !changed {
		return
	}
	a := h.a
	t := p.target
	a.eng.SetHealth(t.dip, t.port, up)
	a.healthChanges.Add(1)
	a.log.Info("backend health changed", "dip", t.dip, "port", t.port, "probe", pr.Kind, "healthy", up, "detail", detail)
	if a.cfg.Health == nil {
		return
	}
	for _, u := range users {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.cfg.Health.ReportHealth(rctx, HealthReport{
			VIP: u.vip, Endpoint: u.ep, Backend: u.backend, Healthy: up, Detail: detail, At: now,
		})
		cancel()
		if err != nil && ctx.Err() == nil {
			a.log.Warn("health report failed", "vip", u.vip, "backend", u.backend, "err", err)
		}
	}
}

// status returns the health of every probed service.
func (h *health) status() []BackendHealth {
	h.mu.Lock()
	out := make([]BackendHealth, 0, len(h.probers))
	for t, p := range h.probers {
		p.mu.Lock()
		out = append(out, BackendHealth{DIP: t.dip, Port: t.port, Kind: t.probe.Kind, Healthy: p.up, Detail: p.detail, Since: p.since})
		p.mu.Unlock()
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b BackendHealth) int {
		if c := a.DIP.Compare(b.DIP); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	return out
}

// dialIn connects to addr over TCP from inside the network namespace at
// path (the calling process's if empty).
func dialIn(ctx context.Context, path, addr string) (net.Conn, error) {
	var conn net.Conn
	err := netns.Do(path, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		conn = c
		return err
	})
	return conn, err
}

func newProbeClient(t probeTarget) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return dialIn(ctx, t.netns, addr)
			},
			DisableKeepAlives:  true,
			DisableCompression: true,
			Proxy:              nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

var errStatus = errors.New("unexpected HTTP status")

// probeOnce runs one probe of p's target with its timeout.
func probeOnce(ctx context.Context, p *prober) error {
	t := p.target
	ctx, cancel := context.WithTimeout(ctx, t.probe.Timeout)
	defer cancel()
	addr := netip.AddrPortFrom(t.dip, t.port).String()
	switch t.probe.Kind {
	case ananta.ProbeTCP:
		c, err := dialIn(ctx, t.netns, addr)
		if err != nil {
			return err
		}
		return c.Close()
	case ananta.ProbeHTTP:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+t.probe.Path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "ananta-hostagent-probe")
		resp, err := p.client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode != t.probe.ExpectStatus {
			return fmt.Errorf("%w %d, want %s", errStatus, resp.StatusCode, strconv.Itoa(t.probe.ExpectStatus))
		}
		return nil
	}
	return nil
}
