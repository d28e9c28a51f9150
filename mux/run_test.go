package mux

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
)

// TestRun: the worker loop over in-memory ports forwards to Out, answers
// on Reply, drops the rest, and stops with its context.
func TestRun(t *testing.T) {
	testutil.CheckGoroutines(t)
	in, inPeer, err := packetio.Pipe(packetio.MemConfig{Headroom: Headroom})
	if err != nil {
		t.Fatal(err)
	}
	out, outPeer, err := packetio.Pipe(packetio.MemConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inPeer.Close(); outPeer.Close() })
	m := newMux(t, testConfig(func(c *Config) {
		c.Links = []Link{{In: in, Out: out}}
		c.BatchSize = 8
	}))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	testutil.WaitFor(t, 5*time.Second, "Run to start", m.running.Load)
	if err := m.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run: %v", err)
	}

	const n = 100
	for i := range n {
		if err := inPeer.WritePacket(tcp4(client, uint16(1000+i), vip4, 80, encap.TCPFlagSYN)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 { // not a VIP: dropped
			if err := inPeer.WritePacket(tcp4(client, 1, host4(1), 80, 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	for i := range n {
		p, err := outPeer.ReadPacket(rctx)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		var pp encap.Packet
		if err := encap.Parse(p, &pp); err != nil || !pp.Encapsulated || pp.Inner.DstPort != 80 {
			t.Fatalf("packet %d: %v %+v", i, err, pp.Inner)
		}
	}
	// Too big: the answer comes back on In (Reply is nil).
	big := pktSpec{src: client, dst: vip4, sport: 7, dport: 80, proto: ananta.ProtocolTCP, payload: 1500}.build()
	if err := inPeer.WritePacket(big); err != nil {
		t.Fatal(err)
	}
	reply, err := inPeer.ReadPacket(rctx)
	if err != nil {
		t.Fatal(err)
	}
	var rp encap.Packet
	if err := encap.Parse(reply, &rp); err != nil || !rp.ICMPError || rp.Tuple.Dst != client {
		t.Fatalf("reply %v %+v", err, rp.Tuple)
	}
	testutil.WaitFor(t, 5*time.Second, "drops to be counted", func() bool { return m.Stats().Drops[DropNoVIP] == n/10 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := in.WritePacket(big); !errors.Is(err, packetio.ErrClosed) {
		t.Errorf("Run left its port open: %v", err)
	}
	m.Close()
	if err := m.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close: %v", err)
	}
}

// TestRunPortFailure: a port closed under a running Mux ends Run with an
// error; Close ends Run with nil.
func TestRunPortFailure(t *testing.T) {
	testutil.CheckGoroutines(t)
	in, peer, err := packetio.Pipe(packetio.MemConfig{Headroom: Headroom})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	m := newMux(t, testConfig(func(c *Config) { c.Links = []Link{{In: in}} }))
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "Run to start", m.running.Load)
	in.Close()
	select {
	case err := <-done:
		if !errors.Is(err, packetio.ErrClosed) {
			t.Errorf("Run after its port closed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}

	in2, peer2, _ := packetio.Pipe(packetio.MemConfig{Headroom: Headroom})
	defer peer2.Close()
	m2 := newMux(t, testConfig(func(c *Config) { c.Links = []Link{{In: in2}} }))
	go func() { done <- m2.Run(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "Run to start", m2.running.Load)
	m2.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}
