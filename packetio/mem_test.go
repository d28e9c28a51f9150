package packetio_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
)

// seqPacket returns a minimal "IPv4" packet of the given size carrying seq.
func seqPacket(seq, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint32(p[4:], uint32(seq))
	return p
}

func seqOf(p []byte) int { return int(binary.BigEndian.Uint32(p[4:])) }

func pipe(t testing.TB, cfg packetio.MemConfig) (a, b *packetio.Mem) {
	t.Helper()
	a, b, err := packetio.Pipe(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// fill sets msgs to carry the packets.
func fill(msgs []packetio.Message, pkts ...[]byte) []packetio.Message {
	for i, p := range pkts {
		copy(msgs[i].Buf[msgs[i].Off:], p)
		msgs[i].N = len(p)
	}
	return msgs[:len(pkts)]
}

func TestNewBatch(t *testing.T) {
	msgs := packetio.NewBatch(3, 100, 40)
	if len(msgs) != 3 {
		t.Fatalf("len = %d", len(msgs))
	}
	for i, m := range msgs {
		if len(m.Buf) != 100 || cap(m.Buf) != 100 || m.Off != 40 || m.N != 0 {
			t.Errorf("msgs[%d] = len %d cap %d Off %d N %d", i, len(m.Buf), cap(m.Buf), m.Off, m.N)
		}
	}
	// Buffers do not overlap: appending to one cannot reach the next.
	msgs[0].Buf = append(msgs[0].Buf, 1)
	if msgs[1].Buf[0] != 0 {
		t.Error("buffers overlap")
	}
	defer func() {
		if recover() == nil {
			t.Error("NewBatch(1, 10, 10) did not panic")
		}
	}()
	packetio.NewBatch(1, 10, 10)
}

func TestMemConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg packetio.MemConfig
		ok  bool
	}{
		{packetio.MemConfig{}, true},
		{packetio.MemConfig{QueueLen: 1, MaxPacket: 1500, Headroom: 40, Block: true}, true},
		{packetio.MemConfig{QueueLen: -1}, false},
		{packetio.MemConfig{MaxPacket: -1}, false},
		{packetio.MemConfig{MaxPacket: 65536}, false},
		{packetio.MemConfig{Headroom: -1}, false},
		{packetio.MemConfig{QueueLen: 1 << 20, MaxPacket: 65535}, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, packetio.ErrInvalidConfig)) {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
		if _, _, perr := packetio.Pipe(tc.cfg); (perr == nil) != tc.ok {
			t.Errorf("%+v: Pipe error %v, want ok=%v", tc.cfg, perr, tc.ok)
		}
	}
}

func TestMemOrderAndBatches(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := pipe(t, packetio.MemConfig{QueueLen: 16, MaxPacket: 256, Headroom: 40})
	out := packetio.NewBatch(10, 100, 0)
	for i := range out {
		p := seqPacket(i, 20+i)
		copy(out[i].Buf, p)
		out[i].N = len(p)
	}
	// Write 10 in two batches (3 and 7), read in batches of 4: 4, 4, 2.
	if n, err := a.WriteBatch(out[:3]); n != 3 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	if n, err := a.WriteBatch(out[3:]); n != 7 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	in := packetio.NewBatch(4, 200, 40)
	seq := 0
	for _, want := range []int{4, 4, 2} {
		n, err := b.ReadBatch(in)
		if n != want || err != nil {
			t.Fatalf("ReadBatch = %d, %v; want %d", n, err, want)
		}
		for i := range n {
			m := in[i]
			if m.Off != 40 || m.N != 20+seq || seqOf(m.Packet()) != seq {
				t.Errorf("packet %d: Off %d N %d seq %d", seq, m.Off, m.N, seqOf(m.Packet()))
			}
			// The reader reset Off even if the caller had moved it.
			in[i].Off = 0
			seq++
		}
	}
	if got := b.Queued(); got != 0 {
		t.Errorf("Queued = %d after reading everything", got)
	}
	wantBytes := uint64(0)
	for i := range 10 {
		wantBytes += uint64(20 + i)
	}
	if st := a.Stats(); st.TxPackets != 10 || st.TxBytes != wantBytes || st.RxPackets != 0 {
		t.Errorf("a stats %+v", st)
	}
	if st := b.Stats(); st.RxPackets != 10 || st.RxBytes != wantBytes || st.TxPackets != 0 || st.RxDropped != 0 {
		t.Errorf("b stats %+v", st)
	}
	// The reverse direction is independent.
	if err := b.WritePacket(seqPacket(99, 30)); err != nil {
		t.Fatal(err)
	}
	p, err := a.ReadPacket(context.Background())
	if err != nil || seqOf(p) != 99 || len(p) != 30 {
		t.Fatalf("ReadPacket = %v, %v", p, err)
	}
	if n, err := b.ReadBatch(nil); n != 0 || err != nil {
		t.Errorf("ReadBatch(nil) = %d, %v", n, err)
	}
}

