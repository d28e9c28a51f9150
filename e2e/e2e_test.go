package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/mux"
)

// counters is a reading of every counter the tests compare.
type counters struct {
	clientRxBytes, clientRxPackets, clientTxPackets uint64
	muxRxBytes                                      []uint64 // bytes arriving at each Mux's interface
	mux                                             []mux.Stats
	host                                            []hostagent.Stats
}

func (tp *topology) counters(t *testing.T) counters {
	t.Helper()
	c := counters{
		clientRxBytes:   ifStats(t, tp.client, tp.clientIf, "rx_bytes"),
		clientRxPackets: ifStats(t, tp.client, tp.clientIf, "rx_packets"),
		clientTxPackets: ifStats(t, tp.client, tp.clientIf, "tx_packets"),
	}
	for _, m := range tp.muxes {
		c.muxRxBytes = append(c.muxRxBytes, ifStats(t, m.ns, m.ifc, "rx_bytes"))
		c.mux = append(c.mux, m.mux.Stats())
	}
	for _, h := range tp.hosts {
		c.host = append(c.host, h.agent.Stats())
	}
	return c
}

// TestInbound: 200 HTTP requests, each on a new kernel TCP connection, from
// the client to the VIP. The router spreads them over both Muxes, the Muxes
// over both backends; every request succeeds; the 64 KiB answers go from
// the hosts straight to the router (direct server return): all the bytes
// that reached both Muxes' interfaces are a small fraction of what the
// client received, the Muxes forwarded exactly the packets the client sent,
// and the hosts sent at least the packets the client received.
func TestInbound(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp := newTopology(t)
	const requests, size, workers = 200, 64 << 10, 8
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: nsDialer(tp.client)},
		Timeout:   15 * time.Second,
	}
	defer client.CloseIdleConnections()
	before := tp.counters(t)
	start := time.Now()
	var mu sync.Mutex
	perBackend := make(map[string]int)
	var errs []error
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				name, err := get(client, fmt.Sprintf("http://%s/?size=%d", netip.AddrPortFrom(vip, vipPort), size), size)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("request %d: %w", i, err))
				} else {
					perBackend[name]++
				}
				mu.Unlock()
			}
		})
	}
	for i := range requests {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	after := tp.counters(t)
	for _, err := range errs {
		t.Error(err)
	}
	t.Logf("%d requests in %s, per backend %v", requests, took.Round(time.Millisecond), perBackend)
	if len(errs) > 0 {
		t.Fatalf("%d of %d requests failed", len(errs), requests)
	}
	for _, h := range tp.hosts {
		if perBackend[h.server.name] == 0 {
			t.Errorf("backend %s got no request: %v", h.server.name, perBackend)
		}
	}

	clientRx := after.clientRxBytes - before.clientRxBytes
	clientRxPkts := after.clientRxPackets - before.clientRxPackets
	clientTxPkts := after.clientTxPackets - before.clientTxPackets
	var muxRx, muxFwd, muxFwdBytes, newFlows, hostToVM, hostToUplink uint64
	for i := range tp.muxes {
		rx := after.muxRxBytes[i] - before.muxRxBytes[i]
		fwd := after.mux[i].Forwarded - before.mux[i].Forwarded
		fb := after.mux[i].ForwardedBytes - before.mux[i].ForwardedBytes
		nf := after.mux[i].VIPs[vip].NewFlows - before.mux[i].VIPs[vip].NewFlows
		t.Logf("mux%d: %d bytes arrived, forwarded %d packets (%d bytes), %d new flows, drops %v", i+1, rx, fwd, fb, nf, after.mux[i].Drops)
		if nf == 0 {
			t.Errorf("mux%d got no connection: the router did not spread the VIP over both Muxes", i+1)
		}
		muxRx, muxFwd, muxFwdBytes, newFlows = muxRx+rx, muxFwd+fwd, muxFwdBytes+fb, newFlows+nf
	}
	for i := range tp.hosts {
		in := after.host[i].Inbound.ToVM - before.host[i].Inbound.ToVM
		out := after.host[i].Outbound.ToUplink - before.host[i].Outbound.ToUplink
		t.Logf("host%d: %d packets from the Muxes to the VM, %d packets from the VM to the router, drops %v", i+1, in, out, after.host[i].Drops)
		hostToVM, hostToUplink = hostToVM+in, hostToUplink+out
	}
	t.Logf("client sent %d packets and received %d packets (%d bytes); the Muxes received %d bytes in all and forwarded %d packets (%d bytes); hosts: %d in, %d out",
		clientTxPkts, clientRxPkts, clientRx, muxRx, muxFwd, muxFwdBytes, hostToVM, hostToUplink)
	if newFlows < requests {
		t.Errorf("the Muxes saw %d new flows, want at least %d (one per connection)", newFlows, requests)
	}
	if clientRx < requests*size {
		t.Fatalf("the client received %d bytes, less than the %d bytes of the answers", clientRx, requests*size)
	}
	// The answers did not cross a Mux: everything that reached the Muxes'
	// interfaces is less than a tenth of what the client received.
	if muxRx*10 > clientRx {
		t.Errorf("%d bytes reached the Muxes for %d received by the client: answers went through them", muxRx, clientRx)
	}
	// The Muxes forwarded the client's packets and only them (the client
	// also sends a few ARP and IPv6 neighbour packets that are not to the
	// VIP).
	if muxFwd > clientTxPkts || muxFwd+20 < clientTxPkts {
		t.Errorf("the Muxes forwarded %d packets, the client sent %d", muxFwd, clientTxPkts)
	}
	// The hosts received from the Muxes what the Muxes forwarded, and sent
	// the router at least what the client received.
	if hostToVM > muxFwd || hostToVM+20 < muxFwd {
		t.Errorf("the hosts delivered %d packets to the VMs, the Muxes forwarded %d", hostToVM, muxFwd)
	}
	if hostToUplink+20 < clientRxPkts {
		t.Errorf("the hosts sent %d packets to the router, the client received %d: answers took another way", hostToUplink, clientRxPkts)
	}
}

