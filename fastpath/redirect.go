package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ananta-go/ananta"
)

// Version is the encoding version this package writes and reads.
const Version = 1

// Sizes of the encoding.
const (
	NonceSize  = 16 // bytes of Redirect.Nonce
	MACSize    = 32 // bytes of the HMAC-SHA256 trailer
	headerSize = 40
	// MaxMessageSize is the length of an all-IPv6 signed message, the
	// largest there is.
	MaxMessageSize = headerSize + 2*(16+2+16+2+16) + MACSize // 176
	// MinMessageSize is the length of an all-IPv4 signed message.
	MinMessageSize = headerSize + 2*(4+2+4+2+4) + MACSize // 104
)

// Errors returned by this package. Every decoding or encoding error wraps
// ErrMalformed; Verifier.Verify returns one of the others (or ErrMalformed)
// for each message it refuses.
var (
	ErrMalformed       = errors.New("fastpath: malformed redirect")
	ErrUnknownKey      = errors.New("fastpath: unknown key ID")
	ErrBadMAC          = errors.New("fastpath: bad MAC")
	ErrStale           = errors.New("fastpath: timestamp too old")
	ErrFuture          = errors.New("fastpath: timestamp in the future")
	ErrExpired         = errors.New("fastpath: redirect expired")
	ErrReplay          = errors.New("fastpath: replayed nonce")
	ErrReplayCacheFull = errors.New("fastpath: replay cache full")
)

// End is one VM of a redirected connection.
type End struct {
	// DIP and DIPPort are the VM's own address and port.
	DIP     netip.Addr
	DIPPort uint16
	// VIP and VIPPort are the address and port the other VM sees for this
	// one: the SNAT mapping for the source, the load-balanced endpoint for
	// the destination. Same family as DIP.
	VIP     netip.Addr
	VIPPort uint16
	// Host is the physical host that runs the VM: the outer address of the
	// host-to-host encapsulation.
	Host netip.Addr
}

// Redirect is the content of a Fastpath redirect.
type Redirect struct {
	// Proto is the connection's protocol: ProtocolTCP or ProtocolUDP.
	Proto ananta.Protocol
	// Src is the VM that opened the connection, Dst the VM that accepted it.
	// The four inner addresses share one family, the two hosts share one
	// family (which may differ from the inner one).
	Src, Dst End
	// KeyID names the key the message is signed with. Keyring.AppendSigned
	// encodes the current key's ID whatever KeyID holds; Decode and
	// Verifier.Verify fill it in from the message.
	KeyID uint32
	// Timestamp is when the Mux issued the redirect.
	Timestamp time.Time
	// Expiry is when the redirect stops being valid: a Verifier refuses it
	// at or after Expiry. It must be after Timestamp.
	Expiry time.Time
	// Nonce makes each redirect unique; use NewNonce. It must not be zero.
	Nonce [NonceSize]byte
}

// SourceTuple returns the flow as the source VM's host sees it after SNAT:
// Src VIP:port -> Dst VIP:port.
func (r *Redirect) SourceTuple() ananta.FiveTuple {
	return ananta.FiveTuple{Src: r.Src.VIP, Dst: r.Dst.VIP, SrcPort: r.Src.VIPPort, DstPort: r.Dst.VIPPort, Proto: r.Proto}
}

