package fastpath

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
)

var t0 = time.Unix(1_800_000_000, 0)

func testKey(b byte) [KeySize]byte {
	var k [KeySize]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func mustKeyring(t testing.TB, id uint32, seed byte) *Keyring {
	t.Helper()
	kr, err := NewKeyring(id, testKey(seed))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func mustVerifier(t testing.TB, cfg VerifierConfig) *Verifier {
	t.Helper()
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var mp = netip.MustParseAddr

// redirect4 is an all-IPv4 redirect stamped at ts, valid for 10 s.
func redirect4(ts time.Time, nonce byte) Redirect {
	r := Redirect{
		Proto:     ananta.ProtocolTCP,
		Src:       End{DIP: mp("10.0.0.1"), DIPPort: 40000, VIP: mp("198.19.0.10"), VIPPort: 1024, Host: mp("192.168.1.1")},
		Dst:       End{DIP: mp("10.0.0.2"), DIPPort: 8080, VIP: mp("198.19.0.20"), VIPPort: 80, Host: mp("192.168.1.2")},
		Timestamp: ts,
		Expiry:    ts.Add(10 * time.Second),
	}
	r.Nonce[0], r.Nonce[15] = nonce, 0xaa
	return r
}

// redirect6 is an all-IPv6 redirect.
func redirect6(ts time.Time, nonce byte) Redirect {
	r := Redirect{
		Proto:     ananta.ProtocolUDP,
		Src:       End{DIP: mp("fd00::1"), DIPPort: 40000, VIP: mp("2001:db8::10"), VIPPort: 1024, Host: mp("fd99::1")},
		Dst:       End{DIP: mp("fd00::2"), DIPPort: 8080, VIP: mp("2001:db8::20"), VIPPort: 443, Host: mp("fd99::2")},
		Timestamp: ts,
		Expiry:    ts.Add(10 * time.Second),
	}
	r.Nonce[0], r.Nonce[15] = nonce, 0xbb
	return r
}

// redirectMixed has IPv6 VMs on IPv4 hosts.
func redirectMixed(ts time.Time, nonce byte) Redirect {
	r := redirect6(ts, nonce)
	r.Src.Host, r.Dst.Host = mp("192.168.1.1"), mp("192.168.1.2")
	return r
}

func sign(t testing.TB, kr *Keyring, r Redirect) []byte {
	t.Helper()
	msg, err := kr.AppendSigned(nil, &r)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func sameRedirect(t *testing.T, got, want Redirect) {
	t.Helper()
	if !got.Timestamp.Equal(want.Timestamp) || !got.Expiry.Equal(want.Expiry) {
		t.Fatalf("times: got %v/%v, want %v/%v", got.Timestamp, got.Expiry, want.Timestamp, want.Expiry)
	}
	got.Timestamp, got.Expiry, want.Timestamp, want.Expiry = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

// TestGoldenV4 pins the version-1 layout documented in doc.go.
func TestGoldenV4(t *testing.T) {
	r := redirect4(time.Unix(0, 0x0102030405060708), 0)
	r.Expiry = time.Unix(0, 0x0102030406060708)
	r.KeyID = 7
	for i := range r.Nonce {
		r.Nonce[i] = 0x10 + byte(i)
	}
	want := strings.Join([]string{
		"01", "04", "04", "06", "00000007", "0102030405060708", "0102030406060708",
		"101112131415161718191a1b1c1d1e1f",
		"0a000001", "9c40", "c613000a", "0400", "c0a80101",
		"0a000002", "1f90", "c6130014", "0050", "c0a80102",
	}, "")
	body, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(body); got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
	kr := mustKeyring(t, 7, 1)
	msg := sign(t, kr, r)
	if !bytes.Equal(msg[:len(body)], body) || len(msg) != MinMessageSize {
		t.Fatalf("signed message %x does not start with the body or has length %d", msg, len(msg))
	}
	// The trailer is the standard HMAC-SHA256 of the body.
	key := testKey(1)
	m := hmac.New(sha256.New, key[:])
	m.Write(body)
	if !bytes.Equal(msg[len(body):], m.Sum(nil)) {
		t.Fatalf("MAC %x, want HMAC-SHA256 %x", msg[len(body):], m.Sum(nil))
	}
	var back Redirect
	if err := back.UnmarshalBinary(body); err != nil {
		t.Fatal(err)
	}
	sameRedirect(t, back, r)
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Redirect
		size int
	}{
		{"v4", redirect4(t0, 1), MinMessageSize},
		{"v6", redirect6(t0, 2), MaxMessageSize},
		{"v6-on-v4-hosts", redirectMixed(t0, 3), MaxMessageSize - 24},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kr := mustKeyring(t, 42, 9)
			msg := sign(t, kr, tc.r)
			if len(msg) != tc.size {
				t.Fatalf("length %d, want %d", len(msg), tc.size)
			}
			want := tc.r
			want.KeyID = 42
			d, err := Decode(msg)
			if err != nil {
				t.Fatal(err)
			}
			sameRedirect(t, d, want)
			v := mustVerifier(t, VerifierConfig{Keyring: kr})
			got, err := v.Verify(msg, t0.Add(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			sameRedirect(t, got, want)
			st := got.SourceTuple()
			dt := got.DestTuple()
			if st.Src != tc.r.Src.VIP || st.Dst != tc.r.Dst.VIP || st.SrcPort != tc.r.Src.VIPPort || st.DstPort != tc.r.Dst.VIPPort || st.Proto != tc.r.Proto {
				t.Errorf("SourceTuple %v", st)
			}
			if dt.Src != tc.r.Src.VIP || dt.Dst != tc.r.Dst.DIP || dt.SrcPort != tc.r.Src.VIPPort || dt.DstPort != tc.r.Dst.DIPPort {
				t.Errorf("DestTuple %v", dt)
			}
			if s := v.Stats(); s != (Stats{Accepted: 1}) {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	kr := mustKeyring(t, 1, 1)
	r := redirect6(t0, 1)
	buf := make([]byte, 0, MaxMessageSize)
	msg := sign(t, kr, r)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := kr.AppendSigned(buf[:0], &r); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("AppendSigned: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Decode(msg); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Decode: %v allocs", n)
	}
	// A replayed message exercises the whole Verify path except the insert.
	v := mustVerifier(t, VerifierConfig{Keyring: kr})
	if _, err := v.Verify(msg, t0); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := v.Verify(msg, t0); !errors.Is(err, ErrReplay) {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Verify (replay): %v allocs", n)
	}
}

// TestRejections covers every reason and its counter.
func TestRejections(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	w := DefaultWindow
	for _, tc := range []struct {
		name string
		msg  func() []byte
		now  time.Time
		want error
		stat func(Stats) uint64
	}{
		{"wrong key", func() []byte { return sign(t, mustKeyring(t, 1, 2), redirect4(t0, 1)) }, t0, ErrBadMAC, func(s Stats) uint64 { return s.BadMAC }},
		{"unknown key ID", func() []byte { return sign(t, mustKeyring(t, 2, 1), redirect4(t0, 1)) }, t0, ErrUnknownKey, func(s Stats) uint64 { return s.UnknownKey }},
		{"MAC flipped", func() []byte { m := sign(t, kr, redirect4(t0, 1)); m[len(m)-1] ^= 1; return m }, t0, ErrBadMAC, func(s Stats) uint64 { return s.BadMAC }},
		{"stale", func() []byte { return sign(t, kr, redirect4(t0, 1)) }, t0.Add(w + 1), ErrStale, func(s Stats) uint64 { return s.Stale }},
		{"future", func() []byte { return sign(t, kr, redirect4(t0, 1)) }, t0.Add(-w - 1), ErrFuture, func(s Stats) uint64 { return s.Future }},
		{"expired", func() []byte {
			r := redirect4(t0, 1)
			r.Expiry = t0.Add(time.Second)
			return sign(t, kr, r)
		}, t0.Add(time.Second), ErrExpired, func(s Stats) uint64 { return s.Expired }},
		{"truncated", func() []byte { return sign(t, kr, redirect4(t0, 1))[:MinMessageSize-1] }, t0, ErrMalformed, func(s Stats) uint64 { return s.Malformed }},
		{"empty", func() []byte { return nil }, t0, ErrMalformed, func(s Stats) uint64 { return s.Malformed }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := mustVerifier(t, VerifierConfig{Keyring: kr})
			_, err := v.Verify(tc.msg(), tc.now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			s := v.Stats()
			if tc.stat(s) != 1 || s.Accepted != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// TestWindowEdges: the window and the expiry are inclusive and exclusive as
// documented.
func TestWindowEdges(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	const w = 500 * time.Millisecond
	v := mustVerifier(t, VerifierConfig{Keyring: kr, Window: w})
	r := redirect4(t0, 1)
	r.Expiry = t0.Add(w)
	for i, tc := range []struct {
		now  time.Time
		want error
	}{
		{t0.Add(-w - 1), ErrFuture},
		{t0.Add(w + 1), ErrStale},
		{t0.Add(w), ErrExpired},
		{t0.Add(-w), nil},
		{t0.Add(w - 1), ErrReplay},
	} {
		_, err := v.Verify(sign(t, kr, r), tc.now)
		if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("case %d: now %v: err %v, want %v", i, tc.now.Sub(t0), err, tc.want)
		}
	}
	r.Nonce[1] = 1
	if _, err := v.Verify(sign(t, kr, r), t0.Add(w-1)); err != nil {
		t.Errorf("last nanosecond before expiry: %v", err)
	}
}

func TestReplay(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	v := mustVerifier(t, VerifierConfig{Keyring: kr})
	msg := sign(t, kr, redirect6(t0, 1))
	if _, err := v.Verify(msg, t0); err != nil {
		t.Fatal(err)
	}
	for _, now := range []time.Time{t0, t0.Add(time.Second), t0.Add(DefaultWindow)} {
		if _, err := v.Verify(msg, now); !errors.Is(err, ErrReplay) {
			t.Fatalf("replay at %v: %v", now.Sub(t0), err)
		}
	}
	// Once out of the window it is stale, never accepted again.
	if _, err := v.Verify(msg, t0.Add(DefaultWindow+1)); !errors.Is(err, ErrStale) {
		t.Fatalf("after the window: %v", err)
	}
	// Another nonce with the same content is a new message.
	if _, err := v.Verify(sign(t, kr, redirect6(t0, 2)), t0); err != nil {
		t.Fatal(err)
	}
	if s := v.Stats(); s != (Stats{Accepted: 2, Replay: 3, Stale: 1}) {
		t.Fatalf("stats %+v", s)
	}
}

// TestTamperEveryByte flips each bit of every byte of a signed message: none
// is accepted, each is refused for a reason that fits where it is.
func TestTamperEveryByte(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	for _, r := range []Redirect{redirect4(t0, 1), redirect6(t0, 1), redirectMixed(t0, 1)} {
		msg := sign(t, kr, r)
		v := mustVerifier(t, VerifierConfig{Keyring: kr})
		n := 0
		for off := range msg {
			for bit := range 8 {
				m := bytes.Clone(msg)
				m[off] ^= 1 << bit
				_, err := v.Verify(m, t0)
				n++
				switch {
				case off >= 4 && off < 8:
					if !errors.Is(err, ErrUnknownKey) {
						t.Fatalf("key ID byte %d bit %d: %v", off, bit, err)
					}
				case off < 4:
					if !errors.Is(err, ErrMalformed) {
						t.Fatalf("header byte %d bit %d: %v", off, bit, err)
					}
				default:
					if !errors.Is(err, ErrBadMAC) && !errors.Is(err, ErrMalformed) {
						t.Fatalf("byte %d bit %d: %v", off, bit, err)
					}
				}
			}
		}
		s := v.Stats()
		if s.Accepted != 0 || s.Malformed+s.UnknownKey+s.BadMAC != uint64(n) {
			t.Fatalf("stats %+v after %d tampered messages", s, n)
		}
		if s.BadMAC == 0 {
			t.Fatal("no tampered message reached the MAC check")
		}
		// The original still verifies: tampered copies left no trace.
		if _, err := v.Verify(msg, t0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTruncatedEveryLength(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	v := mustVerifier(t, VerifierConfig{Keyring: kr})
	for _, r := range []Redirect{redirect4(t0, 1), redirect6(t0, 1), redirectMixed(t0, 1)} {
		msg := sign(t, kr, r)
		for n := range len(msg) {
			if _, err := v.Verify(msg[:n], t0); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%d of %d bytes: %v", n, len(msg), err)
			}
		}
		if _, err := v.Verify(append(bytes.Clone(msg), 0), t0); !errors.Is(err, ErrMalformed) {
			t.Fatalf("one byte too many: %v", err)
		}
	}
	if s := v.Stats(); s.Accepted != 0 || s.Malformed != 104+176+152+3 {
		t.Fatalf("stats %+v", s)
	}
}

// TestDecodeRefuses: each field check of the decoder, on bytes with a valid
// length (the MAC is not looked at by Decode).
func TestDecodeRefuses(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	v4 := sign(t, kr, redirect4(t0, 1))
	v6 := sign(t, kr, redirect6(t0, 1))
	put64 := func(m []byte, off int, x uint64) []byte { binary.BigEndian.PutUint64(m[off:], x); return m }
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"version 0", func() []byte { m := bytes.Clone(v4); m[0] = 0; return m }()},
		{"version 2", func() []byte { m := bytes.Clone(v4); m[0] = 2; return m }()},
		{"inner family 5", func() []byte { m := bytes.Clone(v4); m[1] = 5; return m }()},
		{"host family 0", func() []byte { m := bytes.Clone(v4); m[2] = 0; return m }()},
		{"family says 6, length says 4", func() []byte { m := bytes.Clone(v4); m[1] = 6; return m }()},
		{"family says 4, length says 6", func() []byte { m := bytes.Clone(v6); m[1], m[2] = 4, 4; return m }()},
		{"protocol icmp", func() []byte { m := bytes.Clone(v4); m[3] = 1; return m }()},
		{"protocol any", func() []byte { m := bytes.Clone(v4); m[3] = 0; return m }()},
		{"timestamp 0", put64(bytes.Clone(v4), 8, 0)},
		{"timestamp negative", put64(bytes.Clone(v4), 8, 1<<63)},
		{"expiry = timestamp", put64(bytes.Clone(v4), 16, uint64(t0.UnixNano()))},
		{"zero nonce", func() []byte { m := bytes.Clone(v4); clear(m[24:40]); return m }()},
		{"src DIP unspecified", func() []byte { m := bytes.Clone(v4); clear(m[40:44]); return m }()},
		{"src DIP port 0", func() []byte { m := bytes.Clone(v4); clear(m[44:46]); return m }()},
		{"src VIP multicast", func() []byte { m := bytes.Clone(v4); m[46] = 224; return m }()},
		{"src VIP port 0", func() []byte { m := bytes.Clone(v4); clear(m[50:52]); return m }()},
		{"src host loopback", func() []byte { m := bytes.Clone(v4); m[52] = 127; return m }()},
		{"dst host broadcast", func() []byte { m := bytes.Clone(v4); copy(m[68:72], []byte{255, 255, 255, 255}); return m }()},
		{"dst VIP v4-mapped", func() []byte {
			m := bytes.Clone(v6)
			off := 40 + 16 + 2 + 16 + 2 + 16 + 16 + 2 // Dst VIP
			a := mp("::ffff:198.19.0.20").As16()
			copy(m[off:], a[:])
			return m
		}()},
		{"dst DIP loopback v6", func() []byte {
			m := bytes.Clone(v6)
			a := netip.IPv6Loopback().As16()
			copy(m[40+52:], a[:])
			return m
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.msg); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode: %v, want ErrMalformed", err)
			}
		})
	}
}

// TestEncodeRefuses: AppendBinary and AppendSigned refuse what Decode would.
func TestEncodeRefuses(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	for _, tc := range []struct {
		name string
		mod  func(*Redirect)
	}{
		{"protocol icmp", func(r *Redirect) { r.Proto = ananta.ProtocolICMP }},
		{"zero DIP port", func(r *Redirect) { r.Dst.DIPPort = 0 }},
		{"zero VIP port", func(r *Redirect) { r.Src.VIPPort = 0 }},
		{"invalid address", func(r *Redirect) { r.Src.DIP = netip.Addr{} }},
		{"inner families differ", func(r *Redirect) { r.Dst.VIP = mp("2001:db8::1") }},
		{"host families differ", func(r *Redirect) { r.Dst.Host = mp("fd99::2") }},
		{"v4-mapped", func(r *Redirect) { r.Src.DIP = mp("::ffff:10.0.0.1") }},
		{"zone", func(r *Redirect) { r.Src.Host = mp("fe80::1%eth0") }},
		{"unspecified", func(r *Redirect) { r.Src.Host = mp("0.0.0.0") }},
		{"zero nonce", func(r *Redirect) { r.Nonce = [NonceSize]byte{} }},
		{"zero timestamp", func(r *Redirect) { r.Timestamp = time.Time{} }},
		{"timestamp before 1970", func(r *Redirect) { r.Timestamp = time.Unix(-1, 0) }},
		{"expiry after 2262", func(r *Redirect) { r.Expiry = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"expiry = timestamp", func(r *Redirect) { r.Expiry = r.Timestamp }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := redirect4(t0, 1)
			tc.mod(&r)
			if _, err := r.AppendBinary(nil); !errors.Is(err, ErrMalformed) {
				t.Errorf("AppendBinary: %v", err)
			}
			dst := []byte("prefix")
			out, err := kr.AppendSigned(dst, &r)
			if !errors.Is(err, ErrMalformed) || string(out) != "prefix" {
				t.Errorf("AppendSigned: %q, %v", out, err)
			}
		})
	}
}

// TestRotation: old keys verify until the next rotation; signing always uses
// the current key.
func TestRotation(t *testing.T) {
	mux := mustKeyring(t, 1, 1)   // the signer's keyring
	agent := mustKeyring(t, 1, 1) // the verifier's keyring, fed the same keys
	v := mustVerifier(t, VerifierConfig{Keyring: agent})
	nonce := byte(0)
	signed := func() []byte { nonce++; return sign(t, mux, redirect4(t0, nonce)) }
	verify := func(msg []byte) error { _, err := v.Verify(bytes.Clone(msg), t0); return err }

	m1 := signed()
	m1b := signed()
	for _, kr := range []*Keyring{mux, agent} {
		if err := kr.Rotate(2, testKey(2)); err != nil {
			t.Fatal(err)
		}
	}
	m2 := signed()
	if id := binary.BigEndian.Uint32(m2[4:]); id != 2 || mux.CurrentID() != 2 {
		t.Fatalf("signed with key %d after rotation, current %d", id, mux.CurrentID())
	}
	if err := verify(m1); err != nil {
		t.Fatalf("previous key after one rotation: %v", err)
	}
	if err := verify(m2); err != nil {
		t.Fatalf("current key: %v", err)
	}
	for _, kr := range []*Keyring{mux, agent} {
		if err := kr.Rotate(3, testKey(3)); err != nil {
			t.Fatal(err)
		}
	}
	if err := verify(m1b); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("key 1 after two rotations: %v", err)
	}
	m2b := sign(t, mustKeyring(t, 2, 2), redirect4(t0, 100))
	if err := verify(m2b); err != nil {
		t.Fatalf("key 2 as previous: %v", err)
	}
	if err := verify(signed()); err != nil {
		t.Fatalf("key 3: %v", err)
	}
	// A verifier whose keyring lags one rotation still takes the new key?
	// No: it cannot know it. It refuses with ErrUnknownKey until rotated.
	lag := mustVerifier(t, VerifierConfig{Keyring: mustKeyring(t, 1, 1)})
	if _, err := lag.Verify(m2, t0); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("lagging verifier: %v", err)
	}

	if err := agent.Rotate(3, testKey(4)); !errors.Is(err, ananta.ErrInvalidConfig) {
		t.Errorf("reusing the current ID: %v", err)
	}
	if err := agent.Rotate(2, testKey(4)); !errors.Is(err, ananta.ErrInvalidConfig) {
		t.Errorf("reusing the previous ID: %v", err)
	}
	if err := agent.Rotate(9, [KeySize]byte{}); !errors.Is(err, ananta.ErrInvalidConfig) {
		t.Errorf("zero key: %v", err)
	}
	if agent.CurrentID() != 3 {
		t.Errorf("failed rotations changed the keyring: current %d", agent.CurrentID())
	}
	if _, err := NewKeyring(1, [KeySize]byte{}); !errors.Is(err, ananta.ErrInvalidConfig) {
		t.Errorf("NewKeyring with a zero key: %v", err)
	}
}

func TestVerifierConfig(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	for _, cfg := range []VerifierConfig{
		{},
		{Keyring: kr, Window: -1},
		{Keyring: kr, MaxNonces: -1},
	} {
		if _, err := NewVerifier(cfg); !errors.Is(err, ananta.ErrInvalidConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

// TestReplayCacheBounded verifies 1M distinct messages, 1000 per simulated
// second, each at its own timestamp: all are accepted, and the cache never
// holds more than the nonces of one window plus two buckets.
func TestReplayCacheBounded(t *testing.T) {
	const total = 1_000_000
	const step = time.Millisecond
	kr := mustKeyring(t, 1, 1)
	v := mustVerifier(t, VerifierConfig{Keyring: kr})
	limit := int((DefaultWindow + 2*DefaultWindow/replayBuckets) / step)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := redirect4(t0, 1)
	buf := make([]byte, 0, MaxMessageSize)
	peak := 0
	for i := range total {
		r.Timestamp = t0.Add(time.Duration(i) * step)
		r.Expiry = r.Timestamp.Add(time.Minute)
		binary.BigEndian.PutUint64(r.Nonce[:], uint64(i)+1)
		msg, err := kr.AppendSigned(buf[:0], &r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(msg, r.Timestamp); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if i%997 == 0 {
			peak = max(peak, v.Nonces())
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if peak > limit || v.Nonces() > limit {
		t.Fatalf("cache held %d (peak) / %d (end) nonces, limit %d", peak, v.Nonces(), limit)
	}
	if peak < int(DefaultWindow/step) {
		t.Fatalf("cache peak %d nonces: it forgets nonces still inside the window", peak)
	}
	if s := v.Stats(); s != (Stats{Accepted: total}) {
		t.Fatalf("stats %+v", s)
	}
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("peak %d nonces (limit %d), heap grew %d bytes over %d messages", peak, limit, grew, total)
	if grew > 4<<20 {
		t.Fatalf("heap grew %d bytes over %d messages", grew, total)
	}
}

// TestReplayCacheFull: at MaxNonces live nonces the verifier refuses and
// counts rather than forget; replays are still named replays; once the
// window has passed it accepts again.
func TestReplayCacheFull(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	v := mustVerifier(t, VerifierConfig{Keyring: kr, MaxNonces: 10})
	var first []byte
	for i := range 12 {
		msg := sign(t, kr, redirect4(t0, byte(i+1)))
		_, err := v.Verify(msg, t0)
		if i == 0 {
			first = msg
		}
		if (i < 10) != (err == nil) || (i >= 10 && !errors.Is(err, ErrReplayCacheFull)) {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if _, err := v.Verify(first, t0); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay with a full cache: %v", err)
	}
	later := t0.Add(DefaultWindow + DefaultWindow/replayBuckets + 1)
	if _, err := v.Verify(sign(t, kr, redirect4(later, 50)), later); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if v.Nonces() != 1 {
		t.Fatalf("%d nonces after expiry, want 1", v.Nonces())
	}
	if s := v.Stats(); s != (Stats{Accepted: 11, CacheFull: 2, Replay: 1}) {
		t.Fatalf("stats %+v", s)
	}
}

// TestConcurrentVerify: goroutines verifying the same messages accept each
// exactly once.
func TestConcurrentVerify(t *testing.T) {
	kr := mustKeyring(t, 1, 1)
	v := mustVerifier(t, VerifierConfig{Keyring: kr})
	var msgs [][]byte
	for i := range 200 {
		r := redirect6(t0, byte(i))
		r.Nonce[1] = byte(i >> 8)
		r.Nonce[2] = 1
		msgs = append(msgs, sign(t, kr, r))
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for _, m := range msgs {
				v.Verify(m, t0)
			}
		})
	}
	wg.Go(func() {
		// Rotating under load is safe; key 1 stays as previous.
		if err := kr.Rotate(2, testKey(2)); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if s := v.Stats(); s.Accepted != 200 || s.Replay != 600 {
		t.Fatalf("stats %+v", s)
	}
}
