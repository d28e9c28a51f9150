package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
	"github.com/ananta-go/ananta/packetio"
	"github.com/ananta-go/ananta/routing/gobgp"
)

func runMuxCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("anantad mux", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config, applyCommon := commonFlags(fs)
	id := fs.String("id", "", "agent ID (default: the host name)")
	ifc := fs.String("interface", "", "interface to the router")
	nextHop := fs.String("next-hop", "", "router's MAC address")
	nextHopIP := fs.String("next-hop-ip", "", "router's address, its MAC taken from the neighbour table")
	addr4 := fs.String("addr4", "", "the Mux's IPv4 address")
	managers := fs.String("managers", "", "Manager gRPC addresses, comma-separated")
	flowBytes := fs.Int("flow-table-bytes", 0, "flow table size in bytes (default 64 MiB)")
	var cfg MuxConfig
	err := parseArgs(fs, args, config, &cfg, func() {
		applyCommon(&cfg.Common)
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "id":
				cfg.ID = *id
			case "interface":
				cfg.Interface = *ifc
			case "next-hop":
				cfg.NextHop = *nextHop
			case "next-hop-ip":
				cfg.NextHopIP = *nextHopIP
			case "addr4":
				cfg.Addr4 = *addr4
			case "managers":
				cfg.Managers = splitList(*managers)
			case "flow-table-bytes":
				cfg.FlowTableBytes = *flowBytes
			}
		})
	})
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return runMux(cfg, stderr)
}

// muxParts turns the validated configuration into the Mux's Config (without
// Links, Announcer and Logger) and the speaker's (nil without BGP).
func muxParts(cfg MuxConfig) (mux.Config, *gobgp.Config) {
	mc := mux.Config{
		Addr4: netip.MustParseAddr(cfg.Addr4), MTU: cfg.MTU, FlowTableBytes: cfg.FlowTableBytes,
	}
	if cfg.SourcePrefix4 != "" {
		mc.SourcePrefix4 = netip.MustParsePrefix(cfg.SourcePrefix4)
	}
	if cfg.BGP == nil {
		return mc, nil
	}
	sc := &gobgp.Config{ASN: cfg.BGP.ASN, RouterID: netip.MustParseAddr(cfg.BGP.RouterID)}
	for _, p := range cfg.BGP.Peers {
		sc.Peers = append(sc.Peers, gobgp.PeerConfig{
			Address: netip.MustParseAddr(p.Address), ASN: p.ASN, Port: p.Port,
			Password: p.Password, MultihopTTL: p.MultihopTTL, HoldTime: p.HoldTime,
		})
	}
	return mc, sc
}

func runMux(cfg MuxConfig, stderr io.Writer) (err error) {
	lg := newLogger(cfg.Common, stderr).With("role", "mux")
	if cfg.ID == "" {
		if cfg.ID, err = os.Hostname(); err != nil {
			return fmt.Errorf("id: %w", err)
		}
	}
	mc, sc := muxParts(cfg)
	if err := mc.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var nextHop net.HardwareAddr
	if cfg.NextHop != "" {
		nextHop, _ = net.ParseMAC(cfg.NextHop)
	} else if nextHop, err = packetio.LookupNeighbor(cfg.Interface, netip.MustParseAddr(cfg.NextHopIP)); err != nil {
		return fmt.Errorf("next_hop_ip: %w", err)
	}
	var sp *gobgp.Speaker
	if sc != nil {
		sc.Logger = lg.With("component", "bgp")
		if sp, err = gobgp.New(*sc); err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		mc.Announcer = sp
	}
	port, err := packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: cfg.Interface, Headroom: mux.Headroom, NextHop: nextHop})
	if err != nil {
		if sp != nil {
			sp.Close()
		}
		return fmt.Errorf("interface: %w", err)
	}
	// The Mux owns the port and the speaker: its Close closes both.
	mc.Links = []mux.Link{{In: port}}
	mc.Logger = lg
	m, err := mux.New(mc)
	if err != nil {
		port.Close()
		if sp != nil {
			sp.Close()
		}
		return err
	}
	defer func() {
		if cerr := m.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}()
	stopMetrics, err := serveMetrics(cfg.Metrics, m, lg)
	if err != nil {
		return err
	}
	defer stopMetrics()

	sigCtx, stopSignals := signalContext()
	defer stopSignals()
	runCtx, stopRun := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopRun()
	runDone := make(chan error, 1)
	wg.Go(func() { runDone <- m.Run(runCtx) })

	syncShards := max(cfg.SyncShards, 1)
	applied := make(chan struct{}, 1)
	w, err := agent.New(agent.Config{
		Addrs: cfg.Managers, ID: cfg.ID, Kind: agent.KindMux, Address: cfg.Addr4,
		Target: agent.MuxTarget(m), Logger: lg.With("component", "agent"),
		OnApplied: func(uint64, uint64) {
			select {
			case applied <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return err
	}
	defer w.Close()
	wg.Go(func() {
		if err := w.Run(runCtx); err != nil && runCtx.Err() == nil {
			lg.Error("agent: Run", "err", err)
		}
	})
	lg.Info("mux started", "id", cfg.ID, "interface", cfg.Interface, "addr4", cfg.Addr4, "managers", cfg.Managers)

	synced := false
	for {
		select {
		case <-applied:
			if !synced && len(w.Versions()) >= syncShards {
				synced = true
				m.SetSynced(true)
				lg.Info("mux synced with the Manager", "shards", len(w.Versions()))
			}
			continue
		case err := <-runDone:
			if err == nil {
				err = errors.New("stopped")
			}
			return fmt.Errorf("run: %w", err)
		case <-sigCtx.Done():
		}
		break
	}
	settle, timeout := cfg.DrainSettle, cfg.DrainTimeout
	if settle == 0 {
		settle = 2 * time.Second
	}
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	lg.Info("draining", "settle", settle, "timeout", timeout)
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	derr := m.Drain(dctx, settle)
	cancel()
	if derr != nil {
		lg.Warn("drain incomplete", "err", derr)
	}
	stopRun()
	w.Close()
	if err := <-runDone; err != nil {
		lg.Warn("mux: Run", "err", err)
	}
	lg.Info("mux stopped")
	return nil
}
