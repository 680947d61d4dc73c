package testpkt

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

var (
	kernelA6 = netip.MustParsePrefix("fd00:5e1c:7::1/64")
	kernelB6 = netip.MustParsePrefix("fd00:5e1c:7::2/64")
)

// newKernelLink6 is newKernelLink with IPv6 on: both ends have an address
// that needs no duplicate address detection, and B's transmit checksums are
// computed in full. All sysctls are set inside the two namespaces.
func newKernelLink6(t *testing.T) *kernelLink {
	t.Helper()
	testutil.RequirePrivileged(t)
	a, b := testutil.NewNetNS(t), testutil.NewNetNS(t)
	for _, ns := range []*testutil.NetNS{a, b} {
		for _, conf := range []string{"all", "default"} {
			ns.Sysctl(t, "net/ipv6/conf/"+conf+"/accept_dad", "0")
			ns.Sysctl(t, "net/ipv6/conf/"+conf+"/router_solicitations", "0")
		}
	}
	va, vb := testutil.ConnectVeth(t, a, "tpa6", kernelA6, b, "tpb6", kernelB6)
	if err := b.Do(func() error { return setTxChecksumOffload(vb.Name, false) }); err != nil {
		t.Fatalf("turn off tx checksum offload on %s: %v", vb.Name, err)
	}
	for _, v := range []*testutil.Veth{va, vb} {
		waitNotTentative(t, v)
	}
	return openKernelLink(t, a, b, va, vb)
}

// waitNotTentative waits until the veth end's address may be used.
func waitNotTentative(t *testing.T, v *testutil.Veth) {
	t.Helper()
	link, err := v.NS.Handle.LinkByIndex(v.Index)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		addrs, err := v.NS.Handle.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip == v.Addr.Addr() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return
			}
		}
	}
	t.Fatalf("%s on %s stays tentative", v.Addr, v.Name)
}

// counter6 reads one of B's /proc/net/snmp6 counters, such as
// "Udp6InCsumErrors".
func (l *kernelLink) counter6(t *testing.T, name string) uint64 {
	t.Helper()
	var value uint64
	err := l.b.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			if fields := strings.Fields(s.Text()); len(fields) == 2 && fields[0] == name {
				value, err = strconv.ParseUint(fields[1], 10, 64)
				return err
			}
		}
		return fmt.Errorf("no counter %s", name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return value
}

func (l *kernelLink) expectCounter6Delta(t *testing.T, name string, before, want uint64) {
	t.Helper()
	if got := l.counter6(t, name) - before; got != want {
		t.Errorf("%s rose by %d, want %d", name, got, want)
	}
}

// ethBack is the Ethernet header of a frame from B to A.
func (l *kernelLink) ethBack() Eth { return Eth{Dst: l.va.HWAddr, Src: l.vb.HWAddr} }

func withUDP6Ext(p Packet, ext ...IPv6Ext) Packet { p.IPv6.Ext = ext; return p }

