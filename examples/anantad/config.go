package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Common holds the settings every subcommand has.
type Common struct {
	// Metrics is the address /metrics is served on; "" serves none.
	Metrics string `yaml:"metrics"`
	// LogFormat is "text" (default) or "json".
	LogFormat string `yaml:"log_format"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `yaml:"log_level"`
}

func (c Common) validate() error {
	if c.Metrics != "" {
		if err := checkHostPort(c.Metrics); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return fmt.Errorf("log_format: %q is not text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// ManagerConfig configures `anantad manager`.
type ManagerConfig struct {
	Common `yaml:",inline"`
	// Listen is the gRPC API's address.
	Listen string `yaml:"listen"`
	// Single runs one replica with in-memory consensus (no disk, no peers).
	Single bool `yaml:"single"`
	// ReplicaID is this replica's ID among Peers.
	ReplicaID uint64 `yaml:"replica_id"`
	// RaftListen is the address the Raft transport binds; "" means this
	// replica's raft address in Peers.
	RaftListen string `yaml:"raft_listen"`
	// DataDir holds the Raft log and snapshots.
	DataDir string `yaml:"data_dir"`
	// Shards is the number of shards (1..Shards); the same on every replica.
	Shards int `yaml:"shards"`
	// Peers are every replica, this one included.
	Peers []ManagerPeer `yaml:"peers"`
	// RTTMillisecond is the Raft tick; 0 means 100.
	RTTMillisecond uint64 `yaml:"rtt_millisecond"`
	// SpreadLeaders keeps shard leaders spread over the replicas.
	SpreadLeaders bool `yaml:"spread_leaders"`
	// Lightweight runs Dragonboat with a small footprint (tests, many
	// replicas on one machine); a replica must keep the value it was
	// first started with.
	Lightweight bool `yaml:"lightweight"`
}

// ManagerPeer is one replica of the Manager.
type ManagerPeer struct {
	ID   uint64 `yaml:"id"`
	Raft string `yaml:"raft"` // Raft address
	GRPC string `yaml:"grpc"` // gRPC API address
}

const defaultShards = 4

// Validate checks the configuration; its errors name the field.
func (c ManagerConfig) Validate() error {
	if err := c.Common.validate(); err != nil {
		return err
	}
	if c.Listen == "" {
		return errors.New("listen: required")
	}
	if err := checkHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if c.Shards < 0 || c.Shards > 1024 {
		return fmt.Errorf("shards: %d is not in 0..1024", c.Shards)
	}
	if c.Single {
		if len(c.Peers) > 0 {
			return errors.New("peers: not allowed with single")
		}
		return nil
	}
	if c.ReplicaID == 0 {
		return errors.New("replica_id: required (> 0) unless single")
	}
	if c.DataDir == "" {
		return errors.New("data_dir: required unless single")
	}
	if len(c.Peers) == 0 {
		return errors.New("peers: required unless single")
	}
	seen := make(map[uint64]bool)
	self := false
	for i, p := range c.Peers {
		if p.ID == 0 {
			return fmt.Errorf("peers[%d].id: required (> 0)", i)
		}
		if seen[p.ID] {
			return fmt.Errorf("peers[%d].id: duplicate %d", i, p.ID)
		}
		seen[p.ID] = true
		if err := checkHostPort(p.Raft); err != nil {
			return fmt.Errorf("peers[%d].raft: %w", i, err)
		}
		if p.GRPC != "" {
			if err := checkHostPort(p.GRPC); err != nil {
				return fmt.Errorf("peers[%d].grpc: %w", i, err)
			}
		}
		self = self || p.ID == c.ReplicaID
	}
	if !self {
		return fmt.Errorf("replica_id: %d is not among peers", c.ReplicaID)
	}
	if c.RaftListen != "" {
		if err := checkHostPort(c.RaftListen); err != nil {
			return fmt.Errorf("raft_listen: %w", err)
		}
	}
	return nil
}

// shardIDs returns 1..Shards.
func (c ManagerConfig) shardIDs() []uint64 {
	n := c.Shards
	if n == 0 {
		n = defaultShards
	}
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = uint64(i + 1)
	}
	return ids
}

// MuxConfig configures `anantad mux`.
type MuxConfig struct {
	Common `yaml:",inline"`
	// ID names the Mux among the Manager's agents; default the host name.
	ID string `yaml:"id"`
	// Interface is the link to the router.
	Interface string `yaml:"interface"`
	// NextHop is the router's MAC address on Interface; or NextHopIP, an
	// address whose MAC the kernel's neighbour table holds.
	NextHop   string `yaml:"next_hop"`
	NextHopIP string `yaml:"next_hop_ip"`
	// Addr4 is the Mux's address; SourcePrefix4 optionally a prefix of
	// outer source addresses.
	Addr4         string `yaml:"addr4"`
	SourcePrefix4 string `yaml:"source_prefix4"`
	// MTU is the path MTU towards the hosts; 0 means 1500.
	MTU int `yaml:"mtu"`
	// FlowTableBytes is the flow table's size; 0 means 64 MiB.
	FlowTableBytes int `yaml:"flow_table_bytes"`
	// Managers are the Manager replicas' gRPC addresses.
	Managers []string `yaml:"managers"`
	// SyncShards is how many Manager shards the Mux must have received
	// before it announces its VIPs; 0 means 1.
	SyncShards int `yaml:"sync_shards"`
	// DrainSettle is how long without VIP traffic ends the drain on
	// SIGTERM; 0 means 2 s. DrainTimeout bounds the drain; 0 means 30 s.
	DrainSettle  time.Duration `yaml:"drain_settle"`
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// BGP configures the speaker that announces the VIPs; without it
	// the Mux announces nothing.
	BGP *BGPConfig `yaml:"bgp"`
}

// BGPConfig configures the Mux's BGP speaker.
type BGPConfig struct {
	ASN      uint32    `yaml:"asn"`
	RouterID string    `yaml:"router_id"`
	Peers    []BGPPeer `yaml:"peers"`
}

// BGPPeer is one BGP neighbour.
type BGPPeer struct {
	Address     string        `yaml:"address"`
	ASN         uint32        `yaml:"asn"`
	Port        uint16        `yaml:"port"`
	Password    string        `yaml:"password"`
	MultihopTTL uint8         `yaml:"multihop_ttl"`
	HoldTime    time.Duration `yaml:"hold_time"`
}

// Validate checks the configuration; its errors name the field.
func (c MuxConfig) Validate() error {
	if err := c.Common.validate(); err != nil {
		return err
	}
	if c.Interface == "" {
		return errors.New("interface: required")
	}
	switch {
	case c.NextHop != "" && c.NextHopIP != "":
		return errors.New("next_hop: not allowed with next_hop_ip")
	case c.NextHop != "":
		if _, err := net.ParseMAC(c.NextHop); err != nil {
			return fmt.Errorf("next_hop: %w", err)
		}
	case c.NextHopIP != "":
		if _, err := netip.ParseAddr(c.NextHopIP); err != nil {
			return fmt.Errorf("next_hop_ip: %w", err)
		}
	default:
		return errors.New("next_hop: required (or next_hop_ip)")
	}
	if c.Addr4 == "" {
		return errors.New("addr4: required")
	}
	if a, err := netip.ParseAddr(c.Addr4); err != nil || !a.Is4() {
		return fmt.Errorf("addr4: %q is not an IPv4 address", c.Addr4)
	}
	if c.SourcePrefix4 != "" {
		if p, err := netip.ParsePrefix(c.SourcePrefix4); err != nil || !p.Addr().Is4() {
			return fmt.Errorf("source_prefix4: %q is not an IPv4 prefix", c.SourcePrefix4)
		}
	}
	if c.MTU < 0 {
		return fmt.Errorf("mtu: %d < 0", c.MTU)
	}
	if c.FlowTableBytes < 0 {
		return fmt.Errorf("flow_table_bytes: %d < 0", c.FlowTableBytes)
	}
	if len(c.Managers) == 0 {
		return errors.New("managers: required")
	}
	for i, a := range c.Managers {
		if err := checkHostPort(a); err != nil {
			return fmt.Errorf("managers[%d]: %w", i, err)
		}
	}
	if c.SyncShards < 0 {
		return fmt.Errorf("sync_shards: %d < 0", c.SyncShards)
	}
	if c.DrainSettle < 0 {
		return fmt.Errorf("drain_settle: %v < 0", c.DrainSettle)
	}
	if c.DrainTimeout < 0 {
		return fmt.Errorf("drain_timeout: %v < 0", c.DrainTimeout)
	}
	if b := c.BGP; b != nil {
		if b.ASN == 0 {
			return errors.New("bgp.asn: required")
		}
		if a, err := netip.ParseAddr(b.RouterID); err != nil || !a.Is4() {
			return fmt.Errorf("bgp.router_id: %q is not an IPv4 address", b.RouterID)
		}
		if len(b.Peers) == 0 {
			return errors.New("bgp.peers: required")
		}
		for i, p := range b.Peers {
			if _, err := netip.ParseAddr(p.Address); err != nil {
				return fmt.Errorf("bgp.peers[%d].address: %q is not an address", i, p.Address)
			}
			if p.ASN == 0 {
				return fmt.Errorf("bgp.peers[%d].asn: required", i)
			}
			if p.HoldTime != 0 && p.HoldTime < 3*time.Second {
				return fmt.Errorf("bgp.peers[%d].hold_time: %v < 3s", i, p.HoldTime)
			}
		}
	}
	return nil
}

// checkHostPort accepts host:port with a numeric port.
func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("%q: bad port", s)
	}
	return nil
}

// loadYAML decodes the file at path into v, rejecting unknown keys. An
// empty path leaves v as it is.
func loadYAML(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return decodeYAML(b, v)
}

func decodeYAML(b []byte, v any) error {
	d := yaml.NewDecoder(bytes.NewReader(b))
	d.KnownFields(true)
	if err := d.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("yaml: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return nil
}

// HostAgentConfig configures `anantad hostagent`.
type HostAgentConfig struct {
	Common `yaml:",inline"`
	// ID names the Host Agent among the Manager's agents; default the host
	// name.
	ID string `yaml:"id"`
	// Interface is the uplink towards the router; NextHop the router's MAC
	// on it, or Router its address looked up in the neighbour table.
	Interface string `yaml:"interface"`
	NextHop   string `yaml:"next_hop"`
	Router    string `yaml:"router"`
	// HostAddrs are the host's addresses (the tunnels' outer destinations).
	HostAddrs []string `yaml:"host_addrs"`
	// MuxPrefixes are the outer sources tunnel packets are accepted from.
	MuxPrefixes []string `yaml:"mux_prefixes"`
	// MaxFlows bounds the connection table; 0 means the default.
	MaxFlows int `yaml:"max_flows"`
	// Managers are the Manager replicas' gRPC addresses.
	Managers []string `yaml:"managers"`
	// VMs are the local VMs.
	VMs []VMConfig `yaml:"vms"`
}

// VMConfig is one local VM.
type VMConfig struct {
	Name string   `yaml:"name"`
	DIPs []string `yaml:"dips"`
	// TUN is the device created in NetNS (a path such as
	// /var/run/netns/vm1; "" is the agent's own namespace).
	TUN   string `yaml:"tun"`
	NetNS string `yaml:"netns"`
	// Setup assigns the DIPs to the TUN device, brings it up and routes
	// everything through it (the VM's default route).
	Setup bool `yaml:"setup"`
}

// Validate checks the configuration; its errors name the field.
func (c HostAgentConfig) Validate() error {
	if err := c.Common.validate(); err != nil {
		return err
	}
	if c.Interface == "" {
		return errors.New("interface: required")
	}
	switch {
	case c.NextHop != "" && c.Router != "":
		return errors.New("next_hop: not allowed with router")
	case c.NextHop != "":
		if _, err := net.ParseMAC(c.NextHop); err != nil {
			return fmt.Errorf("next_hop: %w", err)
		}
	case c.Router != "":
		if _, err := netip.ParseAddr(c.Router); err != nil {
			return fmt.Errorf("router: %w", err)
		}
	default:
		return errors.New("next_hop: required (or router)")
	}
	if len(c.HostAddrs) == 0 {
		return errors.New("host_addrs: required")
	}
	for i, a := range c.HostAddrs {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("host_addrs[%d]: %q is not an address", i, a)
		}
	}
	if len(c.MuxPrefixes) == 0 {
		return errors.New("mux_prefixes: required")
	}
	for i, p := range c.MuxPrefixes {
		if _, err := netip.ParsePrefix(p); err != nil {
			return fmt.Errorf("mux_prefixes[%d]: %q is not a prefix", i, p)
		}
	}
	if c.MaxFlows < 0 {
		return fmt.Errorf("max_flows: %d < 0", c.MaxFlows)
	}
	if len(c.Managers) == 0 {
		return errors.New("managers: required")
	}
	for i, a := range c.Managers {
		if err := checkHostPort(a); err != nil {
			return fmt.Errorf("managers[%d]: %w", i, err)
		}
	}
	names := make(map[string]bool)
	for i, vm := range c.VMs {
		if vm.Name == "" {
			return fmt.Errorf("vms[%d].name: required", i)
		}
		if names[vm.Name] {
			return fmt.Errorf("vms[%d].name: duplicate %q", i, vm.Name)
		}
		names[vm.Name] = true
		if len(vm.DIPs) == 0 {
			return fmt.Errorf("vms[%d].dips: required", i)
		}
		for j, d := range vm.DIPs {
			if _, err := netip.ParseAddr(d); err != nil {
				return fmt.Errorf("vms[%d].dips[%d]: %q is not an address", i, j, d)
			}
		}
		if vm.TUN == "" || len(vm.TUN) > 15 {
			return fmt.Errorf("vms[%d].tun: %q must be 1 to 15 characters", i, vm.TUN)
		}
	}
	return nil
}
