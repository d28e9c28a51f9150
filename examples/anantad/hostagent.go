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

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/internal/netns"
	"github.com/ananta-go/ananta/manager/agent"
)

func runHostAgentCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("anantad hostagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config, applyCommon := commonFlags(fs)
	id := fs.String("id", "", "agent ID (default: the host name)")
	ifc := fs.String("interface", "", "uplink interface")
	nextHop := fs.String("next-hop", "", "router's MAC address")
	router := fs.String("router", "", "router's address, its MAC taken from the neighbour table")
	hostAddrs := fs.String("host-addrs", "", "host addresses, comma-separated")
	muxPrefixes := fs.String("mux-prefixes", "", "Mux source prefixes, comma-separated")
	managers := fs.String("managers", "", "Manager gRPC addresses, comma-separated")
	var cfg HostAgentConfig
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
			case "router":
				cfg.Router = *router
			case "host-addrs":
				cfg.HostAddrs = splitList(*hostAddrs)
			case "mux-prefixes":
				cfg.MuxPrefixes = splitList(*muxPrefixes)
			case "managers":
				cfg.Managers = splitList(*managers)
			}
		})
	})
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return runHostAgent(cfg, stderr)
}

// engineConfig turns the validated configuration into the Engine's.
func (c HostAgentConfig) engineConfig() hostagent.EngineConfig {
	ec := hostagent.EngineConfig{MaxFlows: c.MaxFlows}
	for _, a := range c.HostAddrs {
		ec.HostAddrs = append(ec.HostAddrs, netip.MustParseAddr(a))
	}
	for _, p := range c.MuxPrefixes {
		ec.MuxPrefixes = append(ec.MuxPrefixes, netip.MustParsePrefix(p))
	}
	return ec
}

func (c HostAgentConfig) vmConfigs() []hostagent.VMConfig {
	var vms []hostagent.VMConfig
	for _, vm := range c.VMs {
		v := hostagent.VMConfig{Name: vm.Name, TUN: vm.TUN, NetNS: vm.NetNS}
		for _, d := range vm.DIPs {
			v.DIPs = append(v.DIPs, netip.MustParseAddr(d))
		}
		vms = append(vms, v)
	}
	return vms
}

// setupTUN assigns the VM's DIPs to its TUN device, brings it up and makes
// it the VM's default route.
func setupTUN(vm VMConfig) error {
	do := func(fn func() error) error { return fn() }
	if vm.NetNS != "" {
		do = func(fn func() error) error { return netns.Do(vm.NetNS, fn) }
	}
	return do(func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		link, err := h.LinkByName(vm.TUN)
		if err != nil {
			return err
		}
		for _, d := range vm.DIPs {
			a := netip.MustParseAddr(d)
			p := netip.PrefixFrom(a, a.BitLen())
			if err := h.AddrReplace(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}}); err != nil {
				return fmt.Errorf("address %s: %w", d, err)
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
		for _, d := range vm.DIPs {
			a := netip.MustParseAddr(d)
			dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if a.Is6() {
				dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			if err := h.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("default route: %w", err)
			}
		}
		return nil
	})
}

// managerConn is one gRPC connection to the Managers, moving between
// them (pick_first over every address).
func managerConn(addrs []string) (*grpc.ClientConn, error) {
	r := manual.NewBuilderWithScheme("anantad")
	var st resolver.State
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(st)
	return grpc.NewClient(r.Scheme()+":///managers", grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func runHostAgent(cfg HostAgentConfig, stderr io.Writer) (err error) {
	lg := newLogger(cfg.Common, stderr).With("role", "hostagent")
	if cfg.ID == "" {
		if cfg.ID, err = os.Hostname(); err != nil {
			return fmt.Errorf("id: %w", err)
		}
	}
	conn, err := managerConn(cfg.Managers)
	if err != nil {
		return fmt.Errorf("managers: %w", err)
	}
	defer conn.Close()
	uc := hostagent.UplinkConfig{Interface: cfg.Interface}
	if cfg.NextHop != "" {
		uc.NextHop, _ = net.ParseMAC(cfg.NextHop)
	} else {
		uc.Router = netip.MustParseAddr(cfg.Router)
	}
	up, err := hostagent.OpenUplink(uc)
	if err != nil {
		return fmt.Errorf("interface: %w", err)
	}
	a, err := hostagent.New(hostagent.Config{
		Engine: cfg.engineConfig(), Uplink: up, VMs: cfg.vmConfigs(),
		Allocator: agent.NewSNATClient(conn), Health: agent.NewHealthClient(conn, cfg.ID),
		Logger: lg,
	})
	if err != nil {
		up.Close()
		return err
	}
	defer func() {
		if cerr := a.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}()
	for i, vm := range cfg.VMs {
		if vm.Setup {
			if err := setupTUN(vm); err != nil {
				return fmt.Errorf("vms[%d]: setup: %w", i, err)
			}
		}
	}
	stopMetrics, err := serveMetrics(cfg.Metrics, a, lg)
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
	wg.Go(func() { runDone <- a.Run(runCtx) })

	w, err := agent.New(agent.Config{
		Addrs: cfg.Managers, ID: cfg.ID, Kind: agent.KindHostAgent, Address: cfg.HostAddrs[0],
		Target: agent.HostAgentTarget(a), Logger: lg.With("component", "agent"),
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
	lg.Info("hostagent started", "id", cfg.ID, "interface", cfg.Interface, "vms", len(cfg.VMs), "managers", cfg.Managers)
	select {
	case err := <-runDone:
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("run: %w", err)
	case <-sigCtx.Done():
	}
	lg.Info("stopping")
	stopRun()
	w.Close()
	if err := <-runDone; err != nil {
		lg.Warn("hostagent: Run", "err", err)
	}
	lg.Info("hostagent stopped")
	return nil
}
