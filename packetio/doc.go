// Package packetio moves batches of IP packets between a data path (the Mux
// worker loop, the Host Agent) and the outside world without allocating per
// packet.
//
// A [Port] reads and writes batches of [Message]. Each Message carries a
// caller-owned buffer; a read places the packet at Buf[Off:Off+N] with Off set
// to the headroom the port was configured with, so that the data path can
// prepend an outer header (IP-in-IP: 20 or 40 bytes) in place by lowering Off
// and raising N, then hand the same Message to WriteBatch. Allocate buffers
// once with [NewBatch] and reuse them for every batch.
//
// Three implementations:
//
//   - [Pipe] returns two connected in-memory ports ([Mem]) with bounded,
//     preallocated queues: for unit tests, simulations and users' own policy
//     tests. No privileges needed.
//   - [OpenAFPacket] opens a Linux AF_PACKET socket bound to one interface,
//     batched with recvmmsg/sendmmsg. It carries IP packets: the port strips
//     and builds the link-layer header itself (the next hop's address is
//     configured, see [LookupNeighbor]). It completes checksums left to
//     offload and drops segmentation-offload super-packets, which
//     [DisableOffloads] prevents. It is the Mux's uplink and the Host
//     Agent's.
//   - [OpenTUN] creates or attaches to a Linux TUN device (IFF_TUN|IFF_NO_PI),
//     one packet per syscall behind the batch interface: a VM's NIC as seen
//     from the Host Agent.
//
// Every port carries layer-3 packets only: the first byte's version nibble is
// 4 or 6. Nothing else is read or written.
//
// # Calling rules
//
// For every Port: one ReadBatch and one WriteBatch may run at the same time
// on different goroutines (a reader and a writer worker). Calls of the same
// method on one port are serialised by the port, so a second concurrent
// ReadBatch waits for the first. Close and Stats may be called at any time
// from any goroutine; Close unblocks a pending ReadBatch or WriteBatch, which
// then return [ErrClosed], as does every later call. To spread one interface
// over several workers give each its own port (AF_PACKET: the same
// FanoutGroup).
//
// # Namespaces
//
// AF_PACKET sockets and TUN devices belong to the network namespace of the
// OS thread that creates them, and the interface named in the config is
// looked up there. To use a namespace other than the process's, call
// OpenAFPacket, OpenTUN, LookupNeighbor and DisableOffloads on a thread
// locked into that
// namespace (runtime.LockOSThread plus setns, as internal/testutil's
// NetNS.Do does), or run the process inside it (ip netns exec). The returned
// port may then be used from any goroutine.
//
// # AF_PACKET is a tap
//
// An AF_PACKET socket receives a copy of each packet; the kernel's own stack
// still processes the original. A data path that owns the traffic must keep
// the kernel from answering it too: leave the addresses it handles (VIPs)
// unconfigured on the interface and forwarding off, or drop the packets at
// tc or nftables ingress, which run after packet taps.
package packetio

import "errors"

// Errors returned by this package. Errors from the kernel are wrapped with
// %w together with the matching sentinel, so both errors.Is(err,
// ErrTooBig) and errors.Is(err, unix.EMSGSIZE) hold where both apply.
var (
	// ErrClosed is returned by ReadBatch and WriteBatch on a port that has
	// been closed, including calls that were blocked when Close ran.
	ErrClosed = errors.New("packetio: port closed")

	// ErrInvalidConfig wraps every configuration error returned by a
	// config's Validate method and by the constructors.
	ErrInvalidConfig = errors.New("packetio: invalid config")

	// ErrInvalidPacket is returned by WriteBatch for a message whose
	// Off and N do not describe a non-empty slice of Buf, or whose first
	// byte does not hold IP version 4 or 6.
	ErrInvalidPacket = errors.New("packetio: invalid packet")

	// ErrTooBig is returned by WriteBatch for a packet larger than the port
	// can carry (the interface MTU, or a Mem port's MaxPacket).
	ErrTooBig = errors.New("packetio: packet too big")

	// ErrShortBuffer is returned by ReadBatch when a message's buffer has no
	// room after the port's headroom.
	ErrShortBuffer = errors.New("packetio: buffer shorter than headroom + 1")

	// ErrQueueFull is returned by Mem.Inject when the receive queue is full.
	ErrQueueFull = errors.New("packetio: queue full")

	// ErrNoNextHop is returned by AFPacket.WriteBatch when the port was
	// configured without a destination link-layer address.
	ErrNoNextHop = errors.New("packetio: no next-hop link-layer address configured")

	// ErrNoNeighbor is returned by LookupNeighbor when the kernel's
	// neighbour table holds no usable entry for the address.
	ErrNoNeighbor = errors.New("packetio: no neighbour entry")
)
