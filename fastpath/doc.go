// Package fastpath encodes, signs and verifies Fastpath redirects: the small
// UDP message with which a Mux tells the two Host Agents of a VIP-to-VIP TCP
// connection to exchange its packets host to host, so that the Muxes carry
// only the connection's first packets.
//
// Ananta accepted a redirect from any source in its service range, so a
// host that could spoof such a source could steal flows. Here every redirect
// carries an HMAC-SHA256 under a key that the Manager distributes, a key ID,
// a timestamp, an expiry and a random nonce; a Verifier drops and counts
// anything that is malformed, signed with an unknown key or a wrong MAC,
// outside the clock-skew window, expired, or already seen.
//
// A Redirect describes the connection by its two ends. Src is the VM that
// opened it: its DIP and port, the VIP and port its Host Agent SNATs it to,
// and its host. Dst is the VM that accepted it: its DIP and port, the VIP
// and port it is reached at, and its host. SourceTuple is the flow as the
// source host sees it after SNAT (Src VIP:port -> Dst VIP:port, the flow the
// Muxes saw); DestTuple is the flow as the destination host delivers it after
// DNAT (Src VIP:port -> Dst DIP:port). Both VMs keep seeing VIP addresses.
//
// The sender builds a Keyring with NewKeyring and signs with
// Keyring.AppendSigned; the receiver builds a Verifier with NewVerifier over a
// Keyring holding the same keys and calls Verifier.Verify for every message.
// Keyring.Rotate installs a new current key and keeps the one it replaces as
// previous: both verify, only the current one signs.
//
// # Wire format (version 1)
//
// All integers are big-endian. A is the length of an inner (DIP/VIP) address,
// 4 or 16; H is the length of a host address, 4 or 16.
//
//	offset  size  field
//	0       1     version (1)
//	1       1     inner family: 4 or 6 (DIPs and VIPs)
//	2       1     host family: 4 or 6 (both hosts)
//	3       1     protocol (6 TCP or 17 UDP)
//	4       4     key ID
//	8       8     timestamp, Unix nanoseconds (> 0)
//	16      8     expiry, Unix nanoseconds (> timestamp)
//	24      16    nonce (not all zero)
//	40      A+2+A+2+H  Src: DIP, DIP port, VIP, VIP port, host
//	...     A+2+A+2+H  Dst: same layout
//	...     32    HMAC-SHA256 of every preceding byte
//
// A message is 104 bytes when everything is IPv4 and 176 bytes when
// everything is IPv6; its length must match its families exactly. Decoding
// refuses unknown versions and families, other protocols, zero ports,
// invalid, unspecified, loopback, multicast and IPv4 broadcast addresses,
// IPv4-mapped IPv6 addresses, a zero nonce and an expiry not after the
// timestamp, so every accepted message re-encodes to the same bytes.
//
// # Replay protection
//
// A Verifier accepts a timestamp within Window of its now (default 2 s of
// clock skew either way) and remembers the nonce of every accepted message
// until that message's timestamp leaves the window, after which the message
// is refused as stale anyway. Nonces are kept in time buckets that are
// dropped whole; at most MaxNonces are kept, and when that many are live the
// Verifier refuses new messages (ErrReplayCacheFull, counted) rather than
// forget a nonce that could still be replayed.
package fastpath
