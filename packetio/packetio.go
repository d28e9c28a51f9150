package packetio

import "fmt"

// Message is one packet slot of a batch.
//
// Buf belongs to the caller and is reused from batch to batch. After a read,
// the packet is Buf[Off:Off+N] and Off equals the port's configured headroom:
// Buf[:Off] is free space in front of the packet where an outer header may be
// written. WriteBatch sends Buf[Off:Off+N].
type Message struct {
	Buf []byte
	Off int
	N   int
}

// Packet returns the packet bytes, Buf[Off:Off+N].
func (m *Message) Packet() []byte { return m.Buf[m.Off : m.Off+m.N] }

// NewBatch allocates n messages whose buffers are bufSize bytes each, carved
// out of one backing array, with Off set to headroom and N to zero. The
// largest packet a message can then receive is bufSize-headroom bytes. It
// panics if n < 0, headroom < 0 or bufSize <= headroom.
func NewBatch(n, bufSize, headroom int) []Message {
	if n < 0 || headroom < 0 || bufSize <= headroom {
		panic(fmt.Sprintf("packetio: NewBatch(%d, %d, %d): need n >= 0 and 0 <= headroom < bufSize", n, bufSize, headroom))
	}
	backing := make([]byte, n*bufSize)
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Buf: backing[i*bufSize : (i+1)*bufSize : (i+1)*bufSize], Off: headroom}
	}
	return msgs
}

// Port reads and writes batches of IP packets. See the package
// documentation for the goroutine rules shared by every implementation.
type Port interface {
	// ReadBatch blocks until at least one packet is available, then fills
	// msgs[0:n] with up to len(msgs) packets, setting each message's Off to
	// the port's headroom and N to the packet length, and returns n >= 1.
	// Packets that do not fit in Buf[Off:] are dropped and counted in
	// Stats.RxTruncated; to skip them ReadBatch may reorder the Message
	// values inside msgs (each Buf moves with its Message; msgs[0:n] keeps
	// arrival order). It returns ErrClosed once the port is closed,
	// ErrShortBuffer if a buffer has no room after the headroom, and 0, nil
	// if len(msgs) == 0.
	ReadBatch(msgs []Message) (int, error)

	// WriteBatch sends msgs[i].Buf[Off:Off+N] for each message in order and
	// returns how many were sent. If n < len(msgs), err tells why msgs[n]
	// was not sent (ErrInvalidPacket, ErrTooBig, ErrClosed or a kernel
	// error); the caller may skip it and retry with msgs[n+1:]. A packet
	// that the port drops by policy (a full queue) counts as sent and is
	// counted in Stats. WriteBatch does not modify msgs.
	WriteBatch(msgs []Message) (int, error)

	// Stats returns the port's counters so far.
	Stats() Stats

	// Close releases the port and unblocks pending calls. It is idempotent:
	// later calls return nil.
	Close() error
}

// Stats are a port's counters. Every field only grows.
type Stats struct {
	RxPackets, RxBytes uint64 // packets returned by ReadBatch
	TxPackets, TxBytes uint64 // packets accepted by WriteBatch
	// RxDropped counts packets lost before ReadBatch could return them:
	// the kernel's socket drops (AF_PACKET, from PACKET_STATISTICS) or a
	// full receive queue (Mem).
	RxDropped uint64
	// RxTruncated counts packets dropped because they did not fit in the
	// reader's buffer after the headroom.
	RxTruncated uint64
	// RxGSO counts segmentation-offload super-packets an AF_PACKET port
	// dropped (see AFPacket, Offloads).
	RxGSO uint64
	// TxDropped counts packets WriteBatch accepted but could not deliver
	// (Mem: the peer port was closed; AF_PACKET: ENOBUFS from the kernel).
	TxDropped uint64
}

// checkRead validates a read batch's buffers against the headroom.
func checkRead(msgs []Message, headroom int) error {
	for i := range msgs {
		if len(msgs[i].Buf) <= headroom {
			return fmt.Errorf("%w: message %d: len(Buf) = %d, headroom %d", ErrShortBuffer, i, len(msgs[i].Buf), headroom)
		}
	}
	return nil
}

// checkWrite validates one message for writing and returns its packet.
func checkWrite(m *Message) ([]byte, error) {
	if m.Off < 0 || m.N <= 0 || m.Off > len(m.Buf) || m.N > len(m.Buf)-m.Off {
		return nil, fmt.Errorf("%w: Off %d, N %d, len(Buf) %d", ErrInvalidPacket, m.Off, m.N, len(m.Buf))
	}
	p := m.Buf[m.Off : m.Off+m.N]
	if v := p[0] >> 4; v != 4 && v != 6 {
		return nil, fmt.Errorf("%w: IP version %d", ErrInvalidPacket, v)
	}
	return p, nil
}

// compact moves the messages for which keep(i) is true to the front of
// msgs, in order, and returns how many there are. keep is called with the
// original index of each message, once, in increasing order.
func compact(msgs []Message, keep func(i int) bool) int {
	w := 0
	for i := range msgs {
		if keep(i) {
			if w != i {
				msgs[w], msgs[i] = msgs[i], msgs[w]
			}
			w++
		}
	}
	return w
}