func TestMemFullQueueDrops(t *testing.T) {
	a, b := pipe(t, packetio.MemConfig{QueueLen: 4, MaxPacket: 64})
	out := packetio.NewBatch(6, 64, 0)
	for i := range out {
		fill(out[i:i+1], seqPacket(i, 32))
	}
	// Like a NIC: the write succeeds, the receiver's full ring drops.
	if n, err := a.WriteBatch(out); n != 6 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	if st := b.Stats(); st.RxDropped != 2 {
		t.Errorf("b RxDropped = %d, want 2", st.RxDropped)
	}
	if st := a.Stats(); st.TxPackets != 6 || st.TxDropped != 0 {
		t.Errorf("a stats %+v", st)
	}
	in := packetio.NewBatch(8, 64, 0)
	n, err := b.ReadBatch(in)
	if n != 4 || err != nil {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	for i := range n {
		if seqOf(in[i].Packet()) != i {
			t.Errorf("packet %d has seq %d: the oldest must survive", i, seqOf(in[i].Packet()))
		}
	}
	// Inject does not drop: it reports the full queue.
	for i := range 4 {
		if err := b.Inject(seqPacket(10+i, 20)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Inject(seqPacket(14, 20)); !errors.Is(err, packetio.ErrQueueFull) {
		t.Errorf("Inject on a full queue = %v, want ErrQueueFull", err)
	}
}

func TestMemFullQueueBlocks(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := pipe(t, packetio.MemConfig{QueueLen: 4, MaxPacket: 64, Block: true})
	out := packetio.NewBatch(10, 64, 0)
	for i := range out {
		fill(out[i:i+1], seqPacket(i, 32))
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := a.WriteBatch(out)
		done <- result{n, err}
	}()
	waitBlocked(t, "(*Mem).WriteBatch")
	if q := b.Queued(); q != 4 {
		t.Fatalf("Queued = %d while the writer waits, want 4", q)
	}
	in := packetio.NewBatch(3, 64, 0)
	seq := 0
	for seq < 10 {
		n, err := b.ReadBatch(in)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if got := seqOf(in[i].Packet()); got != seq {
				t.Fatalf("got seq %d, want %d", got, seq)
			}
			seq++
		}
	}
	if r := <-done; r.n != 10 || r.err != nil {
		t.Fatalf("WriteBatch = %d, %v", r.n, r.err)
	}
	if st := b.Stats(); st.RxDropped != 0 {
		t.Errorf("blocking pipe dropped %d", st.RxDropped)
	}
}

func TestMemCloseUnblocks(t *testing.T) {
	testutil.CheckGoroutines(t)
	t.Run("reader", func(t *testing.T) {
		a, b := pipe(t, packetio.MemConfig{})
		errc := make(chan error, 1)
		go func() {
			_, err := b.ReadBatch(packetio.NewBatch(4, 100, 0))
			errc <- err
		}()
		waitBlocked(t, "(*Mem).ReadBatch")
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, packetio.ErrClosed) {
				t.Fatalf("blocked ReadBatch returned %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock ReadBatch")
		}
		if err := b.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		if _, err := b.ReadBatch(packetio.NewBatch(1, 100, 0)); !errors.Is(err, packetio.ErrClosed) {
			t.Errorf("ReadBatch after Close = %v", err)
		}
		if err := b.WritePacket(seqPacket(0, 20)); !errors.Is(err, packetio.ErrClosed) {
			t.Errorf("WriteBatch after Close = %v", err)
		}
		if err := b.Inject(seqPacket(0, 20)); !errors.Is(err, packetio.ErrClosed) {
			t.Errorf("Inject after Close = %v", err)
		}
		// The peer's writes go nowhere and are counted.
		if err := a.WritePacket(seqPacket(0, 20)); err != nil {
			t.Errorf("write to a closed peer = %v, want a counted drop", err)
		}
		if st := a.Stats(); st.TxDropped != 1 || st.TxPackets != 0 {
			t.Errorf("a stats after writing to a closed peer: %+v", st)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := a.ReadPacket(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("ReadPacket(cancelled) = %v", err)
		}
	})
	for _, closer := range []string{"self", "peer"} {
		t.Run("blocked writer, "+closer+" closes", func(t *testing.T) {
			a, b := pipe(t, packetio.MemConfig{QueueLen: 1, Block: true})
			errc := make(chan error, 1)
			go func() {
				out := packetio.NewBatch(3, 64, 0)
				for i := range out {
					fill(out[i:i+1], seqPacket(i, 20))
				}
				_, err := a.WriteBatch(out)
				errc <- err
			}()
			waitBlocked(t, "(*Mem).WriteBatch")
			want := packetio.ErrClosed
			if closer == "self" {
				a.Close()
			} else {
				b.Close()
				want = nil // the rest is dropped
			}
			select {
			case err := <-errc:
				if !errors.Is(err, want) {
					t.Fatalf("blocked WriteBatch returned %v, want %v", err, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock WriteBatch")
			}
			if closer == "peer" {
				if st := a.Stats(); st.TxPackets != 1 || st.TxDropped != 2 {
					t.Errorf("writer stats %+v, want 1 sent and 2 dropped", st)
				}
			}
		})
	}
}

func TestMemInvalidAndTruncated(t *testing.T) {
	a, b := pipe(t, packetio.MemConfig{QueueLen: 8, MaxPacket: 128, Headroom: 8})
	out := packetio.NewBatch(4, 256, 0)
	good := seqPacket(1, 20)
	for _, tc := range []struct {
		name string
		msg  packetio.Message
		want error
	}{
		{"empty", packetio.Message{Buf: good}, packetio.ErrInvalidPacket},
		{"negative Off", packetio.Message{Buf: good, Off: -1, N: 4}, packetio.ErrInvalidPacket},
		{"past the buffer", packetio.Message{Buf: good, Off: 10, N: 11}, packetio.ErrInvalidPacket},
		{"version 5", packetio.Message{Buf: []byte{0x50, 0}, N: 2}, packetio.ErrInvalidPacket},
		{"too big", packetio.Message{Buf: seqPacket(1, 129), N: 129}, packetio.ErrTooBig},
	} {
		msgs := fill(out[:1], good)
		msgs = append(msgs, tc.msg)
		if n, err := a.WriteBatch(msgs); n != 1 || !errors.Is(err, tc.want) {
			t.Errorf("%s: WriteBatch = %d, %v; want 1, %v", tc.name, n, err, tc.want)
		}
		if tc.msg.Off == 0 && tc.msg.N <= len(tc.msg.Buf) {
			if err := a.Inject(tc.msg.Buf[:tc.msg.N]); !errors.Is(err, tc.want) {
				t.Errorf("%s: Inject = %v, want %v", tc.name, err, tc.want)
			}
		}
	}
	in := packetio.NewBatch(8, 64, 8)
	if n, err := b.ReadBatch(in); n != 5 || err != nil {
		t.Fatalf("ReadBatch = %d, %v; want the 5 good packets", n, err)
	}
	if _, err := b.ReadBatch(packetio.NewBatch(1, 8, 0)); !errors.Is(err, packetio.ErrShortBuffer) {
		t.Errorf("ReadBatch with a buffer no larger than the headroom = %v", err)
	}
	// A packet that does not fit the reader's buffer is dropped and counted;
	// the ones around it arrive in order.
	for _, size := range []int{20, 100, 30} {
		if err := a.WritePacket(seqPacket(size, size)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := b.ReadBatch(in)
	if n != 2 || err != nil || in[0].N != 20 || in[1].N != 30 {
		t.Fatalf("ReadBatch = %d, %v (N %d, %d); want 20- and 30-byte packets", n, err, in[0].N, in[1].N)
	}
	if st := b.Stats(); st.RxTruncated != 1 {
		t.Errorf("RxTruncated = %d, want 1", st.RxTruncated)
	}
}

func TestMemConcurrent(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, block := range []bool{true, false} {
		a, b := pipe(t, packetio.MemConfig{QueueLen: 64, MaxPacket: 128, Block: block})
		const total = 20000
		var wg sync.WaitGroup
		wg.Add(3)
		go func() { // writer
			defer wg.Done()
			out := packetio.NewBatch(16, 128, 0)
			for seq := 0; seq < total; {
				k := min(len(out), total-seq)
				for i := range k {
					fill(out[i:i+1], seqPacket(seq+i, 20+(seq+i)%100))
				}
				n, err := a.WriteBatch(out[:k])
				if err != nil {
					t.Error(err)
					return
				}
				seq += n
			}
			// An end marker the reader stops on. Inject never drops it: it
			// reports a full queue, and the reader is draining.
			for i := 0; ; i++ {
				err := b.Inject(seqPacket(-1, 20))
				if err == nil {
					break
				}
				if !errors.Is(err, packetio.ErrQueueFull) || i > 1e7 {
					t.Errorf("end marker: %v after %d tries", err, i)
					b.Close()
					return
				}
				runtime.Gosched()
			}
		}()
		stop := make(chan struct{})
		go func() { // stats reader, concurrent with both
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_ = a.Stats()
					_ = b.Stats()
					_ = b.Queued()
				}
			}
		}()
		got := 0
		go func() { // reader
			defer wg.Done()
			defer close(stop)
			in := packetio.NewBatch(7, 128, 0)
			last := -1
			for {
				n, err := b.ReadBatch(in)
				if err != nil {
					t.Error(err)
					return
				}
				for i := range n {
					seq := seqOf(in[i].Packet())
					if seq == int(^uint32(0)) {
						return
					}
					if seq <= last || in[i].N != 20+seq%100 {
						t.Errorf("seq %d (N %d) after %d", seq, in[i].N, last)
						return
					}
					last = seq
					got++
				}
			}
		}()
		wg.Wait()
		st := b.Stats()
		if uint64(got)+st.RxDropped != total {
			t.Errorf("block=%v: read %d + dropped %d != %d", block, got, st.RxDropped, total)
		}
		if block && st.RxDropped != 0 {
			t.Errorf("blocking pipe dropped %d", st.RxDropped)
		}
	}
}

func TestMemInjectAndReadPacket(t *testing.T) {
	a, b := pipe(t, packetio.MemConfig{Headroom: 20})
	pkt := seqPacket(7, 60)
	if err := a.Inject(pkt); err != nil {
		t.Fatal(err)
	}
	in := packetio.NewBatch(2, 100, 20)
	n, err := a.ReadBatch(in)
	if n != 1 || err != nil || !bytes.Equal(in[0].Packet(), pkt) || in[0].Off != 20 {
		t.Fatalf("ReadBatch after Inject = %d, %v", n, err)
	}
	if st := b.Stats(); st.TxPackets != 0 {
		t.Errorf("Inject counted on the peer: %+v", st)
	}
	// A reader prepends a header into the headroom and forwards the same
	// message: the peer gets header + packet.
	in[0].Off -= 20
	in[0].N += 20
	in[0].Buf[0] = 0x45
	if n, err := a.WriteBatch(in[:1]); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := b.ReadPacket(ctx)
	if err != nil || len(got) != 80 || !bytes.Equal(got[20:], pkt) {
		t.Fatalf("ReadPacket = %d bytes, %v", len(got), err)
	}
}

func TestMemNoAllocations(t *testing.T) {
	a, b := pipe(t, packetio.MemConfig{QueueLen: 64, MaxPacket: 1500, Headroom: 40})
	out := packetio.NewBatch(32, 1500, 40)
	for i := range out {
		fill(out[i:i+1], seqPacket(i, 1000))
	}
	in := packetio.NewBatch(32, 1540, 40)
	allocs := testing.AllocsPerRun(200, func() {
		if n, err := a.WriteBatch(out); n != 32 || err != nil {
			t.Fatal(n, err)
		}
		if n, err := b.ReadBatch(in); n != 32 || err != nil {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("write+read of 32 packets allocates %v times, want 0", allocs)
	}
}