// DestTuple returns the flow as the destination VM's host delivers it after
// DNAT: Src VIP:port -> Dst DIP:port.
func (r *Redirect) DestTuple() ananta.FiveTuple {
	return ananta.FiveTuple{Src: r.Src.VIP, Dst: r.Dst.DIP, SrcPort: r.Src.VIPPort, DstPort: r.Dst.DIPPort, Proto: r.Proto}
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// family returns 4 or 6 for a and whether a may appear in a redirect.
func family(a netip.Addr) (byte, bool) {
	if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
		return 0, false
	}
	if a.Is4() {
		return 4, a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	return 6, !a.Is4In6()
}

func addrLen(fam byte) int {
	if fam == 4 {
		return 4
	}
	return 16
}

func bodySize(inner, host byte) int {
	a, h := addrLen(inner), addrLen(host)
	return headerSize + 2*(a+2+a+2+h)
}

// check validates r and returns its inner and host families.
func (r *Redirect) check() (inner, host byte, err error) {
	if r.Proto != ananta.ProtocolTCP && r.Proto != ananta.ProtocolUDP {
		return 0, 0, malformed("protocol %s (want tcp or udp)", r.Proto)
	}
	names := [...]string{"Src.DIP", "Src.VIP", "Dst.DIP", "Dst.VIP", "Src.Host", "Dst.Host"}
	addrs := [...]netip.Addr{r.Src.DIP, r.Src.VIP, r.Dst.DIP, r.Dst.VIP, r.Src.Host, r.Dst.Host}
	var fams [len(addrs)]byte
	for i, a := range addrs {
		f, ok := family(a)
		if !ok {
			return 0, 0, malformed("%s %v is not a usable unicast address", names[i], a)
		}
		fams[i] = f
	}
	for i := 1; i < 4; i++ {
		if fams[i] != fams[0] {
			return 0, 0, malformed("%s %v and %s %v differ in family", names[0], addrs[0], names[i], addrs[i])
		}
	}
	if fams[5] != fams[4] {
		return 0, 0, malformed("hosts %v and %v differ in family", addrs[4], addrs[5])
	}
	if r.Src.DIPPort == 0 || r.Src.VIPPort == 0 || r.Dst.DIPPort == 0 || r.Dst.VIPPort == 0 {
		return 0, 0, malformed("zero port")
	}
	if r.Nonce == [NonceSize]byte{} {
		return 0, 0, malformed("zero nonce")
	}
	return fams[0], fams[4], nil
}

// unixNano converts t for the wire; ok is false for times the encoding
// cannot hold (before 1970-01-01 plus 1 ns, after 2262).
func unixNano(t time.Time) (int64, bool) {
	n := t.UnixNano()
	return n, n > 0 && time.Unix(0, n).Equal(t)
}

// BodySize returns the length of r's encoding without the MAC, or an error
// wrapping ErrMalformed if r cannot be encoded.
func (r *Redirect) BodySize() (int, error) {
	inner, host, err := r.check()
	if err != nil {
		return 0, err
	}
	return bodySize(inner, host), nil
}

// AppendBinary appends the unsigned encoding of r (every field but the MAC)
// to b. It implements encoding.BinaryAppender and does not allocate when b
// has room. Errors wrap ErrMalformed.
func (r *Redirect) AppendBinary(b []byte) ([]byte, error) {
	inner, host, err := r.check()
	if err != nil {
		return b, err
	}
	ts, ok1 := unixNano(r.Timestamp)
	exp, ok2 := unixNano(r.Expiry)
	if !ok1 || !ok2 {
		return b, malformed("timestamp %v or expiry %v outside 1970..2262", r.Timestamp, r.Expiry)
	}
	if exp <= ts {
		return b, malformed("expiry %v not after timestamp %v", r.Expiry, r.Timestamp)
	}
	b = append(b, Version, inner, host, byte(r.Proto))
	b = binary.BigEndian.AppendUint32(b, r.KeyID)
	b = binary.BigEndian.AppendUint64(b, uint64(ts))
	b = binary.BigEndian.AppendUint64(b, uint64(exp))
	b = append(b, r.Nonce[:]...)
	for _, e := range [2]*End{&r.Src, &r.Dst} {
		b = appendAddr(b, e.DIP)
		b = binary.BigEndian.AppendUint16(b, e.DIPPort)
		b = appendAddr(b, e.VIP)
		b = binary.BigEndian.AppendUint16(b, e.VIPPort)
		b = appendAddr(b, e.Host)
	}
	return b, nil
}

func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(b, v[:]...)
	}
	v := a.As16()
	return append(b, v[:]...)
}

// MarshalBinary returns the unsigned encoding of r. It implements
// encoding.BinaryMarshaler.
func (r *Redirect) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(make([]byte, 0, MaxMessageSize-MACSize))
}

// UnmarshalBinary decodes an unsigned encoding (as written by AppendBinary)
// into r, validating every field. It implements encoding.BinaryUnmarshaler.
// Errors wrap ErrMalformed; r is unchanged on error.
func (r *Redirect) UnmarshalBinary(body []byte) error {
	if len(body) < headerSize {
		return malformed("%d bytes, shorter than the %d-byte header", len(body), headerSize)
	}
	if body[0] != Version {
		return malformed("version %d (want %d)", body[0], Version)
	}
	inner, host := body[1], body[2]
	if (inner != 4 && inner != 6) || (host != 4 && host != 6) {
		return malformed("families %d/%d (want 4 or 6)", inner, host)
	}
	if n := bodySize(inner, host); len(body) != n {
		return malformed("%d bytes, want %d for families %d/%d", len(body), n, inner, host)
	}
	var out Redirect
	out.Proto = ananta.Protocol(body[3])
	out.KeyID = binary.BigEndian.Uint32(body[4:])
	ts := int64(binary.BigEndian.Uint64(body[8:]))
	exp := int64(binary.BigEndian.Uint64(body[16:]))
	if ts <= 0 || exp <= ts {
		return malformed("timestamp %d, expiry %d", ts, exp)
	}
	out.Timestamp, out.Expiry = time.Unix(0, ts), time.Unix(0, exp)
	copy(out.Nonce[:], body[24:40])
	p := body[headerSize:]
	a, h := addrLen(inner), addrLen(host)
	for _, e := range [2]*End{&out.Src, &out.Dst} {
		e.DIP, p = readAddr(p, a)
		e.DIPPort, p = binary.BigEndian.Uint16(p), p[2:]
		e.VIP, p = readAddr(p, a)
		e.VIPPort, p = binary.BigEndian.Uint16(p), p[2:]
		e.Host, p = readAddr(p, h)
	}
	if _, _, err := out.check(); err != nil {
		return err
	}
	*r = out
	return nil
}

func readAddr(p []byte, n int) (netip.Addr, []byte) {
	if n == 4 {
		return netip.AddrFrom4([4]byte(p[:4])), p[4:]
	}
	return netip.AddrFrom16([16]byte(p[:16])), p[16:]
}

// Decode decodes a signed message (body and MAC) without checking the MAC:
// use Verifier.Verify for messages from the network. Errors wrap
// ErrMalformed.
func Decode(msg []byte) (Redirect, error) {
	var r Redirect
	if len(msg) < MinMessageSize || len(msg) > MaxMessageSize {
		return r, malformed("%d bytes (want %d..%d)", len(msg), MinMessageSize, MaxMessageSize)
	}
	err := r.UnmarshalBinary(msg[:len(msg)-MACSize])
	return r, err
}
