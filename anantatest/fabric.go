package anantatest

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/mux"
)

// Stage names the component that dropped a packet.
type Stage string

// Stages.
const (
	// StageNone: the packet was delivered to a VM.
	StageNone Stage = ""
	// StageFabric: the fabric could not route the packet (it does not
	// parse, or its outer destination is no host).
	StageFabric Stage = "fabric"
	// StageMux: the Mux dropped it (Delivery.MuxReason) or answered it
	// with an ICMP error (Delivery.MuxAction is mux.ActionReply).
	StageMux Stage = "mux"
	// StageHost: the Host Agent dropped it (Delivery.HostReason) or did
	// not deliver it to a VM.
	StageHost Stage = "host"
)

// Delivery is what became of one packet sent into the fabric.
type Delivery struct {
	// Mux is the number of the Mux that received the packet; -1 if none.
	Mux int
	// Host is the number of the host that received the tunnelled packet;
	// -1 if none.
	Host int
	// DroppedBy is StageNone when the packet reached a VM, else the stage
	// that stopped it.
	DroppedBy Stage
	// MuxAction, MuxReason: the Mux's verdict.
	MuxAction mux.Action
	MuxReason mux.DropReason
	// HostVerdict, HostReason: the Host Agent's verdict.
	HostVerdict hostagent.Verdict
	HostReason  hostagent.DropReason
	// Err says why the fabric dropped the packet (StageFabric).
	Err error
	// VM is the DIP of the VM that received the packet, DIP the packet's
	// destination as the VM saw it (after NAT): the backend it landed on.
	VM  netip.Addr
	DIP netip.AddrPort
	// Packet is the packet as the VM received it.
	Packet []byte
	// Reply is what the host sent to the router for the Handler's answer,
	// after the Host Agent's reverse NAT (source VIP:port); nil without a
	// Handler, or when it answered nothing or the host dropped the answer
	// (ReplyVerdict, ReplyReason).
	Reply        []byte
	ReplyVerdict hostagent.Verdict
	ReplyReason  hostagent.DropReason
}

// Delivered reports whether the packet reached a VM.
func (d Delivery) Delivered() bool { return d.DroppedBy == StageNone }

// String describes the delivery, for test failures.
func (d Delivery) String() string {
	switch d.DroppedBy {
	case StageNone:
		return fmt.Sprintf("delivered to %v (mux %d, host %d)", d.DIP, d.Mux, d.Host)
	case StageMux:
		if d.MuxAction == mux.ActionReply {
			return fmt.Sprintf("answered by mux %d with an ICMP error", d.Mux)
		}
		return fmt.Sprintf("dropped by mux %d: %v", d.Mux, d.MuxReason)
	case StageHost:
		if d.HostVerdict == hostagent.Drop {
			return fmt.Sprintf("dropped by host %d (via mux %d): %v", d.Host, d.Mux, d.HostReason)
		}
		return fmt.Sprintf("not delivered by host %d (via mux %d): %v", d.Host, d.Mux, d.HostVerdict)
	default:
		return fmt.Sprintf("dropped by the fabric: %v", d.Err)
	}
}

// Key names the outcome: "dip:port" when delivered, else "mux:reason",
// "host:reason" or "fabric". Tally counts by it.
func (d Delivery) Key() string {
	switch d.DroppedBy {
	case StageNone:
		return d.DIP.String()
	case StageMux:
		if d.MuxAction == mux.ActionReply {
			return "mux:reply"
		}
		return "mux:" + d.MuxReason.String()
	case StageHost:
		if d.HostVerdict == hostagent.Drop {
			return "host:" + d.HostReason.String()
		}
		return "host:" + d.HostVerdict.String()
	default:
		return "fabric"
	}
}

// ECMP returns the number of the Mux a router sends pkt to: a hash of its
// 5-tuple modulo the number of Muxes, so all packets of a flow take one
// Mux. It returns -1 if pkt does not parse.
func (d *Deployment) ECMP(pkt []byte) int {
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil {
		return -1
	}
	return ecmp(p.Tuple, len(d.muxes))
}

func ecmp(t ananta.FiveTuple, n int) int {
	h := fnv.New64a()
	s, ds := t.Src.As16(), t.Dst.As16()
	h.Write(s[:])
	h.Write(ds[:])
	var b [5]byte
	binary.BigEndian.PutUint16(b[0:], t.SrcPort)
	binary.BigEndian.PutUint16(b[2:], t.DstPort)
	b[4] = byte(t.Proto)
	h.Write(b[:])
	return int(h.Sum64() % uint64(n))
}

// Send sends an IP packet (no link-layer header) from the outside to the
// Mux picked by ECMP, and follows it to a VM. pkt is not modified.
func (d *Deployment) Send(pkt []byte) Delivery {
	i := d.ECMP(pkt)
	if i < 0 {
		var p encap.Packet
		return Delivery{Mux: -1, Host: -1, DroppedBy: StageFabric, Err: encap.Parse(pkt, &p)}
	}
	return d.SendVia(i, pkt)
}