// get fetches url and checks that the answer has want bytes; it returns the
// backend that answered.
func get(c *http.Client, url string, want int) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || n != int64(want) {
		return "", fmt.Errorf("status %d, %d bytes, want 200 and %d bytes", resp.StatusCode, n, want)
	}
	return resp.Header.Get("X-Backend"), nil
}

// TestOutboundSNAT: each VM opens 20 kernel TCP connections to a server in
// the client's namespace and echoes 16 KiB on each. The Manager preallocated
// 8 ports per DIP, so the Host Agents lease more from the Manager's SNAT
// API while the connections open. The server sees every
// connection come from the VIP, on a port of a lease the Manager lists for
// that VM's DIP and host; the answers come back through the Muxes (their
// SNAT return maps, which they got from the Manager).
func TestOutboundSNAT(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp := newTopology(t)
	const conns, workers, size = 20, 4, 16 << 10
	srv := startOutsideServer(t, tp.client, netip.AddrPortFrom(clientAddr, 9000))
	before := tp.counters(t)
	payload := bytes.Repeat([]byte("ananta."), size/7+1)[:size]
	var wg sync.WaitGroup
	errs := make(chan error, numHosts*conns)
	for _, h := range tp.hosts {
		jobs := make(chan int, conns)
		for i := range conns {
			jobs <- i
		}
		close(jobs)
		for range workers {
			wg.Go(func() {
				for range jobs {
					if err := echoOut(h, srv.addr, payload); err != nil {
						errs <- fmt.Errorf("%s: %w", h.server.name, err)
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		t.Error(err)
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d outbound connections failed", n, numHosts*conns)
	}
	after := tp.counters(t)
	leases := tp.leases(t)
	for _, l := range leases {
		t.Logf("lease %d-%d to %s on %s", l.GetRange().GetFirst(), l.GetRange().GetLast(), l.GetDip(), l.GetHost())
	}
	for i, h := range tp.hosts {
		remotes := srv.remotes(h.server.name)
		ports := make(map[uint16]bool)
		for _, r := range remotes {
			ports[r.Port()] = true
			if r.Addr() != vip {
				t.Errorf("%s reached the server as %s, want the VIP %s", h.server.name, r, vip)
				continue
			}
			leased := false
			for _, l := range leases {
				if l.GetDip() == h.dip.String() && l.GetHost() == h.addr.String() &&
					uint32(r.Port()) >= l.GetRange().GetFirst() && uint32(r.Port()) <= l.GetRange().GetLast() {
					leased = true
				}
			}
			if !leased {
				t.Errorf("%s reached the server from port %d, which the Manager does not list as leased to %s on %s", h.server.name, r.Port(), h.dip, h.addr)
			}
		}
		st := after.host[i]
		t.Logf("%s: %d connections seen by the server from %d distinct VIP ports; agent: %d port requests, %d ports granted, %d held packets released",
			h.server.name, len(remotes), len(ports), st.SNATRequests-before.host[i].SNATRequests, st.SNATPortsGranted-before.host[i].SNATPortsGranted, st.HeldReleased-before.host[i].HeldReleased)
		if st.SNATRequests == before.host[i].SNATRequests || st.SNATPortsGranted == before.host[i].SNATPortsGranted {
			t.Errorf("%s opened %d connections with %d ports preallocated, but its Host Agent leased no ports from the Manager", h.server.name, conns, snatPortsPerDIP)
		}
		if len(remotes) != conns {
			t.Errorf("the server recorded %d connections from %s, want %d", len(remotes), h.server.name, conns)
		}
	}
	var returned uint64
	for i := range tp.muxes {
		returned += after.mux[i].VIPs[vip].Packets - before.mux[i].VIPs[vip].Packets
	}
	t.Logf("the Muxes tunnelled %d return packets to the hosts", returned)
	if returned < numHosts*conns*(size/1500) {
		t.Errorf("the Muxes tunnelled %d return packets, fewer than the echoed data needs", returned)
	}
}

// echoOut connects from h's VM to addr, sends the VM's name and payload,
// and checks the echo.
func echoOut(h *hostNode, addr netip.AddrPort, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := nsDialer(h.vm)(ctx, "tcp4", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	msg := append([]byte(h.server.name+"\n"), payload...)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo differs: %d bytes, want %d", len(got), len(msg))
	}
	return nil
}

// keepAlive is an HTTP/1.1 connection from the client to the VIP that
// stays open across requests.
type keepAlive struct {
	c       net.Conn
	r       *bufio.Reader
	backend string // the backend that answered the first request
}

func dialKeepAlive(tp *topology) (*keepAlive, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nsDialer(tp.client)(ctx, "tcp4", netip.AddrPortFrom(vip, vipPort).String())
	if err != nil {
		return nil, err
	}
	k := &keepAlive{c: c, r: bufio.NewReader(c)}
	if k.backend, err = k.get(1000); err != nil {
		c.Close()
		return nil, err
	}
	return k, nil
}

// get sends one request for size bytes on the connection and returns the
// backend that answered.
func (k *keepAlive) get(size int) (string, error) {
	k.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(k.c, "GET /?size=%d HTTP/1.1\r\nHost: vip\r\n\r\n", size); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || n != int64(size) {
		return "", fmt.Errorf("status %d, %d bytes, want 200 and %d bytes", resp.StatusCode, n, size)
	}
	return resp.Header.Get("X-Backend"), nil
}

// TestDrainMux: 40 established keep-alive connections spread over both
// Muxes, which announce the VIP over BGP; mux1 drains (Mux.Drain: it
// withdraws the VIP, the router removes its next hop from the ECMP route,
// and Drain returns once no packet has reached mux1 for the settle time),
// then mux1 stops. Every established
// connection goes on through mux2, which has none of them in its flow table
// but picks the same backend by Maglev (both Muxes have the same
// configuration from the Manager), and new connections succeed.
func TestDrainMux(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp := newTopologyRouting(t, true)
	const conns, fresh = 40, 50
	ks := openKeepAlives(t, tp, conns)
	var onMux1 uint64
	for i, m := range tp.muxes {
		nf := m.mux.Stats().VIPs[vip].NewFlows
		t.Logf("mux%d carries %d of the %d established connections", i+1, nf, conns)
		if nf == 0 {
			t.Fatalf("mux%d carries no connection: nothing to drain", i+1)
		}
		if i == 0 {
			onMux1 = nf
		}
	}
	mux2Flows := tp.muxes[1].mux.Stats().VIPs[vip].NewFlows
	// mux1 takes over its announcement (the speaker announced the VIP at
	// start; announcing the same route again changes nothing).
	m1 := tp.muxes[0].mux
	m1.SetSynced(true)
	testutil.WaitFor(t, 10*time.Second, "mux1 to announce the VIP", func() bool { return len(m1.Announced()) == 1 })
	start := time.Now()
	const settle = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m1.Drain(ctx, settle); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	drained := time.Since(start)
	testutil.WaitFor(t, 10*time.Second, "the router to drop the drained Mux", func() bool { return len(tp.nextHops(t)) == 1 })
	if len(m1.Announced()) != 0 {
		t.Fatalf("mux1 still announces %v after Drain", m1.Announced())
	}
	t.Logf("mux1's Drain (settle %s) returned after %s", settle, drained.Round(time.Millisecond))
	mux1Fwd := tp.muxes[0].mux.Stats().Forwarded
	tp.muxes[0].stop()

	broken := 0
	for i, k := range ks {
		b, err := k.get(4096)
		switch {
		case err != nil:
			broken++
			t.Errorf("established connection %d broke after the drain: %v", i, err)
		case b != k.backend:
			t.Errorf("established connection %d answered by %s after the drain, by %s before", i, b, k.backend)
		}
	}
	client := newClient(tp)
	defer client.CloseIdleConnections()
	failed := 0
	for i := range fresh {
		if _, err := get(client, fmt.Sprintf("http://%s/?size=1000", netip.AddrPortFrom(vip, vipPort)), 1000); err != nil {
			failed++
			t.Errorf("new connection %d after the drain: %v", i, err)
		}
	}
	moved := tp.muxes[1].mux.Stats().VIPs[vip].NewFlows - mux2Flows
	t.Logf("after the drain: %d of %d established connections broke, %d of %d new connections failed; mux2 took %d flows (%d were on mux1, %d new)",
		broken, conns, failed, fresh, moved, onMux1, fresh)
	if moved < onMux1+fresh {
		t.Errorf("mux2 took %d flows, want at least the %d of mux1 and the %d new ones", moved, onMux1, fresh)
	}
	if got := tp.muxes[0].mux.Stats().Forwarded; got != mux1Fwd {
		t.Errorf("mux1 forwarded %d packets after it stopped", got-mux1Fwd)
	}
}

// openKeepAlives opens n keep-alive connections to the VIP, closed when the
// test ends.
func openKeepAlives(t *testing.T, tp *topology, n int) []*keepAlive {
	t.Helper()
	var ks []*keepAlive
	t.Cleanup(func() {
		for _, k := range ks {
			k.c.Close()
		}
	})
	for i := range n {
		k, err := dialKeepAlive(tp)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		ks = append(ks, k)
	}
	return ks
}

// newClient returns an HTTP client in the client's namespace that opens a
// new connection for every request.
func newClient(tp *topology) *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: nsDialer(tp.client)}, Timeout: 15 * time.Second}
}