// TestKernelAcceptsUDPv6 sends frames the kernel must drop and then ones it
// must deliver: the first datagram the socket reads has to be the good one,
// and Udp6InCsumErrors counts the bad ones.
func TestKernelAcceptsUDPv6(t *testing.T) {
	l := newKernelLink6(t)
	to := netip.AddrPortFrom(kernelB6.Addr(), 9000)
	conn := l.b.ListenPacket(t, "udp6", to.String())
	from := netip.AddrPortFrom(kernelA6.Addr(), 40000)
	udp := func(s string) Packet { return UDPv6(from, to, []byte(s)) }
	fragments := func(t *testing.T, payload string, ext ...IPv6Ext) [][]byte {
		whole := withUDP6Ext(udp(payload), ext...)
		whole.Eth = l.ethFor()
		frags, err := FragmentIPv6(MustBytes(t, whole), 24, 0x4242)
		if err != nil {
			t.Fatal(err)
		}
		return frags
	}
	long := "a datagram long enough to be cut into several IPv6 fragments"
	tests := []struct {
		name       string
		bad        []Packet // each bumps Udp6InCsumErrors
		dropped    []Packet // dropped before UDP sees them
		good       []Packet
		goodFrames [][]byte
		payload    string
	}{
		{
			name:    "udp checksum",
			bad:     []Packet{withUDP(udp("bad"), func(u *UDP) { u.BadChecksum = true })},
			good:    []Packet{udp("good udp")},
			payload: "good udp",
		},
		{
			name:    "zero checksum is invalid over IPv6",
			bad:     []Packet{withUDP(udp("zero"), func(u *UDP) { u.NoChecksum = true })},
			good:    []Packet{withUDP(udp("odd!!"), func(u *UDP) { u.SrcPort = 1 })},
			payload: "odd!!",
		},
		{
			name: "checksum over the wrong pseudo-header",
			bad: []Packet{withUDP(udp("moved"), func(u *UDP) {
				p := udp("moved")
				p.IPv6.Src = netip.MustParseAddr("fd00:5e1c:7::99")
				u.Checksum = be.Uint16(MustBytes(t, p)[EthLen+IPv6HdrLen+6:])
			})},
			good:    []Packet{withIPv6(udp("traffic class and flow label"), func(ip *IPv6) { ip.TrafficClass, ip.FlowLabel, ip.HopLimit = 0x28, 0x12345, 1 })},
			payload: "traffic class and flow label",
		},
		{
			name: "extension headers",
			bad: []Packet{withUDP(withUDP6Ext(udp("bad behind headers"), ExtHopByHop(nil), ExtDestOpts(nil)), func(u *UDP) {
				u.BadChecksum = true
			})},
			good: []Packet{withUDP6Ext(udp("behind headers"),
				ExtHopByHop(IPv6Option(0x1e, []byte{1, 2})), ExtDestOpts(IPv6Option(0x1e, make([]byte, 12))), ExtRoutingType0(0, kernelB6.Addr()), ExtDestOpts(nil))},
			payload: "behind headers",
		},
		{
			// Linux drops an options header with a run of more than 7
			// padding bytes (RFC 4942 section 2.1.9.5), before UDP sees it.
			name:    "padding run",
			dropped: []Packet{withUDP6Ext(udp("padding run"), ExtDestOpts(make([]byte, 14)))},
			good:    []Packet{withUDP6Ext(udp("after a padding run"), ExtDestOpts(make([]byte, 6)))},
			payload: "after a padding run",
		},
		{
			name:       "fragments",
			goodFrames: fragments(t, long),
			payload:    long,
		},
		{
			name:       "fragments behind hop-by-hop and routing headers",
			goodFrames: fragments(t, long, ExtHopByHop(nil), ExtRoutingType0(0, kernelB6.Addr()), ExtDestOpts(nil)),
			payload:    long,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := l.counter6(t, "Udp6InCsumErrors")
			for _, p := range append(tt.bad, tt.dropped...) {
				l.send(t, p)
			}
			for _, p := range tt.good {
				l.send(t, p)
			}
			for _, f := range tt.goodFrames {
				l.sendFrame(t, f)
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2048)
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				t.Fatalf("read datagram: %v", err)
			}
			if got := string(buf[:n]); got != tt.payload {
				t.Fatalf("first datagram read = %q, want %q", got, tt.payload)
			}
			l.expectCounter6Delta(t, "Udp6InCsumErrors", before, uint64(len(tt.bad)))
		})
	}
}

func withIPv6(p Packet, f func(*IPv6)) Packet { f(p.IPv6); return p }

// TestKernelICMPv6Echo sends an echo request with a bad checksum, then a
// good one behind a destination options header: the kernel must answer
// only the second, with the frame ICMPv6Echo builds.
func TestKernelICMPv6Echo(t *testing.T) {
	l := newKernelLink6(t)
	const id = 0x5252
	data := []byte("sluice echo6 data")
	before := l.counter6(t, "Icmp6InCsumErrors")
	bad := ICMPv6Echo(kernelA6.Addr(), kernelB6.Addr(), id, 1, false)
	bad.Payload, bad.ICMPv6.BadChecksum = data, true
	l.send(t, bad)
	good := ICMPv6Echo(kernelA6.Addr(), kernelB6.Addr(), id, 2, false)
	good.Payload = data
	good.IPv6.Ext = []IPv6Ext{ExtDestOpts(nil)}
	l.send(t, good)

	frame, got := l.receive(t, "echo reply", func(p *Packet) bool {
		return p.ICMPv6 != nil && p.ICMPv6.Type == ICMPv6EchoReply && p.ICMPv6.ID == id
	})
	if got.ICMPv6.Seq != 2 {
		t.Fatalf("reply answers seq %d, want 2", got.ICMPv6.Seq)
	}
	want := ICMPv6Echo(kernelB6.Addr(), kernelA6.Addr(), id, 2, true)
	want.Eth, want.Payload = l.ethBack(), data
	// The kernel picks the reply's flow label and traffic class.
	want.IPv6.FlowLabel, want.IPv6.TrafficClass = got.IPv6.FlowLabel, got.IPv6.TrafficClass
	expectKernelFrame(t, frame, got, &want)
	l.expectCounter6Delta(t, "Icmp6InCsumErrors", before, 1)
}

