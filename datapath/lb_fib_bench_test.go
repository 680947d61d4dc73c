package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// BenchmarkNodePortFIB measures kernel ns per packet of a NodePort flow to
// a backend elsewhere at the uplink's ingress hook (in a namespace of the
// benchmark's, BPF_PROG_TEST_RUN at the uplink), under the 10-rule policy
// of BenchmarkDatapath, beside sl_tc_pass on the same packet, in three
// settings of one run:
//
//   - unrouted: the SNAT address is not a FlagLocalHost route, so
//     sl_fib_redirect stops after its header load and route lookup: the
//     path as it was before the FIB step, plus that.
//   - fib-fails: the node's address, forwarding off in the namespace: the
//     FIB lookup runs and fails, and the packet is dropped, counted as
//     dropped_fib_no_route.
//   - redirect: the node's address, forwarding on: FIB lookup, hop
//     decrement and bpf_redirect_neigh (which a test run does not carry
//     out).
//
// first is a SYN of a distinct client per run (lookup, choice, DNAT and
// SNAT, policy, NAT entries, deleted after each run outside the timed
// part); established is the client's next segment, through the stub.
// Single runs, as in BenchmarkServices.
func BenchmarkNodePortFIB(b *testing.B) {
	testutil.RequirePrivileged(b)
	node, other := netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.101")
	backend := netip.MustParseAddrPort("10.2.0.5:80")
	d, err := Open(Options{ConntrackEntries: 1 << 16, PolicySlots: 64, MaxInterfaces: 8, RuleHitEntries: 1024, IPSetEntries: 1024})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	ns, peer := testutil.NewNetNS(b), testutil.NewNetNS(b)
	up, _ := testutil.ConnectVeth(b, ns, "lbup", netip.PrefixFrom(node, 24), peer, "lbnext", netip.MustParsePrefix("10.0.0.200/24"))
	if err := ns.AddrAdd("lbup", netip.PrefixFrom(other, 24)); err != nil {
		b.Fatal(err)
	}
	ns.AddRoute(b, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.0.0.200"), "lbup")
	if err := d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(node, 32), Flags: routes.FlagLocalHost}); err != nil {
		b.Fatal(err)
	}
	if err := d.SetInterface(up.Index, Interface{Kind: Host, Ingress: tenRules(), Egress: tenRules()}); err != nil {
		b.Fatal(err)
	}
	if err := d.Services().Sync(map[string]nat.Service{"np": nodePort(backend.String(), false)}); err != nil {
		b.Fatal(err)
	}
	ingress, pass := programOf(d, progIngress), programOf(d, progPass)
	ct := d.Conntrack().EBPF()
	frontend := netip.AddrPortFrom(node, 30080)
	ctx := skbCtx{Ifindex: uint32(up.Index), IngressIfindex: uint32(up.Index)}
	// run runs prog once on frame at the uplink, in its namespace.
	run := func(b *testing.B, prog *ebpf.Program, frame []byte) (uint32, time.Duration) {
		var ret uint32
		var took time.Duration
		if err := ns.Do(func() (err error) { ret, took, err = testRunAt(prog, frame, ctx); return }); err != nil {
			b.Fatal(err)
		}
		return ret, took
	}
	for _, c := range []struct {
		name       string
		snat       netip.Addr
		forwarding string
		verdict    uint32
	}{
		{"unrouted", other, "1", tcActOK},
		{"fib-fails", node, "0", tcActShot},
		{"redirect", node, "1", tcActRedirect},
	} {
		b.Run(c.name, func(b *testing.B) {
			if err := d.SNAT().Set(nat.SNAT{IPv4: c.snat, PortMin: 61000, PortMax: 65000}); err != nil {
				b.Fatal(err)
			}
			ns.Sysctl(b, "net/ipv4/ip_forward", c.forwarding)
			// single runs frame once per iteration (after vary, outside
			// the timed part) beside the floor.
			single := func(b *testing.B, frame []byte, vary func(i int, frame []byte)) {
				frame = append([]byte(nil), frame...)
				var total, floor time.Duration
				for i := range b.N {
					if vary != nil {
						vary(i, frame)
					}
					_, f := run(b, pass, frame)
					ret, t := run(b, ingress, frame)
					if ret != c.verdict {
						b.Fatalf("run %d: verdict %d, want %d", i, ret, c.verdict)
					}
					floor += f
					total += t
				}
				report(b, total/time.Duration(b.N), floor/time.Duration(b.N))
			}
			b.Run("first", func(b *testing.B) {
				syn := testpkt.MustBytes(b, testpkt.TCPv4(netip.MustParseAddrPort("203.0.113.7:1024"), frontend, testpkt.SYN, nil))
				var prev netip.AddrPort
				single(b, syn, func(i int, frame []byte) {
					if prev.IsValid() {
						deleteNATFlow(b, ct, prev, frontend)
					}
					src := netip.AddrFrom4([4]byte{203, 1, byte(i >> 16), byte(i >> 8)})
					port := uint16(1024 + i%60000)
					copy(frame[26:], src.AsSlice())
					binary.BigEndian.PutUint16(frame[34:], port)
					prev = netip.AddrPortFrom(src, port)
				})
				if prev.IsValid() {
					deleteNATFlow(b, ct, prev, frontend)
				}
			})
			b.Run("established", func(b *testing.B) {
				client := netip.MustParseAddrPort("203.0.113.9:40000")
				if ret, _ := run(b, ingress, testpkt.MustBytes(b, testpkt.TCPv4(client, frontend, testpkt.SYN, nil))); ret != c.verdict {
					b.Fatalf("opening SYN: verdict %d, want %d", ret, c.verdict)
				}
				b.Cleanup(func() { deleteNATFlow(b, ct, client, frontend) })
				single(b, testpkt.MustBytes(b, testpkt.TCPv4(client, frontend, testpkt.ACK, make([]byte, 64))), nil)
			})
		})
	}
}

// testRunAt runs prog once on frame with ctx as its struct __sk_buff and
// returns the verdict and the kernel's duration of the run: what
// ebpf.Program.Benchmark reports, which takes no context, and
// ebpf.Program.Run takes, which reports no duration. The attribute is
// the test member of union bpf_attr.
func testRunAt(prog *ebpf.Program, frame []byte, ctx skbCtx) (uint32, time.Duration, error) {
	var c bytes.Buffer
	if err := binary.Write(&c, binary.NativeEndian, ctx); err != nil {
		return 0, 0, err
	}
	ctxIn := c.Bytes()
	attr := struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration, ctxSizeIn, ctxSizeOut uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize, _                uint32
	}{
		progFD: uint32(prog.FD()), dataSizeIn: uint32(len(frame)), dataIn: uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat: 1, ctxSizeIn: uint32(len(ctxIn)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctxIn[0]))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(frame)
	runtime.KeepAlive(ctxIn)
	if errno != 0 {
		return 0, 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
	}
	return attr.retval, time.Duration(attr.duration), nil
}
