package conntrack

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

const loIfindex = 1

// allowAll is a policy program that allows every packet: it sets the
// verdict in State and tail-calls the allow continuation, as polprog's
// programs end.
func allowAll(t *testing.T, dp *bpf.Datapath) *ebpf.Program {
	t.Helper()
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(bpf.MapState),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "fail"),
		asm.StoreImm(asm.R0, int16(unsafe.Offsetof(bpf.State{}.PolicyRc)), int64(bpf.PolicyAllow), asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(bpf.MapConts),
		asm.Mov.Imm(asm.R3, int32(bpf.ContAllow)),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("fail"), // TC_ACT_SHOT
		asm.Return(),
	}
	for _, name := range []string{bpf.MapState, bpf.MapConts} {
		if err := insns.AssociateMap(name, dp.Collection.Maps[name]); err != nil {
			t.Fatal(err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "allow_all", Type: ebpf.SchedCLS, Instructions: insns, License: "Dual BSD/GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestDatapathAgrees runs random flows' first packets through the real
// datapath and holds what it writes to the package: the key is NewKey's,
// the packet's leg is the one NewKey's direction names, last_seen is on the
// Scanner's default clock, and a sweep expires the entries when that clock
// passes their timeout.
func TestDatapathAgrees(t *testing.T) {
	testutil.RequirePrivileged(t)
	dp, err := bpf.Load(bpf.LoadOptions{ConntrackEntries: 512, PolicySlots: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	const slot = 0
	if err := dp.Collection.Maps[bpf.MapPolicyJumps].Put(uint32(slot), allowAll(t, dp)); err != nil {
		t.Fatal(err)
	}
	iface := bpf.Iface{Flags: bpf.IfaceWorkload | bpf.IfaceReady, IngressPolicy: slot, EgressPolicy: slot}
	if err := dp.Collection.Maps[bpf.MapIfaces].Put(uint32(loIfindex), iface); err != nil {
		t.Fatal(err)
	}
	m, err := NewMap(dp.Collection.Maps[bpf.MapConntrack])
	if err != nil {
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(3, 4))
	endpoint := func() netip.AddrPort {
		// Few values, so equal addresses with different ports occur.
		addr := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(2)*200), 0, 0, byte(1 + rng.IntN(3))})
		return netip.AddrPortFrom(addr, uint16(1+rng.IntN(3)*0x101))
	}
	type flow struct {
		key      Key
		reversed bool
	}
	flows := map[Key]flow{}
	before, err := kernelMonotonic()
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		src, dst := endpoint(), endpoint()
		var proto uint8
		var pkt testpkt.Packet
		switch rng.IntN(3) {
		case 0:
			proto, pkt = ProtoTCP, testpkt.TCPv4(src, dst, testpkt.SYN, nil)
		case 1:
			proto, pkt = ProtoUDP, testpkt.UDPv4(src, dst, []byte("hi"))
		default:
			// Echo keys carry the identifier as both ports.
			id := src.Port()
			proto, pkt = ProtoICMP, testpkt.ICMPv4Echo(src.Addr(), dst.Addr(), id, 1, false)
			src, dst = netip.AddrPortFrom(src.Addr(), id), netip.AddrPortFrom(dst.Addr(), id)
		}
		k, reversed, err := NewKey(proto, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, seen := flows[k]; seen {
			continue // only first packets: the leg check below stays simple
		}
		flows[k] = flow{k, reversed}
		ret, err := dp.Ingress.Run(&ebpf.RunOptions{Data: testpkt.MustBytes(t, pkt)})
		if err != nil || ret != 0 {
			t.Fatalf("%v -> %v (%s): datapath returned %d, %v; want TC_ACT_OK", src, dst, ProtoName(proto), ret, err)
		}
	}
	nRev := 0
	for _, f := range flows {
		if f.reversed {
			nRev++
		}
	}
	t.Logf("%d flows, %d with the destination as A", len(flows), nRev)
	after, err := kernelMonotonic()
	if err != nil {
		t.Fatal(err)
	}

	entries, err := m.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(flows) {
		t.Errorf("datapath wrote %d entries for %d flows", len(entries), len(flows))
	}
	for _, e := range entries {
		f, ok := flows[e.Key]
		if !ok {
			t.Errorf("datapath wrote key %v, which NewKey gives no flow", e.Key)
			continue
		}
		own, other := e.Value.AToB(), e.Value.BToA()
		if f.reversed {
			own, other = other, own
		}
		if own.Packets != 1 || other.Packets != 0 {
			t.Errorf("%v (reversed %v): legs %v", e.Key, f.reversed, e.Value)
		}
		if seen := time.Duration(e.Value.LastSeen); seen < before || seen > after {
			t.Errorf("%v: last_seen %v outside the CLOCK_MONOTONIC_COARSE window [%v, %v]", e.Key, seen, before, after)
		}
	}

	s, err := NewScanner(m, ScannerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stats, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if stats.Scanned != len(flows) || stats.Deleted+stats.Entries != len(flows) {
		t.Errorf("sweep on the real clock: %+v", stats)
	}
	// Two hours on, every entry (TCP SYN-sent, UDP, ICMP) has expired.
	s.clock = func() time.Duration { return after + 2*time.Hour }
	if _, err := s.Scan(); err != nil {
		t.Fatal(err)
	}
	if n, err := m.Count(); err != nil || n != 0 {
		t.Errorf("after expiry %d entries left (%v)", n, err)
	}
}
