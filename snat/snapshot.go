package snat

import (
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/ananta-go/ananta"
)

// Snapshot format. All integers are big-endian.
//
//	"SNAT" version(u8)=1
//	maxPortsPerDIP(u32)
//	predictor: interval(i64 ns) shift(u8) horizon(u8) min(u32) max(u32)
//	nVIPs(u32), then per VIP in strictly ascending address order:
//	  addr portsPerDIP(u32) poolSize(u32)
//	  nReserved(u8), then per range in strictly ascending order: first(u16) last(u16)
//	  nDIPs(u32), then per DIP in strictly ascending address order:
//	    addr predictor-state: interval(i64) count(i64) average(i64)
//	    nLeases(u32, >= 1), then per lease in strictly ascending order:
//	      first(u16) order(u8: size = 8<<order) host(addr) expiry(i64 Unix ns)
//	addr = family(u8: 4 or 6) followed by 4 or 16 bytes
//
// The encoding is canonical: UnmarshalBinary accepts only what
// MarshalBinary could have produced (sorted, no duplicates, configuration
// with its defaults filled in, no trailing bytes), so for every accepted
// input, re-marshalling gives the input back byte for byte.
const (
	snapshotMagic   = "SNAT"
	snapshotVersion = 1
)

// MarshalBinary encodes the whole state, configuration included, in the
// versioned snapshot format. It implements encoding.BinaryMarshaler and
// never fails. Equal states encode to equal bytes.
func (l *Leases) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 64+l.n*40)
	b = append(b, snapshotMagic...)
	b = append(b, snapshotVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(l.cfg.MaxPortsPerDIP))
	p := l.cfg.Predictor
	b = binary.BigEndian.AppendUint64(b, uint64(p.Interval))
	b = append(b, byte(p.Shift), byte(p.Horizon))
	b = binary.BigEndian.AppendUint32(b, uint32(p.Min))
	b = binary.BigEndian.AppendUint32(b, uint32(p.Max))
	vips := l.VIPs()
	b = binary.BigEndian.AppendUint32(b, uint32(len(vips)))
	for _, a := range vips {
		vs := l.vips[a]
		b = appendAddr(b, a)
		b = binary.BigEndian.AppendUint32(b, uint32(vs.cfg.PortsPerDIP))
		b = binary.BigEndian.AppendUint32(b, uint32(vs.cfg.PoolSize))
		b = append(b, byte(len(vs.cfg.Reserved)))
		for _, r := range vs.cfg.Reserved {
			b = binary.BigEndian.AppendUint16(b, r.First)
			b = binary.BigEndian.AppendUint16(b, r.Last)
		}
		dips := make([]netip.Addr, 0, len(vs.dips))
		for d := range vs.dips {
			dips = append(dips, d)
		}
		slices.SortFunc(dips, netip.Addr.Compare)
		b = binary.BigEndian.AppendUint32(b, uint32(len(dips)))
		for _, d := range dips {
			ds := vs.dips[d]
			b = appendAddr(b, d)
			b = binary.BigEndian.AppendUint64(b, uint64(ds.pred.idx))
			b = binary.BigEndian.AppendUint64(b, uint64(ds.pred.cur))
			b = binary.BigEndian.AppendUint64(b, uint64(ds.pred.avg))
			b = binary.BigEndian.AppendUint32(b, uint32(len(ds.firsts)))
			for _, f := range ds.firsts {
				e := vs.byFirst[f]
				k, _ := sizeOrder(e.r.Len())
				b = binary.BigEndian.AppendUint16(b, f)
				b = append(b, byte(k))
				b = appendAddr(b, e.host)
				b = binary.BigEndian.AppendUint64(b, uint64(e.expiry))
			}
		}
	}
	return b, nil
}

func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		x := a.As4()
		return append(append(b, 4), x[:]...)
	}
	x := a.As16()
	return append(append(b, 6), x[:]...)
}

// UnmarshalBinary replaces the whole state, configuration included, with
// the one encoded in data by MarshalBinary. It implements
// encoding.BinaryUnmarshaler. It treats data as untrusted: malformed,
// truncated, non-canonical or inconsistent input (overlapping or reserved
// ranges, invalid addresses or configuration, a DIP over its limit) gives an
// error matching ErrBadSnapshot and leaves the state unchanged. Memory use
// is bounded by the input size, never by a length field.
func (l *Leases) UnmarshalBinary(data []byte) error {
	n, err := decodeLeases(data)
	if err != nil {
		return err
	}
	*l = *n
	return nil
}

// decoder reads big-endian fields; the first short read sets err and
// every later read returns zero.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = errorf(ErrBadSnapshot, format, args...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated: %d more bytes needed, %d left", n, len(d.b))
		return nil
	}
	x := d.b[:n]
	d.b = d.b[n:]
	return x
}