// TestKernelTCPv6Handshake sends a SYN with a bad checksum from one port and
// a good one from another: only the second may get a SYN-ACK, whose bytes
// Bytes must reproduce.
func TestKernelTCPv6Handshake(t *testing.T) {
	l := newKernelLink6(t)
	dst := netip.AddrPortFrom(kernelB6.Addr(), 9001)
	l.b.Listen(t, "tcp6", dst.String())
	// TCP counts checksum errors of both families in the Tcp group.
	before := l.counter(t, "Tcp", "InCsumErrors")
	l.send(t, withTCP(TCPv6(netip.AddrPortFrom(kernelA6.Addr(), 41000), dst, SYN, nil), func(tcp *TCP) { tcp.Seq, tcp.BadChecksum = 1000, true }))
	from := netip.AddrPortFrom(kernelA6.Addr(), 41001)
	syn := TCPv6(from, dst, SYN, nil)
	syn.TCP.Seq = 5000
	syn.TCP.Options = []byte{0x02, 0x04, 0x05, 0xa0} // MSS 1440
	l.send(t, syn)

	frame, got := l.receive(t, "SYN-ACK", func(p *Packet) bool {
		return p.TCP != nil && p.IPv6 != nil && p.TCP.Flags == SYN|ACK && p.TCP.SrcPort == dst.Port()
	})
	if got.TCP.DstPort != from.Port() {
		t.Fatalf("SYN-ACK went to port %d, want %d: the bad-checksum SYN was answered", got.TCP.DstPort, from.Port())
	}
	want := TCPv6(dst, from, SYN|ACK, nil)
	want.Eth = l.ethBack()
	want.TCP.Ack = syn.TCP.Seq + 1
	want.TCP.Seq, want.TCP.Window, want.TCP.Options = got.TCP.Seq, got.TCP.Window, got.TCP.Options
	want.IPv6.FlowLabel, want.IPv6.TrafficClass = got.IPv6.FlowLabel, got.IPv6.TrafficClass
	expectKernelFrame(t, frame, got, &want)
	l.expectCounterDelta(t, "Tcp", "InCsumErrors", before, 1)
}

// TestKernelICMPv6Errors sends packets the kernel answers with an error: a
// datagram to a closed port behind extension headers, and one whose chain
// has a hop-by-hop header second. The kernel quotes the whole packet, so
// QuoteIPv6 and ICMPv6Error (or ICMPv6Problem) must rebuild its message.
func TestKernelICMPv6Errors(t *testing.T) {
	from := netip.AddrPortFrom(kernelA6.Addr(), 42000)
	closed := netip.AddrPortFrom(kernelB6.Addr(), 9)
	tests := []struct {
		name string
		ext  []IPv6Ext
		want func(quote []byte) Packet
	}{
		{
			name: "port unreachable",
			ext:  []IPv6Ext{ExtHopByHop(nil), ExtDestOpts(nil)},
			want: func(q []byte) Packet {
				return ICMPv6Error(kernelB6.Addr(), kernelA6.Addr(), ICMPv6DestUnreachable, 4, q)
			},
		},
		{
			name: "hop-by-hop not first",
			ext:  []IPv6Ext{ExtDestOpts(nil), ExtHopByHop(nil)},
			// Code 1, unrecognized next header, pointing at the
			// destination options header's next header field.
			want: func(q []byte) Packet { return ICMPv6Problem(kernelB6.Addr(), kernelA6.Addr(), 1, IPv6HdrLen, q) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newKernelLink6(t)
			probe := l.send(t, withUDP6Ext(UDPv6(from, closed, []byte("probe")), tt.ext...))
			frame, got := l.receive(t, "ICMPv6 error", func(p *Packet) bool {
				return p.ICMPv6 != nil && p.ICMPv6.IsError()
			})
			want := tt.want(QuoteIPv6(probe))
			want.Eth = l.ethBack()
			want.IPv6.FlowLabel, want.IPv6.TrafficClass = got.IPv6.FlowLabel, got.IPv6.TrafficClass
			expectKernelFrame(t, frame, got, &want)
		})
	}
}

