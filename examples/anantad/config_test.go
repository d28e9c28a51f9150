package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestManagerConfigFile(t *testing.T) {
	var c ManagerConfig
	if err := loadYAML("testdata/manager.yaml", &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.ReplicaID != 2 || len(c.Peers) != 3 || c.Peers[2].Raft != "198.18.0.3:7100" || c.LogFormat != "json" || len(c.shardIDs()) != 8 {
		t.Errorf("decoded %+v", c)
	}
}

func TestMuxConfigFile(t *testing.T) {
	var c MuxConfig
	if err := loadYAML("testdata/mux.yaml", &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.DrainSettle != time.Second || c.BGP == nil || c.BGP.Peers[0].HoldTime != 9*time.Second || len(c.Managers) != 2 {
		t.Errorf("decoded %+v", c)
	}
	mc, sc := muxParts(c)
	if err := mc.Validate(); err != nil {
		t.Errorf("mux.Config: %v", err)
	}
	if err := sc.Validate(); err != nil {
		t.Errorf("gobgp.Config: %v", err)
	}
}

// checkConfigs decodes base with edit applied and validates it through
// validate; want "" expects success, otherwise an error containing want.
func checkConfig(t *testing.T, base, edit, want string, validate func([]byte) error) {
	t.Helper()
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	y := string(b)
	if edit != "" {
		old, repl, _ := strings.Cut(edit, "=>")
		if !strings.Contains(y, old) {
			t.Fatalf("%q not in %s", old, base)
		}
		y = strings.Replace(y, old, repl, 1)
	}
	err = validate([]byte(y))
	switch {
	case want == "" && err != nil:
		t.Errorf("error %v, want none", err)
	case want != "" && err == nil:
		t.Errorf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("error %q, want one containing %q", err, want)
	}
}

func TestManagerConfigErrors(t *testing.T) {
	validate := func(b []byte) error {
		var c ManagerConfig
		if err := decodeYAML(b, &c); err != nil {
			return err
		}
		return c.Validate()
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"good", "", ""},
		{"unknown key", "shards: 8=>shard: 8", "field shard not found"},
		{"bad listen", "listen: 198.18.0.1:7000=>listen: 198.18.0.1", "listen:"},
		{"bad listen port", "listen: 198.18.0.1:7000=>listen: 198.18.0.1:99999", "listen:"},
		{"bad peer raft", "raft: 198.18.0.3:7100=>raft: nowhere", "peers[2].raft:"},
		{"bad peer grpc", "grpc: 198.18.0.2:7000=>grpc: x", "peers[1].grpc:"},
		{"duplicate peer", "id: 3,=>id: 2,", "peers[2].id: duplicate"},
		{"self not a peer", "replica_id: 2=>replica_id: 9", "replica_id:"},
		{"no data dir", "data_dir: /var/lib/ananta/raft=>data_dir: \"\"", "data_dir:"},
		{"bad metrics", "metrics: 127.0.0.1:9100=>metrics: 127.0.0.1", "metrics:"},
		{"bad log format", "log_format: json=>log_format: xml", "log_format:"},
		{"bad log level", "log_level: debug=>log_level: loud", "log_level:"},
		{"wrong type", "shards: 8=>shards: many", "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkConfig(t, "testdata/manager.yaml", tc.edit, tc.want, validate)
		})
	}
	if err := (ManagerConfig{Listen: "127.0.0.1:0", Single: true}).Validate(); err != nil {
		t.Errorf("single: %v", err)
	}
	if err := (ManagerConfig{Single: true}).Validate(); err == nil || !strings.HasPrefix(err.Error(), "listen:") {
		t.Errorf("single without listen: %v", err)
	}
}