func (d *decoder) u8() uint8 {
	if x := d.take(1); x != nil {
		return x[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if x := d.take(2); x != nil {
		return binary.BigEndian.Uint16(x)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if x := d.take(4); x != nil {
		return binary.BigEndian.Uint32(x)
	}
	return 0
}

func (d *decoder) i64() int64 {
	if x := d.take(8); x != nil {
		return int64(binary.BigEndian.Uint64(x))
	}
	return 0
}

func (d *decoder) addr() netip.Addr {
	switch f := d.u8(); f {
	case 4:
		if x := d.take(4); x != nil {
			return netip.AddrFrom4([4]byte(x))
		}
	case 6:
		if x := d.take(16); x != nil {
			return netip.AddrFrom16([16]byte(x))
		}
	default:
		d.fail("address family %d is not 4 or 6", f)
	}
	return netip.Addr{}
}

func decodeLeases(data []byte) (*Leases, error) {
	d := &decoder{b: data}
	if string(d.take(len(snapshotMagic))) != snapshotMagic {
		d.fail("not a snat snapshot (bad magic)")
		return nil, d.err
	}
	if v := d.u8(); d.err == nil && v != snapshotVersion {
		d.fail("unsupported snapshot version %d (want %d)", v, snapshotVersion)
	}
	var cfg LeasesConfig
	cfg.MaxPortsPerDIP = int(d.u32())
	cfg.Predictor.Interval = time.Duration(d.i64())
	cfg.Predictor.Shift = int(d.u8())
	cfg.Predictor.Horizon = int(d.u8())
	cfg.Predictor.Min = int(d.u32())
	cfg.Predictor.Max = int(d.u32())
	if d.err != nil {
		return nil, d.err
	}
	if err := cfg.Validate(); err != nil || cfg != cfg.withDefaults() {
		d.fail("invalid configuration %+v", cfg)
		return nil, d.err
	}
	l, _ := NewLeases(cfg)
	nv := d.u32()
	var prevVIP netip.Addr
	for i := uint32(0); i < nv && d.err == nil; i++ {
		vip := d.addr()
		if d.err != nil {
			break
		}
		if checkVIP(vip) != nil || (i > 0 && vip.Compare(prevVIP) <= 0) {
			d.fail("vip %s invalid or out of order", vip)
			break
		}
		prevVIP = vip
		decodeVIP(d, l, vip)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return l, nil
}

func decodeVIP(d *decoder, l *Leases, vip netip.Addr) {
	var cfg VIPConfig
	ppd, pool := d.u32(), d.u32()
	if ppd > math.MaxInt32 || pool > math.MaxInt32 {
		d.fail("vip %s: configuration out of range", vip)
		return
	}
	cfg.PortsPerDIP, cfg.PoolSize = int(ppd), int(pool)
	nr := int(d.u8())
	if nr > ananta.MaxReservedRanges {
		d.fail("vip %s: %d reserved ranges exceed the limit of %d", vip, nr, ananta.MaxReservedRanges)
		return
	}
	for j := 0; j < nr && d.err == nil; j++ {
		r := ananta.PortRange{First: d.u16(), Last: d.u16()}
		if j > 0 && r.First <= cfg.Reserved[j-1].First {
			d.fail("vip %s: reserved ranges out of order", vip)
		}
		cfg.Reserved = append(cfg.Reserved, r)
	}
	if d.err != nil {
		return
	}
	if err := l.ConfigureVIP(vip, cfg); err != nil {
		d.fail("vip %s: %v", vip, err)
		return
	}
	vs := l.vips[vip]
	nd := d.u32()
	var prevDIP netip.Addr
	for j := uint32(0); j < nd && d.err == nil; j++ {
		dip := d.addr()
		if d.err != nil {
			return
		}
		if checkDIP(vip, dip) != nil || (j > 0 && dip.Compare(prevDIP) <= 0) {
			d.fail("vip %s: dip %s invalid or out of order", vip, dip)
			return
		}
		prevDIP = dip
		pred := predState{idx: d.i64(), cur: d.i64(), avg: d.i64()}
		if d.err == nil && !pred.valid() {
			d.fail("vip %s dip %s: predictor state out of range", vip, dip)
		}
		nl := d.u32()
		if d.err == nil && nl == 0 {
			d.fail("vip %s dip %s: no leases", vip, dip)
		}
		for k := uint32(0); k < nl && d.err == nil; k++ {
			first, order := d.u16(), d.u8()
			host := d.addr()
			expiry := d.i64()
			if d.err != nil {
				return
			}
			if order > maxOrder {
				d.fail("vip %s dip %s: range order %d too large", vip, dip, order)
				return
			}
			r := ananta.PortRange{First: first, Last: uint16(int(first) + MinRangeSize<<order - 1)}
			if int(first)+MinRangeSize<<order-1 > ananta.LastSNATPort {
				d.fail("vip %s dip %s: range starting at %d of %d ports exceeds the port space", vip, dip, first, MinRangeSize<<order)
				return
			}
			if ds := vs.dips[dip]; ds != nil && first <= ds.firsts[len(ds.firsts)-1] {
				d.fail("vip %s dip %s: leases out of order", vip, dip)
				return
			}
			if err := checkHost(host); err != nil {
				d.fail("vip %s dip %s: %v", vip, dip, err)
				return
			}
			if err := vs.space.AllocateAt(r); err != nil {
				d.fail("vip %s dip %s: lease %s: %v", vip, dip, r, err)
				return
			}
			l.add(vs, r, dip, host, expiry)
		}
		if d.err != nil {
			return
		}
		ds := vs.dips[dip]
		if ds.held > l.cfg.MaxPortsPerDIP {
			d.fail("vip %s dip %s: holds %d ports, over the limit of %d", vip, dip, ds.held, l.cfg.MaxPortsPerDIP)
			return
		}
		ds.pred = pred
	}
}
