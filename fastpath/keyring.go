package fastpath

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"

	"github.com/ananta-go/ananta"
)

// KeySize is the length of an HMAC-SHA256 key.
const KeySize = 32

// Keyring holds the keys a Mux signs with and a Host Agent verifies with:
// the current key and the one it replaced. It is safe for concurrent use.
type Keyring struct {
	// mu serializes Rotate; readers load keys without it.
	mu   sync.Mutex
	keys atomic.Pointer[keySet]
}

type keySet struct {
	current, previous *key // previous is nil until the first rotation
}

type key struct {
	id   uint32
	pool sync.Pool // of *macState
	raw  [KeySize]byte
}

type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newKey(id uint32, raw [KeySize]byte) *key {
	k := &key{id: id, raw: raw}
	k.pool.New = func() any { return &macState{h: hmac.New(sha256.New, k.raw[:])} }
	return k
}

// mac computes the HMAC-SHA256 of body under k into out.
func (k *key) mac(body []byte, out *[MACSize]byte) {
	s := k.pool.Get().(*macState)
	s.h.Reset()
	s.h.Write(body)
	s.h.Sum(s.sum[:0])
	*out = s.sum
	k.pool.Put(s)
}

// NewKeyring returns a Keyring whose current key is raw under id. The key
// must not be all zero (an unset key); the error wraps
// ananta.ErrInvalidConfig.
func NewKeyring(id uint32, raw [KeySize]byte) (*Keyring, error) {
	if raw == [KeySize]byte{} {
		return nil, fmt.Errorf("%w: fastpath key %d is all zero", ananta.ErrInvalidConfig, id)
	}
	kr := &Keyring{}
	kr.keys.Store(&keySet{current: newKey(id, raw)})
	return kr, nil
}

// Rotate makes raw under newID the current key and keeps the current one as
// previous; the previous one is forgotten. Messages signed with either of the
// two verify; new messages are signed with newID. newID must differ from
// both IDs the Keyring holds, and raw must not be all zero; the error wraps
// ananta.ErrInvalidConfig.
func (kr *Keyring) Rotate(newID uint32, raw [KeySize]byte) error {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	ks := kr.keys.Load()
	if raw == [KeySize]byte{} {
		return fmt.Errorf("%w: fastpath key %d is all zero", ananta.ErrInvalidConfig, newID)
	}
	if newID == ks.current.id || (ks.previous != nil && newID == ks.previous.id) {
		return fmt.Errorf("%w: fastpath key ID %d is already in the keyring", ananta.ErrInvalidConfig, newID)
	}
	kr.keys.Store(&keySet{current: newKey(newID, raw), previous: ks.current})
	return nil
}

// CurrentID returns the ID of the key that signs.
func (kr *Keyring) CurrentID() uint32 { return kr.keys.Load().current.id }

// lookup returns the key with the given ID, or nil.
func (kr *Keyring) lookup(id uint32) *key {
	ks := kr.keys.Load()
	if ks.current.id == id {
		return ks.current
	}
	if ks.previous != nil && ks.previous.id == id {
		return ks.previous
	}
	return nil
}

// AppendSigned appends the signed encoding of r to dst: the body of
// Redirect.AppendBinary with KeyID set to the current key's ID (r.KeyID is
// ignored), then its HMAC-SHA256. It does not allocate when dst has room for
// MaxMessageSize more bytes. Errors wrap ErrMalformed; dst is returned
// unchanged with them.
func (kr *Keyring) AppendSigned(dst []byte, r *Redirect) ([]byte, error) {
	k := kr.keys.Load().current
	start := len(dst)
	out, err := r.AppendBinary(dst)
	if err != nil {
		return dst, err
	}
	binary.BigEndian.PutUint32(out[start+4:], k.id)
	var sum [MACSize]byte
	k.mac(out[start:], &sum)
	return append(out, sum[:]...), nil
}

// NewNonce returns 16 random bytes from crypto/rand for Redirect.Nonce.
func NewNonce() [NonceSize]byte {
	var n [NonceSize]byte
	rand.Read(n[:]) // never fails (crypto/rand panics rather than return short)
	return n
}
