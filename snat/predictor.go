package snat

import (
	"math/bits"
	"time"
)

// Predictor defaults and limits.
const (
	// DefaultPredictInterval is the default sampling interval.
	DefaultPredictInterval = 10 * time.Second
	// DefaultPredictShift is the default smoothing shift: each closed
	// interval moves the average a quarter of the way to its sample.
	DefaultPredictShift = 2
	// DefaultPredictHorizon is the default number of intervals of demand a
	// recommendation covers.
	DefaultPredictHorizon = 1
	// DefaultPredictMax is the default cap on a recommendation.
	DefaultPredictMax = 4096

	minPredictInterval = time.Millisecond
	maxPredictInterval = time.Hour
	maxPredictShift    = 6
	maxPredictHorizon  = 64
	fixedShift         = 16      // fixed-point fraction bits of the average
	maxSample          = 1 << 31 // ports counted in one interval saturate here
)

// PredictorConfig tunes a Predictor. The zero value selects the defaults.
type PredictorConfig struct {
	// Interval is the sampling interval: demand is counted per interval of
	// this length, intervals aligned to multiples of Interval since the
	// Unix epoch. 0 means DefaultPredictInterval; otherwise 1 ms to 1 h.
	Interval time.Duration
	// Shift sets the smoothing of the moving average, alpha = 1/2^Shift:
	// each closed interval moves the average 1/2^Shift of the way to that
	// interval's count. 0 means DefaultPredictShift; otherwise 1 to 6.
	Shift int
	// Horizon is how many intervals of demand one recommendation covers.
	// 0 means DefaultPredictHorizon; otherwise 1 to 64.
	Horizon int
	// Min is the smallest recommendation. 0 means MinRangeSize; otherwise a
	// power of two from MinRangeSize to MaxRangeSize.
	Min int
	// Max caps recommendations. 0 means DefaultPredictMax; otherwise a
	// power of two from Min to MaxRangeSize.
	Max int
}

// withDefaults returns c with zero fields set to their defaults.
func (c PredictorConfig) withDefaults() PredictorConfig {
	if c.Interval == 0 {
		c.Interval = DefaultPredictInterval
	}
	if c.Shift == 0 {
		c.Shift = DefaultPredictShift
	}
	if c.Horizon == 0 {
		c.Horizon = DefaultPredictHorizon
	}
	if c.Min == 0 {
		c.Min = MinRangeSize
	}
	if c.Max == 0 {
		c.Max = max(DefaultPredictMax, c.Min)
	}
	return c
}

// Validate reports whether c (after defaults) is usable; errors match
// ErrInvalidConfig.
func (c PredictorConfig) Validate() error {
	d := c.withDefaults()
	switch {
	case d.Interval < minPredictInterval || d.Interval > maxPredictInterval:
		return errorf(ErrInvalidConfig, "predictor interval %s out of range [%s, %s]", d.Interval, minPredictInterval, maxPredictInterval)
	case d.Shift < 1 || d.Shift > maxPredictShift:
		return errorf(ErrInvalidConfig, "predictor shift %d out of range [1, %d]", d.Shift, maxPredictShift)
	case d.Horizon < 1 || d.Horizon > maxPredictHorizon:
		return errorf(ErrInvalidConfig, "predictor horizon %d out of range [1, %d]", d.Horizon, maxPredictHorizon)
	}
	if _, ok := sizeOrder(d.Min); !ok {
		return errorf(ErrInvalidConfig, "predictor min %d is not a power of two from %d to %d", d.Min, MinRangeSize, MaxRangeSize)
	}
	if _, ok := sizeOrder(d.Max); !ok || d.Max < d.Min {
		return errorf(ErrInvalidConfig, "predictor max %d is not a power of two from min %d to %d", d.Max, d.Min, MaxRangeSize)
	}
	return nil
}

// predState is the state of one predictor; the zero value is a predictor
// that has seen nothing. All arithmetic is on integers, so the state
// evolves identically on every machine (floating point may differ between
// architectures, where Go may fuse multiply-adds).
type predState struct {
	idx int64 // index of the current interval: floor(now / interval)
	cur int64 // ports recorded in the current interval, <= maxSample
	avg int64 // moving average of ports per interval, fixed point (16 bits), <= maxSample<<16
}

