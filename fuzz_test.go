package ananta

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzVIPConfigJSON decodes arbitrary JSON into a VIPConfig and validates
// it: neither may panic, and a config that validates survives a JSON round
// trip unchanged and still validates.
func FuzzVIPConfigJSON(f *testing.F) {
	good := validVIP()
	b, err := json.Marshal(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"vip":"2001:db8::1","tenant":"t","endpoints":[{"protocol":"any","backends":[{"dip":"2001:db8::2","host":"198.18.0.1","weight":1}]}]}`))
	f.Add([]byte(`{"vip":"198.19.0.1","tenant":"t","snat":{"enabled":true,"ports_per_dip":64,"reserved":[{"first":1,"last":65535}]}}`))
	f.Add([]byte(`{"endpoints":[{"protocol":"sctp"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c VIPConfig
		if json.Unmarshal(data, &c) != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal of a valid config: %v", err)
		}
		var d VIPConfig
		if err := json.Unmarshal(out, &d); err != nil {
			t.Fatalf("unmarshal of our own output %s: %v", out, err)
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("round trip made a valid config invalid: %v", err)
		}
		if !reflect.DeepEqual(normalize(c), normalize(d)) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, d)
		}
	})
}

// normalize maps empty slices to nil, which JSON does not tell apart.
func normalize(c VIPConfig) VIPConfig {
	c = c.Clone()
	if len(c.SNAT.Reserved) == 0 {
		c.SNAT.Reserved = nil
	}
	if len(c.Endpoints) == 0 {
		c.Endpoints = nil
	}
	for i := range c.Endpoints {
		if len(c.Endpoints[i].ACL) == 0 {
			c.Endpoints[i].ACL = nil
		}
	}
	return c
}
