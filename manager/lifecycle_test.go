package manager_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/memory"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
)

func TestConfigValidate(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	open := func(f consensus.Factory) (consensus.Node, error) { return memory.New([]uint64{1}, f) }
	good := manager.Config{Listener: lis, Consensus: open}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mod   func(*manager.Config)
		field string
	}{
		{func(c *manager.Config) { c.Listener = nil }, "Listener"},
		{func(c *manager.Config) { c.Consensus = nil }, "Consensus"},
		{func(c *manager.Config) { c.MaxPortsPerDIP = 3 }, "MaxPortsPerDIP"},
		{func(c *manager.Config) { c.LeaseTTL = time.Millisecond }, "LeaseTTL"},
		{func(c *manager.Config) { c.SNATBatchSize = 100000 }, "SNATBatchSize"},
		{func(c *manager.Config) { c.SNATRate = -1 }, "SNATRate"},
		{func(c *manager.Config) { c.DedupWindow = time.Millisecond }, "DedupWindow"},
		{func(c *manager.Config) { c.MaxMessageBytes = 10 }, "MaxMessageBytes"},
	} {
		c := good
		tc.mod(&c)
		err := c.Validate()
		if !errors.Is(err, manager.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want ErrInvalidConfig naming the field", tc.field, err)
		}
		if _, err := manager.New(c); !errors.Is(err, manager.ErrInvalidConfig) {
			t.Errorf("New with a bad %s: %v", tc.field, err)
		}
	}
}

func TestLifecycle(t *testing.T) {
	testutil.CheckGoroutines(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := manager.New(manager.Config{
		Listener:  lis,
		Consensus: func(f consensus.Factory) (consensus.Node, error) { return memory.New([]uint64{1, 2}, f) },
		Logger:    quietLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, 10*time.Second, "the server", func() bool {
		c, err := net.Dial("tcp", lis.Addr().String())
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err := m.Run(context.Background()); !errors.Is(err, manager.ErrRunning) {
		t.Fatalf("second Run: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := m.Run(context.Background()); !errors.Is(err, manager.ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
}