// TestKernelNeighborSolicit sends B a multicast neighbour solicitation with
// a source link-layer option: B must answer with the solicited, override
// advertisement NDNeighborAdvert builds, its target link-layer option
// included.
func TestKernelNeighborSolicit(t *testing.T) {
	l := newKernelLink6(t)
	ns := NDNeighborSolicit(kernelA6.Addr(), kernelB6.Addr(), NDSourceLinkAddr(l.va.HWAddr))
	ns.Eth.Src = l.va.HWAddr
	l.sendFrame(t, MustBytes(t, ns))
	frame, got := l.receive(t, "neighbour advertisement", func(p *Packet) bool {
		return p.ICMPv6 != nil && p.ICMPv6.Type == ICMPv6NeighborAdvert && bytes.Equal(p.Payload[:16], kernelB6.Addr().AsSlice())
	})
	want := NDNeighborAdvert(kernelB6.Addr(), kernelA6.Addr(), kernelB6.Addr(), NAFlagSolicited|NAFlagOverride, NDTargetLinkAddr(l.vb.HWAddr))
	want.Eth = l.ethBack()
	expectKernelFrame(t, frame, got, &want)
	opts, err := ParseNDOptions(got.Payload[NDOptionsOffset(ICMPv6NeighborAdvert):])
	if err != nil || len(opts) != 1 || !bytes.Equal(opts[0].Data, l.vb.HWAddr) {
		t.Errorf("options %+v, %v: want B's target link-layer address", opts, err)
	}
}

// TestKernelRouterAdvert sends B a router advertisement with a prefix
// information and an MTU option: B must configure an address in the prefix
// and take the MTU, which it does only if it reads both options where RFC
// 4861 puts their fields. A copy with a bad checksum goes first and must be
// ignored.
func TestKernelRouterAdvert(t *testing.T) {
	l := newKernelLink6(t)
	prefix := netip.MustParsePrefix("2001:db8:5e1c::/64")
	src := netip.MustParseAddr("fe80::5e1c")
	bad := NDRouterAdvert(src, AllNodesAddr, RouterAdvert{Options: []NDOption{NDMTU(1300)}})
	bad.ICMPv6.BadChecksum = true
	before := l.counter6(t, "Icmp6InCsumErrors")
	l.sendFrame(t, MustBytes(t, bad))
	ra := NDRouterAdvert(src, AllNodesAddr, RouterAdvert{
		CurHopLimit: 64,
		Options: []NDOption{
			NDSourceLinkAddr(l.va.HWAddr),
			NDMTU(1400),
			NDPrefixInfo(prefix, PrefixFlagOnLink|PrefixFlagAuto, 3600, 1800),
		},
	})
	ra.Eth.Src = l.va.HWAddr
	l.sendFrame(t, MustBytes(t, ra))

	link, err := l.b.Handle.LinkByIndex(l.vb.Index)
	if err != nil {
		t.Fatal(err)
	}
	var mtu string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		addrs, err := l.b.Handle.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && prefix.Contains(ip) {
				found = true
			}
		}
		err = l.b.Do(func() error {
			b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + l.vb.Name + "/mtu")
			mtu = strings.TrimSpace(string(b))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if found && mtu == "1400" {
			l.expectCounter6Delta(t, "Icmp6InCsumErrors", before, 1)
			return
		}
	}
	t.Fatalf("B took no address in %s or IPv6 MTU %s (want 1400) from the advertisement", prefix, mtu)
}