// SendVia is Send through Mux number i, whatever ECMP says (as after a
// router's ECMP set changed).
func (d *Deployment) SendVia(i int, pkt []byte) Delivery {
	out := Delivery{Mux: i, Host: -1}
	buf := make([]byte, mux.Headroom+len(pkt))
	copy(buf[mux.Headroom:], pkt)
	v, start, end := d.muxes[i].Process(buf, mux.Headroom, len(buf))
	out.MuxAction, out.MuxReason = v.Action, v.Reason
	if v.Action != mux.ActionForward {
		out.DroppedBy = StageMux
		return out
	}
	var p encap.Packet
	if err := encap.Parse(buf[start:end], &p); err != nil {
		out.DroppedBy, out.Err = StageFabric, err
		return out
	}
	h, ok := d.hostOf[p.Tuple.Dst]
	if !ok {
		out.DroppedBy, out.Err = StageFabric, fmt.Errorf("no host has the tunnel's destination %v", p.Tuple.Dst)
		return out
	}
	out.Host = h
	eng := d.hosts[h].Engine()
	r := eng.ProcessInbound(buf, start, end)
	out.HostVerdict, out.HostReason = r.Verdict, r.Reason
	if r.Verdict != hostagent.ToVM {
		out.DroppedBy = StageHost
		return out
	}
	out.Packet = append([]byte(nil), buf[r.Start:r.End]...)
	if r.VM >= 0 && r.VM < len(d.vmDIP[h]) {
		out.VM = d.vmDIP[h][r.VM]
	}
	var in encap.Packet
	if err := encap.Parse(out.Packet, &in); err == nil {
		out.DIP = netip.AddrPortFrom(in.Tuple.Dst, in.Tuple.DstPort)
	}
	if d.opts.Handler == nil {
		return out
	}
	reply := d.opts.Handler(out.VM, append([]byte(nil), out.Packet...))
	if reply == nil {
		return out
	}
	rb := make([]byte, len(reply))
	copy(rb, reply)
	rr := eng.ProcessOutbound(r.VM, rb, 0, len(rb))
	out.ReplyVerdict, out.ReplyReason = rr.Verdict, rr.Reason
	if rr.Verdict == hostagent.ToUplink {
		out.Reply = rb[rr.Start:rr.End]
	}
	return out
}

// TCP flags for TCP.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// TCP returns an IPv4 TCP packet of flow t (t.Proto is ignored) with the
// given flags and payload, checksums set.
func TCP(t ananta.FiveTuple, flags uint8, payload []byte) []byte {
	b := ipv4(t, ananta.ProtocolTCP, 20+len(payload))
	l4 := b[20:]
	binary.BigEndian.PutUint16(l4[0:], t.SrcPort)
	binary.BigEndian.PutUint16(l4[2:], t.DstPort)
	binary.BigEndian.PutUint32(l4[4:], 1000)
	if flags&ACK != 0 {
		binary.BigEndian.PutUint32(l4[8:], 1)
	}
	l4[12] = 5 << 4
	l4[13] = flags
	binary.BigEndian.PutUint16(l4[14:], 65535)
	copy(l4[20:], payload)
	binary.BigEndian.PutUint16(l4[16:], encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(t.Src, t.Dst, ananta.ProtocolTCP, len(l4)))))
	return b
}

// UDP returns an IPv4 UDP datagram of flow t (t.Proto is ignored),
// checksums set.
func UDP(t ananta.FiveTuple, payload []byte) []byte {
	b := ipv4(t, ananta.ProtocolUDP, 8+len(payload))
	l4 := b[20:]
	binary.BigEndian.PutUint16(l4[0:], t.SrcPort)
	binary.BigEndian.PutUint16(l4[2:], t.DstPort)
	binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	copy(l4[8:], payload)
	c := encap.Finish(encap.Sum(l4, encap.PseudoHeaderSum(t.Src, t.Dst, ananta.ProtocolUDP, len(l4))))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[6:], c)
	return b
}

func ipv4(t ananta.FiveTuple, proto ananta.Protocol, l4len int) []byte {
	if !t.Src.Is4() || !t.Dst.Is4() {
		panic(fmt.Sprintf("anantatest: %v: the packet helpers build IPv4 only", t))
	}
	b := make([]byte, 20+l4len)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[6] = 0x40 // DF
	b[8] = 64
	b[9] = byte(proto)
	s, ds := t.Src.As4(), t.Dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], ds[:])
	binary.BigEndian.PutUint16(b[10:], encap.Checksum(b[:20]))
	return b
}

