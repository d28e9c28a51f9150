package manager

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
)

// fullConfig uses every field of the configuration model.
func fullConfig() ananta.VIPConfig {
	probe := ananta.HealthProbe{Kind: ananta.ProbeHTTP, Port: 8081, Path: "/healthz", ExpectStatus: 204, Interval: 2 * time.Second, Timeout: time.Second, Rise: 3, Fall: 4}
	return ananta.VIPConfig{
		VIP:         ananta.Endpoint{}.VIP,
		Tenant:      "contoso",
		IdleTimeout: 10 * time.Minute,
		SNAT:        ananta.SNATConfig{Enabled: true, PortsPerDIP: 256, Reserved: []ananta.PortRange{{First: 1024, Last: 2047}}},
		Probe:       ananta.HealthProbe{Kind: ananta.ProbeTCP, Interval: time.Second},
		Endpoints: []ananta.EndpointConfig{
			{
				Protocol: ananta.ProtocolTCP, Port: 443, IdleTimeout: time.Minute, FloatingIP: true, TCPResetOnIdle: true,
				Backends: []ananta.Backend{
					{DIP: mustAddr("10.0.0.1"), Port: 8443, Host: mustAddr("198.18.0.1"), Weight: 3},
					{DIP: mustAddr("10.0.0.2"), Port: 8443, Host: mustAddr("2001:db8::2"), Weight: 1, State: ananta.BackendDraining},
				},
				ACL:   []ananta.ACLRule{{Action: ananta.ACLDeny, Source: mustPrefix("198.51.100.0/24"), SourcePorts: ananta.PortRange{First: 1, Last: 1023}}, {Source: mustPrefix("0.0.0.0/0")}},
				Probe: &probe,
			},
			{Protocol: ananta.ProtocolAny, Backends: []ananta.Backend{{DIP: mustAddr("10.0.0.3"), Host: mustAddr("198.18.0.3"), Weight: 1}}, Probe: &ananta.HealthProbe{}},
		},
	}
}

func TestConvertRoundTrip(t *testing.T) {
	c := fullConfig()
	c.VIP = mustAddr("198.19.0.9")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	pb := VIPConfigToProto(&c)
	back, err := VIPConfigFromProto(pb)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(VIPConfigToProto(&back), pb) {
		t.Fatalf("round trip changed the configuration:\n%v\n%v", pb, VIPConfigToProto(&back))
	}
	b1, _ := proto.MarshalOptions{Deterministic: true}.Marshal(pb)
	b2, _ := proto.MarshalOptions{Deterministic: true}.Marshal(VIPConfigToProto(&back))
	if !bytes.Equal(b1, b2) {
		t.Fatal("round trip is not canonical")
	}
	if back.Endpoints[0].Probe == nil || *back.Endpoints[0].Probe != *c.Endpoints[0].Probe || back.Endpoints[1].Probe == nil {
		t.Fatalf("probes: %+v", back.Endpoints)
	}
}

// FuzzApply: no bytes make Apply panic, and a command that fails or is
// rejected leaves the state as it was.
func FuzzApply(f *testing.F) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	c := fullConfig()
	c.VIP = mustAddr("198.19.0.9")
	f.Add(marshal(&api.Command{Now: now, Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: VIPConfigToProto(&c), Create: true, Ttl: int64(time.Minute)}}}))
	f.Add(marshal(&api.Command{Now: now, Op: &api.Command_Allocate{Allocate: &api.AllocateCommand{Ttl: int64(time.Minute), Items: []*api.AllocateItem{{Vip: []byte{198, 19, 0, 1}, Dip: []byte{10, 0, 0, 1}, Host: []byte{198, 18, 0, 1}, Size: 8}}}}}))
	f.Add(marshal(&api.Command{Now: now, Op: &api.Command_Release{Release: &api.ReleaseCommand{Vip: []byte{198, 19, 0, 1}, Ranges: []*api.PortRange{{First: 1024, Last: 1031}}, Force: true}}}))
	f.Add(marshal(&api.Command{Now: now, Op: &api.Command_Health{Health: &api.HealthCommand{AgentId: "ha", Reports: []*api.HealthReport{{Vip: "198.19.0.1", Dip: "10.0.0.1"}}}}}))
	f.Add(marshal(&api.Command{Now: now, Op: &api.Command_Expire{Expire: &api.ExpireCommand{}}}))
	f.Add([]byte{0x12, 0x03, 0x01, 0x02})
	f.Fuzz(func(t *testing.T, cmd []byte) {
		sm, err := newStateMachine(smConfig{shard: 1, limits: testLimits, logSize: 16})
		if err != nil {
			t.Fatal(err)
		}
		// A state with a SNAT VIP and a lease to act on.
		base := &api.VIPConfig{Vip: "198.19.0.1", Tenant: "t", Snat: &api.SNATConfig{Enabled: true}, Endpoints: []*api.Endpoint{{Protocol: api.Protocol_PROTOCOL_TCP, Port: 80, Backends: []*api.Backend{{Dip: "10.0.0.1", Host: "198.18.0.1", Weight: 1}}}}}
		if _, err := sm.Apply(marshal(&api.Command{Now: now, Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: base, Create: true, Ttl: int64(time.Minute)}}})); err != nil {
			t.Fatal(err)
		}
		var before bytes.Buffer
		if err := sm.Save(&before); err != nil {
			t.Fatal(err)
		}
		out, err := sm.Apply(cmd)
		failed := err != nil
		if !failed {
			var r api.Result
			if uerr := proto.Unmarshal(out, &r); uerr != nil {
				t.Fatalf("undecodable result: %v", uerr)
			}
			failed = r.Code != 0 && len(r.Items) == 0
		}
		var after bytes.Buffer
		if err := sm.Save(&after); err != nil {
			t.Fatal(err)
		}
		if failed && !bytes.Equal(before.Bytes(), after.Bytes()) {
			t.Fatal("a failed command changed the state")
		}
		// Whatever happened, the state survives a snapshot.
		fresh, _ := newStateMachine(smConfig{shard: 1, limits: testLimits, logSize: 16})
		if err := fresh.Restore(bytes.NewReader(after.Bytes())); err != nil {
			t.Fatal(err)
		}
		var again bytes.Buffer
		fresh.Save(&again)
		if !bytes.Equal(after.Bytes(), again.Bytes()) {
			t.Fatal("save/restore/save differs")
		}
	})
}
