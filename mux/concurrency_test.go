package mux

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// TestConcurrentConfig: workers call Process while SetVIP,
// SetBackendState and SetSNATRanges run in a loop. Flows tracked before
// stay on their backends throughout, since the changes only add and drain
// backends and change SNAT ranges; new packets are never dropped; and the
// SNAT port always reaches its host.
func TestConcurrentConfig(t *testing.T) {
	m := newMux(t, testConfig(func(c *Config) { c.FlowTableBytes = 4 << 20 }))
	base := backends4(1, 8)
	mustSetVIP(t, m, simpleVIP(vip4, 80, base))
	if err := m.SetSNATRanges(vip4, []SNATRange{{Range: ananta.PortRange{First: 2000, Last: 2999}, DIP: dip4(50), Host: host4(50)}}); err != nil {
		t.Fatal(err)
	}
	flows := establishFlows(t, m, 4000, 9)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var changes atomic.Int64
	wg.Add(1)
	go func() { // the controller
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			bs := base
			if i%2 == 1 {
				bs = append(backends4(1, 8), backends4(20, 4)...)
			}
			if err := m.SetVIP(simpleVIP(vip4, 80, bs)); err != nil {
				t.Error(err)
				return
			}
			st := ananta.BackendDraining
			if i%3 == 0 {
				st = ananta.BackendActive
			}
			if err := m.SetBackendState(vip4, dip4(1+i%8), 0, st); err != nil {
				t.Error(err)
				return
			}
			r := []SNATRange{{Range: ananta.PortRange{First: 2000, Last: 2999}, DIP: dip4(50), Host: host4(50)}}
			if i%2 == 0 {
				r = append(r, SNATRange{Range: ananta.PortRange{First: 3000, Last: 3999}, DIP: dip4(51), Host: host4(51)})
			}
			if err := m.SetSNATRanges(vip4, r); err != nil {
				t.Error(err)
				return
			}
			changes.Add(1)
		}
	}()
	const workers = 4
	var processed atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256)
			n := 0
			for i := w; ctx.Err() == nil; i += workers {
				f := &flows[i%len(flows)]
				var pkt []byte
				var want netip.Addr
				switch i % 3 {
				case 0, 1: // a tracked flow
					pkt, want = f.pkt(vip4), f.host
				case 2: // SNAT return traffic
					pkt, want = tcp4(f.src, 443, vip4, uint16(2000+i%1000), encap.TCPFlagACK), host4(50)
				}
				copy(buf[Headroom:], pkt)
				v, s, e := m.Process(buf, Headroom, Headroom+len(pkt))
				if v != verdictForward {
					t.Errorf("worker %d: %v", w, v)
					return
				}
				if got := netip.AddrFrom4([4]byte(buf[s+16 : s+20])); got != want || e-s != len(pkt)+20 {
					t.Errorf("worker %d: packet %d went to %s, want %s", w, i, got, want)
					return
				}
				// New flows: any usable backend, never dropped.
				nf := tcp4(f.src, uint16(i), vip4, 80, encap.TCPFlagSYN)
				copy(buf[Headroom:], nf)
				if v, _, _ := m.Process(buf, Headroom, Headroom+len(nf)); v != verdictForward {
					t.Errorf("worker %d: new flow %v", w, v)
					return
				}
				n++
			}
			processed.Add(int64(n))
		}()
	}
	wg.Wait()
	t.Logf("%d packets pairs while the config changed %d times", processed.Load(), changes.Load())
	if changes.Load() < 10 || processed.Load() < 1000 {
		t.Errorf("too little concurrency: %d changes, %d packets", changes.Load(), processed.Load())
	}
}
