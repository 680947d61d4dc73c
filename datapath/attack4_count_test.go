package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack4LoopbackCountedOnce runs a host-to-host TCP handshake over a
// managed lo as the kernel does: each packet passes lo's TC egress hook
// (skb->ingress_ifindex 0, the host's own packet) and then lo's TC ingress
// hook. The SYN-ACK's leg is bound to lo's ingress by the SYN's egress
// approval; counting it at egress as well (0 is not its bound interface)
// counted every reply twice. Each packet must be added to its leg once.
func TestAttack4LoopbackCountedOnce(t *testing.T) {
	h := newHarness(t)
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	server := netip.MustParseAddrPort("127.0.0.1:80")
	pass := func(frame []byte) {
		t.Helper()
		for _, p := range []prog{progEgress, progIngress} {
			in := uint32(0)
			if p == progIngress {
				in = loIfindex
			}
			ret, err := h.program(p).Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{Ifindex: loIfindex, IngressIfindex: in}})
			if err != nil || ret != tcActOK {
				t.Fatalf("prog %d: %d %v", p, ret, err)
			}
		}
	}
	// lo's egress policy also allows the reply (whose egress is not
	// established: the SYN's leg never got lo's ingress).
	h.putPolicy(h.lo.egress, allowDstPorts(80, 40000))
	pass(testpkt.MustBytes(t, testpkt.TCPv4(client, server, testpkt.SYN, nil)))
	pass(testpkt.MustBytes(t, testpkt.TCPv4(server, client, testpkt.SYN|testpkt.ACK, nil)))
	key, dir := ctKeyOf(testpkt.ProtoTCP, client, server)
	if _, ok := h.ctEntry(key); !ok {
		t.Fatal("no entry")
	}
	pass(testpkt.MustBytes(t, testpkt.TCPv4(server, client, testpkt.ACK, nil)))
	v, _ := h.ctEntry(key)
	fwd, rev := v.AToB, v.BToA
	if dir == bpf.CTDirBToA {
		fwd, rev = rev, fwd
	}
	t.Logf("forward leg %+v; reply leg %+v", fwd, rev)
	if fwd.Packets != 1 || rev.Packets != 2 {
		t.Errorf("one SYN and two replies over lo counted as %d forward, %d reply", fwd.Packets, rev.Packets)
	}
}
