package netns_test

import (
	"net"
	"testing"

	"github.com/ananta-go/ananta/internal/netns"
	"github.com/ananta-go/ananta/internal/testutil"
)

func TestDo(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetNS(t)
	ns.Run(t, "ip", "addr", "add", "198.18.77.1/32", "dev", "lo")
	// A socket made inside belongs to the namespace: the address exists
	// only there.
	var ln net.Listener
	if err := netns.Do(ns.Path(), func() (err error) {
		ln, err = net.Listen("tcp4", "198.18.77.1:0")
		return err
	}); err != nil {
		t.Fatalf("listen inside: %v", err)
	}
	ln.Close()
	if l, err := net.Listen("tcp4", "198.18.77.1:0"); err == nil {
		l.Close()
		t.Fatal("the address is usable outside the namespace: Do did not switch")
	}
	// An empty path runs in place.
	var here int
	if err := netns.Do("", func() error { here = 1; return nil }); err != nil || here != 1 {
		t.Fatalf("Do(\"\"): %v", err)
	}
	if err := netns.Do("/nonexistent/ns", func() error { return nil }); err == nil {
		t.Fatal("Do with a missing namespace succeeded")
	}
}
