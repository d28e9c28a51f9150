package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
)

// backend is a real Go HTTP server in a VM namespace, listening on the DIP.
// GET /?size=N answers N bytes; the X-Backend header names the VM.
type backend struct {
	name     string
	requests atomic.Uint64
	remotes  sync.Map // remote address -> true: who connected
}

func startBackend(t *testing.T, ns *testutil.NetNS, addr netip.AddrPort, name string) *backend {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name}
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = byte(i * 7)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.requests.Add(1)
			b.remotes.Store(r.RemoteAddr, true)
			n, _ := strconv.Atoi(r.URL.Query().Get("size"))
			n = min(max(n, 0), len(body))
			w.Header().Set("X-Backend", name)
			w.Header().Set("Content-Length", strconv.Itoa(n))
			w.Write(body[:n])
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("backend %s: %v", name, err)
		}
	})
	return b
}

// outsideServer is a TCP server in the client's namespace for the VMs'
// outbound connections: each connection sends one line naming its VM, the
// server records the connection's remote address under that name and echoes
// everything.
type outsideServer struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen map[string][]netip.AddrPort // VM name -> remote addresses
}

func startOutsideServer(t *testing.T, ns *testutil.NetNS, addr netip.AddrPort) *outsideServer {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := &outsideServer{addr: addr, seen: make(map[string][]netip.AddrPort)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(c)
				name, err := r.ReadString('\n')
				if err != nil {
					return
				}
				s.mu.Lock()
				s.seen[name[:len(name)-1]] = append(s.seen[name[:len(name)-1]], netip.MustParseAddrPort(c.RemoteAddr().String()))
				s.mu.Unlock()
				fmt.Fprint(c, name)
				io.Copy(c, r)
			})
		}
	})
	return s
}

func (s *outsideServer) remotes(name string) []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.seen[name]...)
}
