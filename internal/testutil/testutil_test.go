package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNetNSVethAndDo(t *testing.T) {
	RequirePrivileged(t)
	a, b := NewNetNS(t), NewNetNS(t)
	aIf, bIf := Veth(t, a, b, netip.MustParsePrefix("198.18.200.1/30"), netip.MustParsePrefix("198.18.200.2/30"))
	if !strings.Contains(a.Run(t, "ip", "-o", "link", "show"), aIf) || !strings.Contains(b.Run(t, "ip", "-o", "link", "show"), bIf) {
		t.Fatalf("veth ends %s/%s not in their namespaces", aIf, bIf)
	}
	// A listener created inside b through Do accepts a connection made
	// inside a: the sockets live in their namespaces.
	var ln net.Listener
	if err := b.Do(func() (err error) {
		ln, err = net.Listen("tcp4", "198.18.200.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	if err := a.Do(func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("198.18.200.2:%d", port), 5*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		t.Fatalf("dial from a to b: %v", err)
	}
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted within 10 s")
	}
	// Nothing leads out of the test namespaces: no default route.
	for _, ns := range []*NetNS{a, b} {
		for _, fam := range []string{"-4", "-6"} {
			if r := ns.Run(t, "ip", fam, "route", "show", "default"); strings.TrimSpace(r) != "" {
				t.Errorf("namespace %s has a default route: %s", ns.Name, r)
			}
		}
	}
}

func TestNetNSCleanupRemovesNamespace(t *testing.T) {
	RequirePrivileged(t)
	var name string
	t.Run("inner", func(t *testing.T) {
		name = NewNetNS(t).Name
	})
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), name+" ") || strings.Contains(string(out), name+"\n") {
		t.Errorf("namespace %s still exists after its test ended", name)
	}
}

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	errors   []string
	cleanups []func()
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) finish() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestCheckGoroutinesFindsLeak(t *testing.T) {
	r := &recorder{TB: t}
	CheckGoroutines(r)
	stop := make(chan struct{})
	go func() { <-stop }()
	r.finish()
	close(stop)
	if len(r.errors) != 1 || !strings.Contains(r.errors[0], "leaked") {
		t.Fatalf("leak not reported: %q", r.errors)
	}
}

func TestCheckGoroutinesQuietWhenClean(t *testing.T) {
	r := &recorder{TB: t}
	CheckGoroutines(r)
	done := make(chan struct{})
	go func() { close(done) }()
	<-done
	r.finish()
	if len(r.errors) != 0 {
		t.Fatalf("false leak report: %q", r.errors)
	}
}
