package fastpath

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode: Decode and Verify never panic on any input, refuse with
// ErrMalformed (or an authentication error), and every message Decode
// accepts re-encodes to the same bytes and, signed, passes Verify.
func FuzzDecode(f *testing.F) {
	kr := mustKeyring(f, 1, 1)
	for i, r := range []Redirect{redirect4(t0, 1), redirect6(t0, 2), redirectMixed(t0, 3)} {
		msg := sign(f, kr, r)
		f.Add(msg)
		f.Add(msg[:len(msg)-1-i])
	}
	f.Add([]byte{})
	f.Add([]byte{Version, 4, 4, 6})
	f.Fuzz(func(t *testing.T, msg []byte) {
		orig := bytes.Clone(msg)
		r, err := Decode(msg)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v does not wrap ErrMalformed", err)
			}
		} else {
			body, err := r.AppendBinary(nil)
			if err != nil {
				t.Fatalf("accepted %x but cannot re-encode: %v", msg, err)
			}
			if !bytes.Equal(append(body, msg[len(body):]...), msg) || len(body) != len(msg)-MACSize {
				t.Fatalf("re-encoded\n %x\nfrom\n %x", body, msg)
			}
		}
		v := mustVerifier(t, VerifierConfig{Keyring: kr})
		got, verr := v.Verify(msg, r.Timestamp)
		switch {
		case err != nil && !errors.Is(verr, ErrMalformed):
			t.Fatalf("Decode refused (%v) but Verify said %v", err, verr)
		case verr == nil && got.KeyID != kr.CurrentID():
			t.Fatalf("accepted under key %d", got.KeyID)
		}
		if err == nil {
			// Signed properly, the same content passes every check.
			signed, err := kr.AppendSigned(nil, &r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := mustVerifier(t, VerifierConfig{Keyring: kr}).Verify(signed, r.Timestamp)
			if err != nil {
				t.Fatalf("re-signed %x refused: %v", signed, err)
			}
			body, _ := got.AppendBinary(nil)
			if !bytes.Equal(body, signed[:len(signed)-MACSize]) {
				t.Fatalf("verified content differs: %x vs %x", body, signed)
			}
		}
		if !bytes.Equal(msg, orig) {
			t.Fatal("input modified")
		}
	})
}
