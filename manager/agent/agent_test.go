package agent

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
)

// recorder is a Target that logs the calls it gets.
type recorder struct{ calls []string }

func (r *recorder) SetVIP(c ananta.VIPConfig) error {
	r.calls = append(r.calls, "set "+c.VIP.String())
	return nil
}
func (r *recorder) DeleteVIP(v netip.Addr) error {
	r.calls = append(r.calls, "delete "+v.String())
	return nil
}
func (r *recorder) SetSNATRanges(v netip.Addr, rs []SNATRange) error {
	s := "snat " + v.String()
	for _, x := range rs {
		s += " " + x.Range.String()
	}
	r.calls = append(r.calls, s)
	return nil
}
func (r *recorder) SetBackendState(v, d netip.Addr, p uint16, st ananta.BackendState) error {
	r.calls = append(r.calls, "state "+d.String()+" "+st.String())
	return nil
}

func vip(addr string) *api.VIP {
	return &api.VIP{Config: &api.VIPConfig{Vip: addr, Tenant: "t", Endpoints: []*api.Endpoint{{
		Protocol: api.Protocol_PROTOCOL_TCP, Port: 80,
		Backends: []*api.Backend{{Dip: "10.0.0.1", Host: "198.18.0.1", Weight: 1}},
	}}}}
}

func rng(v string, first uint32) *api.SNATRange {
	return &api.SNATRange{Vip: v, Range: &api.PortRange{First: first, Last: first + 7}, Dip: "10.0.0.1", Host: "198.18.0.1"}
}

func TestValidate(t *testing.T) {
	good := Config{Addrs: []string{"127.0.0.1:1"}, ID: "a", Kind: KindMux, Target: &recorder{}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Config{
		{ID: "a", Kind: KindMux, Target: &recorder{}},
		{Addrs: []string{"x:1"}, Kind: KindMux, Target: &recorder{}},
		{Addrs: []string{"x:1"}, ID: "a", Target: &recorder{}},
		{Addrs: []string{"x:1"}, ID: "a", Kind: KindHostAgent},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", bad, err)
		}
	}
}

func TestApplySnapshotAndChanges(t *testing.T) {
	r := &recorder{}
	c, err := New(Config{Addrs: []string{"127.0.0.1:1"}, ID: "a", Kind: KindMux, Target: r})
	if err != nil {
		t.Fatal(err)
	}
	parts := make(map[uint64][]*api.Snapshot)
	// A snapshot in two parts: applied only with the last one.
	if err := c.handle(&api.WatchResponse{Shard: 1, Snapshot: &api.Snapshot{Version: 5, First: true, Vips: []*api.VIP{vip("198.19.0.1"), vip("198.19.0.2")}}}, parts); err != nil {
		t.Fatal(err)
	}
	if len(r.calls) != 0 {
		t.Fatalf("applied a partial snapshot: %v", r.calls)
	}
	if err := c.handle(&api.WatchResponse{Shard: 1, Snapshot: &api.Snapshot{Version: 5, Last: true, Snat: []*api.SNATRange{rng("198.19.0.1", 1024)}}}, parts); err != nil {
		t.Fatal(err)
	}
	if c.Versions()[1] != 5 {
		t.Fatalf("versions %v", c.Versions())
	}
	// Increments in order.
	err = c.handle(&api.WatchResponse{Shard: 1, Changes: []*api.Change{
		{Version: 6, Change: &api.Change_SnatAdded{SnatAdded: rng("198.19.0.1", 2048)}},
		{Version: 7, Change: &api.Change_BackendState{BackendState: &api.BackendStateChange{Vip: "198.19.0.1", Dip: "10.0.0.1", State: api.BackendState_BACKEND_STATE_DOWN}}},
	}}, parts)
	if err != nil {
		t.Fatal(err)
	}
	// A gap is an error and changes nothing.
	err = c.handle(&api.WatchResponse{Shard: 1, Changes: []*api.Change{{Version: 9, Change: &api.Change_VipDeleted{VipDeleted: "198.19.0.1"}}}}, parts)
	if !errors.Is(err, ErrGap) || c.Versions()[1] != 7 {
		t.Fatalf("gap: %v, versions %v", err, c.Versions())
	}
	// A later snapshot without 198.19.0.2 deletes it and empties the SNAT
	// ranges of 198.19.0.1.
	err = c.handle(&api.WatchResponse{Shard: 1, Snapshot: &api.Snapshot{Version: 20, First: true, Last: true, Vips: []*api.VIP{vip("198.19.0.1")}}}, parts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"set 198.19.0.1", "set 198.19.0.2", "snat 198.19.0.1 1024-1031",
		"state 10.0.0.1 down", "snat 198.19.0.1 1024-1031 2048-2055", // ranges once per message
		"set 198.19.0.1", "delete 198.19.0.2", "snat 198.19.0.1",
	}
	if len(r.calls) != len(want) {
		t.Fatalf("calls\n%q\nwant\n%q", r.calls, want)
	}
	for i := range want {
		if r.calls[i] != want[i] {
			t.Fatalf("call %d: %q, want %q (all: %q)", i, r.calls[i], want[i], r.calls)
		}
	}
}
