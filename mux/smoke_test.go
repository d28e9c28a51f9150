package mux

import (
	"testing"

	"github.com/ananta-go/ananta/encap"
)

func TestSmoke(t *testing.T) {
	m := newMux(t, testConfig(nil))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 4)))
	r := process(m, tcp4(client, 40000, vip4, 80, encap.TCPFlagSYN))
	if r.v != verdictForward {
		t.Fatalf("verdict %v", r.v)
	}
	t.Logf("outer %s -> %s, %d bytes", r.src, r.outer, len(r.out))
	st := m.Stats()
	t.Logf("%+v", st.Flows)
}