func TestMuxConfigErrors(t *testing.T) {
	validate := func(b []byte) error {
		var c MuxConfig
		if err := decodeYAML(b, &c); err != nil {
			return err
		}
		return c.Validate()
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"good", "", ""},
		{"unknown key", "mtu: 1500=>mtus: 1500", "field mtus not found"},
		{"unknown nested key", "hold_time: 9s=>holdtime: 9s", "field holdtime not found"},
		{"bad addr4", "addr4: 198.18.0.2=>addr4: 198.18.0.300", "addr4:"},
		{"ipv6 addr4", "addr4: 198.18.0.2=>addr4: \"2001:db8::1\"", "addr4:"},
		{"bad next hop", "next_hop: 02:00:c6:12:00:01=>next_hop: 02:00", "next_hop:"},
		{"both next hops", "next_hop: 02:00:c6:12:00:01=>next_hop: 02:00:c6:12:00:01\nnext_hop_ip: 198.18.0.1", "next_hop:"},
		{"next hop ip", "next_hop: 02:00:c6:12:00:01=>next_hop_ip: 198.18.0.1", ""},
		{"bad next hop ip", "next_hop: 02:00:c6:12:00:01=>next_hop_ip: 198.18.0", "next_hop_ip:"},
		{"bad prefix", "source_prefix4: 198.18.128.0/24=>source_prefix4: 198.18.128.0", "source_prefix4:"},
		{"bad manager", "198.18.0.3:7000]=>198.18.0.3]", "managers[1]:"},
		{"no interface", "interface: eth0=>interface: \"\"", "interface:"},
		{"bad router id", "router_id: 198.18.0.2=>router_id: x", "bgp.router_id:"},
		{"bad bgp peer", "address: 198.18.0.1=>address: 198.18.0.1.1", "bgp.peers[0].address:"},
		{"bgp peer asn", "asn: 65000=>asn: 0", "bgp.peers[0].asn:"},
		{"short hold time", "hold_time: 9s=>hold_time: 1s", "bgp.peers[0].hold_time:"},
		{"bad duration", "drain_settle: 1s=>drain_settle: soon", "cannot unmarshal"},
		{"negative flow table", "flow_table_bytes: 4194304=>flow_table_bytes: -1", "flow_table_bytes:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkConfig(t, "testdata/mux.yaml", tc.edit, tc.want, validate)
		})
	}
}

// TestFlagsOverrideFile: a flag set on the command line wins over the file,
// and the resulting configuration is validated (exit status 2 naming the
// field).
func TestFlagsOverrideFile(t *testing.T) {
	var out strings.Builder
	if code := run([]string{"manager", "--config", "testdata/manager.yaml", "--listen", "nowhere"}, &out); code != 2 || !strings.Contains(out.String(), "listen:") {
		t.Errorf("exit %d, output %q; want 2 naming listen", code, out.String())
	}
	out.Reset()
	if code := run([]string{"mux", "--config", "testdata/mux.yaml", "--addr4", "x"}, &out); code != 2 || !strings.Contains(out.String(), "addr4:") {
		t.Errorf("exit %d, output %q; want 2 naming addr4", code, out.String())
	}
	out.Reset()
	if code := run([]string{"manager", "--config", "testdata/missing.yaml"}, &out); code != 2 {
		t.Errorf("missing file: exit %d, output %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"bogus"}, &out); code != 2 {
		t.Errorf("unknown subcommand: exit %d, output %q", code, out.String())
	}
}

func TestHostAgentConfigFile(t *testing.T) {
	var c HostAgentConfig
	if err := loadYAML("testdata/hostagent.yaml", &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.VMs) != 2 || !c.VMs[0].Setup || len(c.VMs[1].DIPs) != 2 || c.VMs[0].NetNS != "/var/run/netns/vm1" {
		t.Errorf("decoded %+v", c)
	}
	if err := c.engineConfig().Validate(); err != nil {
		t.Errorf("hostagent.EngineConfig: %v", err)
	}
	if vms := c.vmConfigs(); len(vms) != 2 || vms[1].DIPs[1].String() != "198.19.1.3" {
		t.Errorf("VMs %+v", vms)
	}
}

func TestHostAgentConfigErrors(t *testing.T) {
	validate := func(b []byte) error {
		var c HostAgentConfig
		if err := decodeYAML(b, &c); err != nil {
			return err
		}
		return c.Validate()
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"good", "", ""},
		{"unknown key", "max_flows: 100000=>flows: 100000", "field flows not found"},
		{"unknown vm key", "tun: hat-vm2=>tap: hat-vm2", "field tap not found"},
		{"bad host addr", "host_addrs: [198.18.1.2]=>host_addrs: [198.18.1]", "host_addrs[0]:"},
		{"bad mux prefix", "mux_prefixes: [198.18.0.0/24]=>mux_prefixes: [198.18.0.0/40]", "mux_prefixes[0]:"},
		{"router", "next_hop: 02:00:c6:12:00:01=>router: 198.18.1.1", ""},
		{"bad router", "next_hop: 02:00:c6:12:00:01=>router: 198.18.1.", "router:"},
		{"bad manager", "managers: [198.18.0.1:7000]=>managers: [198.18.0.1]", "managers[0]:"},
		{"bad dip", "198.19.1.3]=>198.19.1.333]", "vms[1].dips[1]:"},
		{"duplicate vm", "name: vm2=>name: vm1", "vms[1].name: duplicate"},
		{"long tun", "tun: hat-vm1=>tun: a-very-long-tun-name", "vms[0].tun:"},
		{"no uplink", "interface: eth0=>interface: \"\"", "interface:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkConfig(t, "testdata/hostagent.yaml", tc.edit, tc.want, validate)
		})
	}
}