// Reply is a Handler's typical answer to pkt, an IPv4 TCP or UDP packet as
// the VM received it: a TCP SYN gets a SYN-ACK, another TCP packet an ACK,
// a UDP datagram the same payload back; anything else gets no answer.
func Reply(pkt []byte) []byte {
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil || p.Version != 4 {
		return nil
	}
	r := p.Tuple.Reverse()
	switch p.Tuple.Proto {
	case ananta.ProtocolTCP:
		if p.TCPFlags&RST != 0 {
			return nil
		}
		if p.TCPFlags&SYN != 0 {
			return TCP(r, SYN|ACK, nil)
		}
		return TCP(r, ACK, nil)
	case ananta.ProtocolUDP:
		return UDP(r, pkt[p.L4Offset+8:p.TotalLen])
	}
	return nil
}

// Clients returns n TCP flows to dst from distinct clients: flow k (k from
// first to first+n-1) comes from 100.64.0.0/10, address k/50000 and port
// 10000+k%50000 in it. The same k always gives the same flow.
func Clients(dst netip.AddrPort, first, n int) []ananta.FiveTuple {
	out := make([]ananta.FiveTuple, n)
	for i := range out {
		k := first + i
		a := uint32(100)<<24 | uint32(64)<<16 | uint32(k/50000)
		out[i] = ananta.FiveTuple{
			Src:     netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}),
			Dst:     dst.Addr(),
			SrcPort: uint16(10000 + k%50000),
			DstPort: dst.Port(),
			Proto:   ananta.ProtocolTCP,
		}
	}
	return out
}

// Open opens each TCP flow as a client would, a SYN then an ACK (so the
// Muxes track it as established), and tallies where the SYNs landed. A flow
// whose ACK lands elsewhere than its SYN is counted in Tally.Moved.
func (d *Deployment) Open(flows []ananta.FiveTuple) Tally {
	t := newTally()
	for _, f := range flows {
		first := d.Send(TCP(f, SYN, nil))
		t.Add(first)
		if !first.Delivered() {
			continue
		}
		if second := d.Send(TCP(f, ACK, nil)); second.Key() != first.Key() {
			t.Moved++
		}
	}
	return t
}

// Continue sends one more packet (ACK with a payload) on each flow and
// tallies where they landed.
func (d *Deployment) Continue(flows []ananta.FiveTuple) Tally {
	t := newTally()
	for _, f := range flows {
		t.Add(d.Send(TCP(f, ACK|PSH, []byte("data"))))
	}
	return t
}

// Tally counts outcomes of many packets by Delivery.Key: "dip:port" for
// delivered packets, "mux:reason", "host:reason" or "fabric" for the others.
type Tally struct {
	Counts map[string]int
	Total  int
	// Moved counts flows of Open whose second packet did not land where the
	// first did.
	Moved int
}

func newTally() Tally { return Tally{Counts: map[string]int{}} }

// Add counts one delivery.
func (t *Tally) Add(d Delivery) {
	if t.Counts == nil {
		t.Counts = map[string]int{}
	}
	t.Counts[d.Key()]++
	t.Total++
}

// Landed returns how many packets landed on backend dip:port.
func (t Tally) Landed(dip netip.AddrPort) int { return t.Counts[dip.String()] }

// Share returns the share of all packets that landed on dip:port, in [0, 1].
func (t Tally) Share(dip netip.AddrPort) float64 {
	if t.Total == 0 {
		return 0
	}
	return float64(t.Landed(dip)) / float64(t.Total)
}

// String lists the counts in key order.
func (t Tally) String() string {
	keys := make([]string, 0, len(t.Counts))
	for k := range t.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := fmt.Sprintf("%d packets:", t.Total)
	for _, k := range keys {
		s += fmt.Sprintf(" %s=%d", k, t.Counts[k])
	}
	return s
}

// Outbound is what became of a packet a VM sent (SendFromVM).
type Outbound struct {
	// Host is the number of the VM's host.
	Host int
	// Verdict and Reason are the Host Agent's: ToUplink when it sent the
	// packet to the router, Drop with a Reason, or Held (no SNAT port
	// yet; the fabric does not release held packets).
	Verdict hostagent.Verdict
	Reason  hostagent.DropReason
	// Packet is the packet as sent to the router, after NAT (a SNAT flow
	// leaves from VIP:leased port); nil unless Verdict is ToUplink.
	Packet []byte
}

// SendFromVM sends pkt from the VM that holds dip through its Host Agent
// (Engine.ProcessOutbound): a reply of an inbound flow, or a new outbound
// connection that takes a SNAT port. pkt is not modified. It fails the test
// if no host runs dip.
func (d *Deployment) SendFromVM(dip netip.Addr, pkt []byte) Outbound {
	d.t.Helper()
	h, ok := d.dipHost[dip]
	if !ok {
		d.t.Fatalf("anantatest: SendFromVM: no host runs %v", dip)
	}
	vm := 0
	for i, a := range d.vmDIP[h] {
		if a == dip {
			vm = i
		}
	}
	b := append([]byte(nil), pkt...)
	r := d.hosts[h].Engine().ProcessOutbound(vm, b, 0, len(b))
	out := Outbound{Host: h, Verdict: r.Verdict, Reason: r.Reason}
	if r.Verdict == hostagent.ToUplink {
		out.Packet = b[r.Start:r.End]
	}
	return out
}
