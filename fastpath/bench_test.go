package fastpath

import (
	"encoding/binary"
	"testing"
	"time"
)

func BenchmarkSign(b *testing.B) {
	for _, bc := range []struct {
		name string
		r    Redirect
	}{{"v4", redirect4(t0, 1)}, {"v6", redirect6(t0, 1)}} {
		b.Run(bc.name, func(b *testing.B) {
			kr := mustKeyring(b, 1, 1)
			buf := make([]byte, 0, MaxMessageSize)
			r := bc.r
			b.ReportAllocs()
			for b.Loop() {
				if _, err := kr.AppendSigned(buf[:0], &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify is the cost of authenticating one fresh redirect: decode,
// key lookup, HMAC, time checks and the replay-cache insert. Messages are
// signed in batches of 4096 outside the timer; each batch is 1 s later than
// the last, so the cache keeps forgetting as it would in service.
func BenchmarkVerify(b *testing.B) {
	for _, bc := range []struct {
		name string
		r    Redirect
	}{{"v4", redirect4(t0, 1)}, {"v6", redirect6(t0, 1)}} {
		b.Run(bc.name, func(b *testing.B) {
			kr := mustKeyring(b, 1, 1)
			v := mustVerifier(b, VerifierConfig{Keyring: kr})
			const batch = 4096
			msgs := make([][]byte, batch)
			for i := range msgs {
				msgs[i] = make([]byte, 0, MaxMessageSize)
			}
			r := bc.r
			now := t0
			seq := uint64(0)
			fill := func() {
				now = now.Add(time.Second)
				r.Timestamp, r.Expiry = now, now.Add(10*time.Second)
				for i := range msgs {
					seq++
					binary.BigEndian.PutUint64(r.Nonce[:], seq)
					var err error
					if msgs[i], err = kr.AppendSigned(msgs[i][:0], &r); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i%batch == 0 {
					b.StopTimer()
					fill()
					b.StartTimer()
				}
				if _, err := v.Verify(msgs[i%batch], now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyForged is the cost of refusing a message with a wrong MAC:
// what a flood of forged redirects costs a Host Agent.
func BenchmarkVerifyForged(b *testing.B) {
	kr := mustKeyring(b, 1, 1)
	v := mustVerifier(b, VerifierConfig{Keyring: kr})
	r := redirect4(t0, 1)
	msg := sign(b, kr, r)
	msg[len(msg)-1] ^= 1
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(msg, t0); err == nil {
			b.Fatal("forged message accepted")
		}
	}
}
