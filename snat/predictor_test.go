package snat

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

func mustPredictor(t *testing.T, cfg PredictorConfig) *Predictor {
	t.Helper()
	p, err := NewPredictor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPredictorConfig(t *testing.T) {
	d := mustPredictor(t, PredictorConfig{}).Config()
	if d.Interval != DefaultPredictInterval || d.Shift != DefaultPredictShift || d.Horizon != 1 || d.Min != 8 || d.Max != DefaultPredictMax {
		t.Fatalf("defaults = %+v", d)
	}
	for _, c := range []PredictorConfig{
		{Interval: time.Microsecond},
		{Interval: 2 * time.Hour},
		{Interval: -time.Second},
		{Shift: 7},
		{Shift: -1},
		{Horizon: 65},
		{Min: 12},
		{Min: 4},
		{Max: 100},
		{Min: 64, Max: 32},
		{Max: 65536},
	} {
		if _, err := NewPredictor(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewPredictor(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
	if c := mustPredictor(t, PredictorConfig{Min: 8192}).Config(); c.Max != 8192 {
		t.Errorf("Max default with Min 8192 = %d", c.Max)
	}
}

func TestPredictorRecommend(t *testing.T) {
	p := mustPredictor(t, PredictorConfig{Interval: 10 * time.Second, Shift: 1, Max: 1024})
	if got := p.Recommend(t0); got != 8 {
		t.Fatalf("idle predictor recommends %d", got)
	}
	// 100 ports within the current interval: the burst counts at once.
	p.Record(t0, 100)
	if got := p.Recommend(t0.Add(time.Second)); got != 128 {
		t.Fatalf("after 100 ports: %d, want 128", got)
	}
	if got := p.Rate(t0.Add(time.Second)); got != 100 {
		t.Fatalf("Rate = %v, want 100", got)
	}
	// The interval closes: avg = 100/2 = 50, current 0 -> 64.
	if got := p.Recommend(t0.Add(10 * time.Second)); got != 64 {
		t.Fatalf("next interval: %d, want 64", got)
	}
	// Three idle intervals: 50 -> 25 -> 12.5 -> 6.25: the minimum.
	if got := p.Recommend(t0.Add(40 * time.Second)); got != 8 {
		t.Fatalf("after idle intervals: %d, want 8", got)
	}
	// Steady 300 per interval converges to 512 and stays capped below 1024.
	now := t0.Add(50 * time.Second)
	for range 20 {
		p.Record(now, 300)
		now = now.Add(10 * time.Second)
	}
	if got := p.Recommend(now); got != 512 {
		t.Fatalf("steady 300/interval: %d, want 512", got)
	}
	p.Record(now, 5000)
	if got := p.Recommend(now); got != 1024 {
		t.Fatalf("burst above the cap: %d, want 1024", got)
	}
	// A time before the current interval counts in the current interval.
	before := p.Rate(now)
	p.Record(now.Add(-time.Hour), 8)
	if got := p.Rate(now); got != before+8 {
		t.Fatalf("backwards time: rate %v, want %v", got, before+8)
	}
	// A very long gap decays to zero without hanging.
	if got := p.Rate(now.Add(100 * 365 * 24 * time.Hour)); got != 0 {
		t.Fatalf("after a century: %v", got)
	}
	p.Reset()
	if p.Rate(now) != 0 {
		t.Fatal("Reset kept demand")
	}
}

func TestPredictorHorizonAndBounds(t *testing.T) {
	p := mustPredictor(t, PredictorConfig{Horizon: 4, Min: 32, Max: 256})
	if got := p.Recommend(t0); got != 32 {
		t.Fatalf("min: %d", got)
	}
	p.Record(t0, 20) // 4 * 20 = 80 -> 128
	if got := p.Recommend(t0); got != 128 {
		t.Fatalf("horizon 4: %d, want 128", got)
	}
	p.Record(t0, 1<<40) // saturates, no overflow
	if got := p.Recommend(t0); got != 256 {
		t.Fatalf("huge demand: %d, want 256", got)
	}
	p.Record(t0.Add(time.Minute), -5) // ignored
	if got := p.Recommend(time.Time{}); got < 32 || got > 256 {
		t.Fatalf("zero time: %d", got)
	}
}

// TestPredictorDeterministic: equal inputs give equal outputs; results are
// powers of two within bounds.
func TestPredictorDeterministic(t *testing.T) {
	a := mustPredictor(t, PredictorConfig{Interval: time.Second, Shift: 3, Horizon: 3})
	b := mustPredictor(t, PredictorConfig{Interval: time.Second, Shift: 3, Horizon: 3})
	rng := rand.New(rand.NewPCG(1, 1))
	now := t0
	for i := range 20000 {
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		n := rng.IntN(64)
		a.Record(now, n)
		b.Record(now, n)
		ra, rb := a.Recommend(now), b.Recommend(now)
		if ra != rb {
			t.Fatalf("step %d: %d vs %d", i, ra, rb)
		}
		if ra < 8 || ra > DefaultPredictMax || ra&(ra-1) != 0 {
			t.Fatalf("step %d: recommendation %d not a power of two in [8, %d]", i, ra, DefaultPredictMax)
		}
		if !a.st.valid() {
			t.Fatalf("step %d: state out of bounds: %+v", i, a.st)
		}
	}
}