// valid reports whether the fields are within the bounds the methods keep.
func (p predState) valid() bool {
	return p.cur >= 0 && p.cur <= maxSample && p.avg >= 0 && p.avg <= maxSample<<fixedShift
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// advance closes the intervals that ended before now. A now earlier than
// the current interval counts as the current interval.
func (p *predState) advance(c *PredictorConfig, now int64) {
	idx := floorDiv(now, int64(c.Interval))
	if idx <= p.idx {
		return
	}
	shift := uint(c.Shift)
	// Close the current interval with its count as sample...
	p.avg += (p.cur<<fixedShift - p.avg) >> shift
	p.cur = 0
	// ...and every further elapsed interval with a sample of 0. The decay
	// rounds the decrement up, so the average reaches 0 after at most a
	// few thousand steps whatever the gap.
	for k := idx - p.idx - 1; k > 0 && p.avg > 0; k-- {
		p.avg -= (p.avg + 1<<shift - 1) >> shift
	}
	p.idx = idx
}

// record counts ports demanded at now.
func (p *predState) record(c *PredictorConfig, now int64, ports int) {
	p.advance(c, now)
	if ports > 0 {
		p.cur = min(p.cur+int64(min(ports, maxSample)), maxSample)
	}
}

// estimate returns the demand estimate in ports per interval, fixed point:
// the larger of the moving average and the current interval's count so far,
// so that a burst counts before its interval closes.
func (p *predState) estimate(c *PredictorConfig, now int64) int64 {
	p.advance(c, now)
	return max(p.avg, p.cur<<fixedShift)
}

// recommend returns the number of ports to request next.
func (p *predState) recommend(c *PredictorConfig, now int64) int {
	est := p.estimate(c, now) * int64(c.Horizon) // <= 2^47 * 64
	need := (est + 1<<fixedShift - 1) >> fixedShift
	if need <= int64(c.Min) {
		return c.Min
	}
	if need >= int64(c.Max) {
		return c.Max
	}
	return 1 << bits.Len64(uint64(need-1)) // next power of two
}

// Predictor predicts the SNAT port demand of one DIP (of one VIP) from its
// recent allocation rate, so that a busy DIP asks for ports ahead of need
// and an idle one asks for few.
//
// Demand is counted per interval of PredictorConfig.Interval. When an
// interval closes, an exponentially weighted moving average (EWMA) of the
// per-interval counts moves 1/2^Shift of the way to that interval's count;
// intervals without demand count 0 and decay it. Recommend returns
// Horizon times the larger of the average and the count of the current
// interval so far, rounded up to a power of two and clamped to [Min, Max].
// Because the current interval counts, repeated requests within one
// interval double the recommendation each time (slow start).
//
// A Predictor is deterministic: its results depend only on the
// configuration and the sequence of calls with their explicit times; it
// uses integer (16-bit fixed-point) arithmetic only, so results are the
// same on every architecture. Times before the current interval count as
// the current interval. The zero value is not usable; use NewPredictor.
// A Predictor is not safe for concurrent use.
type Predictor struct {
	cfg PredictorConfig
	st  predState
}

// NewPredictor returns a Predictor that has seen no demand. It returns an
// error matching ErrInvalidConfig for an invalid cfg.
func NewPredictor(cfg PredictorConfig) (*Predictor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Predictor{cfg: cfg.withDefaults()}, nil
}

// Config returns the configuration with defaults filled in.
func (p *Predictor) Config() PredictorConfig { return p.cfg }

// Record counts ports allocated (demanded) at now. Times out of the int64
// Unix-nanosecond range are clamped.
func (p *Predictor) Record(now time.Time, ports int) {
	p.st.record(&p.cfg, clampNanos(now), ports)
}

// Rate returns the demand estimate at now in ports per interval: the larger
// of the moving average and the current interval's count.
func (p *Predictor) Rate(now time.Time) float64 {
	return float64(p.st.estimate(&p.cfg, clampNanos(now))) / (1 << fixedShift)
}

// Recommend returns how many ports to request at now: a power of two from
// Min to Max covering Horizon intervals of the estimated demand.
func (p *Predictor) Recommend(now time.Time) int {
	return p.st.recommend(&p.cfg, clampNanos(now))
}

// Reset forgets all demand seen.
func (p *Predictor) Reset() { p.st = predState{} }
