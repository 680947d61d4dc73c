package testpkt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

// kernelLink is a veth pair between two test namespaces with a raw packet
// socket on end A: frames written to it arrive at end B's stack, whose
// replies are read back from it.
type kernelLink struct {
	a, b   *testutil.NetNS
	va, vb *testutil.Veth
	fd     int
}

var (
	kernelA = netip.MustParsePrefix("10.201.7.1/24")
	kernelB = netip.MustParsePrefix("10.201.7.2/24")
)

func newKernelLink(t *testing.T) *kernelLink {
	t.Helper()
	testutil.RequirePrivileged(t)
	a, b := testutil.NewNetNS(t), testutil.NewNetNS(t)
	va, vb := testutil.ConnectVeth(t, a, "tpa0", kernelA, b, "tpb0", kernelB)
	// IPv6 would add router and neighbour solicitations to what A reads.
	a.Sysctl(t, "net/ipv6/conf/all/disable_ipv6", "1")
	b.Sysctl(t, "net/ipv6/conf/all/disable_ipv6", "1")
	// With transmit checksum offload the kernel leaves TCP and UDP
	// checksums partial (pseudo-header only) for the "hardware" to finish,
	// and veth has none: B must compute them in full for A to check them.
	if err := b.Do(func() error { return setTxChecksumOffload(vb.Name, false) }); err != nil {
		t.Fatalf("turn off tx checksum offload on %s: %v", vb.Name, err)
	}
	return openKernelLink(t, a, b, va, vb)
}

// openKernelLink opens the raw packet socket on va, in a, for a link whose
// namespaces and veth pair are set up.
func openKernelLink(t *testing.T, a, b *testutil.NetNS, va, vb *testutil.Veth) *kernelLink {
	t.Helper()
	l := &kernelLink{a: a, b: b, va: va, vb: vb, fd: -1}
	err := a.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		l.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: va.Index}); err != nil {
			return fmt.Errorf("bind packet socket to %s: %w", va.Name, err)
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if l.fd >= 0 {
		t.Cleanup(func() { unix.Close(l.fd) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// setTxChecksumOffload switches NETIF_F_HW_CSUM on a device in the calling
// thread's namespace with the ETHTOOL_STXCSUM ioctl.
func setTxChecksumOffload(dev string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	value := &struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_STXCSUM}
	if on {
		value.data = 1
	}
	// struct ifreq: the name, then a union whose ifr_data member points at
	// the ethtool command; 40 bytes in all on 64-bit.
	ifr := &struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}{data: unsafe.Pointer(value)}
	copy(ifr.name[:], dev)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
	runtime.KeepAlive(value)
	if errno != 0 {
		return errno
	}
	return nil
}

// ethFor returns the Ethernet header of a frame from A to B.
func (l *kernelLink) ethFor() Eth { return Eth{Dst: l.vb.HWAddr, Src: l.va.HWAddr} }

// send writes a frame out of A.
func (l *kernelLink) send(t *testing.T, p Packet) []byte {
	t.Helper()
	p.Eth = l.ethFor()
	frame := MustBytes(t, p)
	l.sendFrame(t, frame)
	return frame
}

// sendFrame writes a built frame out of A as it is.
func (l *kernelLink) sendFrame(t *testing.T, frame []byte) {
	t.Helper()
	if _, err := unix.Write(l.fd, frame); err != nil {
		t.Fatalf("write frame: %v", err)
	}
}

// receive returns the first frame arriving at A that parses and matches, or
// fails after a few seconds.
func (l *kernelLink) receive(t *testing.T, what string, match func(*Packet) bool) ([]byte, *Packet) {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(l.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("read packet socket: %v", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := bytes.Clone(buf[:n])
		if p, err := Parse(frame); err == nil && match(p) {
			return frame, p
		}
	}
	t.Fatalf("no %s arrived at %s", what, l.va.Name)
	return nil, nil
}

// counter reads one of B's SNMP counters, such as ("Udp", "InCsumErrors")
// from /proc/net/snmp or ("IpExt", "InCsumErrors") from /proc/net/netstat.
func (l *kernelLink) counter(t *testing.T, group, name string) uint64 {
	t.Helper()
	var value uint64
	err := l.b.Do(func() error {
		// thread-self: /proc/self/net is the main thread's namespace.
		for _, file := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			v, found, err := readSNMP(file, group, name)
			if err != nil || found {
				value = v
				return err
			}
		}
		return fmt.Errorf("no counter %s %s", group, name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return value
}

// readSNMP finds a counter in a file of "Group: names" / "Group: values"
// line pairs.
func readSNMP(file, group, name string) (uint64, bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	var header []string
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || fields[0] != group+":" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i, h := range header {
			if h == name && i < len(fields) {
				v, err := strconv.ParseUint(fields[i], 10, 64)
				return v, true, err
			}
		}
		return 0, false, nil
	}
	return 0, false, s.Err()
}

func (l *kernelLink) expectCounterDelta(t *testing.T, group, name string, before, want uint64) {
	t.Helper()
	if got := l.counter(t, group, name) - before; got != want {
		t.Errorf("%s %s rose by %d, want %d", group, name, got, want)
	}
}

// expectKernelFrame checks a frame the kernel built against the packet we
// expect: every checksum must verify under Parse, and Bytes of the expected
// packet must give the kernel's bytes exactly.
func expectKernelFrame(t *testing.T, frame []byte, got, want *Packet) {
	t.Helper()
	if diff := Diff(want, got); diff != "" {
		t.Errorf("kernel frame parsed (-want +got):\n%s", diff)
	}
	built := MustBytes(t, *want)
	if !bytes.Equal(built, frame) {
		t.Errorf("built frame differs from the kernel's:\nkernel % x\n built % x", frame, built)
	}
}

var kernelUDPPort = netip.AddrPortFrom(kernelB.Addr(), 9000)

// TestKernelAcceptsUDP sends, in order, frames the kernel must drop and then
// one it must deliver: the first datagram the socket reads has to be the
// good one, and the checksum-error counters name why the others went.
func TestKernelAcceptsUDP(t *testing.T) {
	l := newKernelLink(t)
	conn := l.b.ListenPacket(t, "udp4", kernelUDPPort.String())
	from := netip.AddrPortFrom(kernelA.Addr(), 40000)

	read := func(t *testing.T) string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read datagram: %v", err)
		}
		return string(buf[:n])
	}
	fragments := func(t *testing.T, payload string) [][]byte {
		whole := UDPv4(from, kernelUDPPort, []byte(payload))
		whole.Eth, whole.IPv4.ID = l.ethFor(), 0x4242
		frags, err := Fragment(MustBytes(t, whole), 24)
		if err != nil {
			t.Fatal(err)
		}
		return frags
	}

	tests := []struct {
		name string
		// bad are dropped; group/counter names the counter each bumps.
		bad            []Packet
		group, counter string
		good           []Packet
		goodFrames     [][]byte
		payload        string
	}{
		{
			name:  "udp checksum",
			bad:   []Packet{withUDP(UDPv4(from, kernelUDPPort, []byte("bad")), func(u *UDP) { u.BadChecksum = true })},
			group: "Udp", counter: "InCsumErrors",
			good:    []Packet{UDPv4(from, kernelUDPPort, []byte("good udp"))},
			payload: "good udp",
		},
		{
			name:  "ipv4 header checksum",
			bad:   []Packet{withIPv4(UDPv4(from, kernelUDPPort, []byte("bad")), func(ip *IPv4) { ip.BadChecksum = true })},
			group: "IpExt", counter: "InCsumErrors",
			good:    []Packet{withIPv4(UDPv4(from, kernelUDPPort, []byte("good ip")), func(ip *IPv4) { ip.TOS, ip.ID, ip.DontFragment = 0x10, 777, true })},
			payload: "good ip",
		},
		{
			name:    "no udp checksum",
			good:    []Packet{withUDP(UDPv4(from, kernelUDPPort, []byte("zero csum")), func(u *UDP) { u.NoChecksum = true })},
			payload: "zero csum",
		},
		{
			name:    "ipv4 options",
			good:    []Packet{withIPv4(UDPv4(from, kernelUDPPort, []byte("with options")), func(ip *IPv4) { ip.Options = []byte{0x94, 0x04, 0x00, 0x00, 0x01} })},
			payload: "with options",
		},
		{
			name:       "fragments",
			goodFrames: fragments(t, "a datagram long enough to be cut into three IPv4 fragments"),
			payload:    "a datagram long enough to be cut into three IPv4 fragments",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before uint64
			if tt.counter != "" {
				before = l.counter(t, tt.group, tt.counter)
			}
			for _, p := range tt.bad {
				l.send(t, p)
			}
			for _, p := range tt.good {
				l.send(t, p)
			}
			for _, f := range tt.goodFrames {
				l.sendFrame(t, f)
			}
			if got := read(t); got != tt.payload {
				t.Fatalf("first datagram read = %q, want %q", got, tt.payload)
			}
			if tt.counter != "" {
				l.expectCounterDelta(t, tt.group, tt.counter, before, uint64(len(tt.bad)))
			}
		})
	}
}

func withUDP(p Packet, f func(*UDP)) Packet     { f(p.UDP); return p }
func withIPv4(p Packet, f func(*IPv4)) Packet   { f(p.IPv4); return p }
func withTCP(p Packet, f func(*TCP)) Packet     { f(p.TCP); return p }
func withICMP(p Packet, f func(*ICMPv4)) Packet { f(p.ICMPv4); return p }

// TestKernelICMPEcho sends an echo request with a bad checksum, then a good
// one: the kernel must answer only the second, and its reply must be the
// frame Bytes builds for the same fields.
func TestKernelICMPEcho(t *testing.T) {
	l := newKernelLink(t)
	const id = 0x5151
	data := []byte("sluice echo data")
	before := l.counter(t, "Icmp", "InCsumErrors")
	bad := ICMPv4Echo(kernelA.Addr(), kernelB.Addr(), id, 1, false)
	bad.Payload, bad.ICMPv4.BadChecksum = data, true
	l.send(t, bad)
	good := ICMPv4Echo(kernelA.Addr(), kernelB.Addr(), id, 2, false)
	good.Payload = data
	l.send(t, good)

	frame, got := l.receive(t, "echo reply", func(p *Packet) bool {
		return p.ICMPv4 != nil && p.ICMPv4.Type == ICMPv4EchoReply && p.ICMPv4.ID == id
	})
	want := ICMPv4Echo(kernelB.Addr(), kernelA.Addr(), id, 2, true)
	want.Eth = Eth{Dst: l.va.HWAddr, Src: l.vb.HWAddr}
	want.Payload = data
	// The kernel picks the reply's IP ID and DF bit itself.
	want.IPv4.ID, want.IPv4.DontFragment = got.IPv4.ID, got.IPv4.DontFragment
	expectKernelFrame(t, frame, got, &want)
	l.expectCounterDelta(t, "Icmp", "InCsumErrors", before, 1)
	captureGolden(t, "kernel_icmp_echo_reply", "ICMP echo reply 10.201.7.2 -> 10.201.7.1, id 0x5151 seq 2, data \"sluice echo data\".", frame)
}

// TestKernelTCPHandshake sends a SYN with a bad checksum from one port and a
// good SYN from another to a listener: only the second may get a SYN-ACK,
// whose bytes Bytes must reproduce.
func TestKernelTCPHandshake(t *testing.T) {
	l := newKernelLink(t)
	dst := netip.AddrPortFrom(kernelB.Addr(), 9001)
	l.b.Listen(t, "tcp4", dst.String())
	before := l.counter(t, "Tcp", "InCsumErrors")

	badFrom := netip.AddrPortFrom(kernelA.Addr(), 41000)
	l.send(t, withTCP(TCPv4(badFrom, dst, SYN, nil), func(tcp *TCP) { tcp.Seq, tcp.BadChecksum = 1000, true }))
	goodFrom := netip.AddrPortFrom(kernelA.Addr(), 41001)
	syn := TCPv4(goodFrom, dst, SYN, nil)
	syn.TCP.Seq = 5000
	syn.TCP.Options = []byte{0x02, 0x04, 0x05, 0xb4}  // MSS 1460
	syn.IPv4.Options = []byte{0x01, 0x01, 0x01, 0x00} // NOPs and End of List
	l.send(t, syn)

	frame, got := l.receive(t, "SYN-ACK", func(p *Packet) bool {
		return p.TCP != nil && p.TCP.Flags == SYN|ACK && p.TCP.SrcPort == dst.Port()
	})
	if got.TCP.DstPort != goodFrom.Port() {
		t.Fatalf("SYN-ACK went to port %d, want %d: the bad-checksum SYN was answered", got.TCP.DstPort, goodFrom.Port())
	}
	want := TCPv4(dst, goodFrom, SYN|ACK, nil)
	want.Eth = Eth{Dst: l.va.HWAddr, Src: l.vb.HWAddr}
	want.TCP.Ack = syn.TCP.Seq + 1
	// The kernel chooses its ISN, window, options, IP ID and DF.
	want.TCP.Seq, want.TCP.Window, want.TCP.Options = got.TCP.Seq, got.TCP.Window, got.TCP.Options
	want.IPv4.ID, want.IPv4.DontFragment = got.IPv4.ID, got.IPv4.DontFragment
	expectKernelFrame(t, frame, got, &want)
	l.expectCounterDelta(t, "Tcp", "InCsumErrors", before, 1)
	captureGolden(t, "kernel_tcp_synack", "TCP SYN-ACK 10.201.7.2:9001 -> 10.201.7.1:41001 answering a SYN with seq 5000 and MSS 1460.", frame)
}

// TestKernelPortUnreachable sends an empty UDP datagram to a closed port: the
// kernel quotes all of it, which for an empty datagram is exactly what
// Quote cuts, so ICMPv4Error must rebuild the kernel's message.
func TestKernelPortUnreachable(t *testing.T) {
	l := newKernelLink(t)
	from := netip.AddrPortFrom(kernelA.Addr(), 42000)
	probe := l.send(t, withIPv4(UDPv4(from, netip.AddrPortFrom(kernelB.Addr(), 9), nil), func(ip *IPv4) { ip.ID = 0x1234 }))

	frame, got := l.receive(t, "port unreachable", func(p *Packet) bool {
		return p.ICMPv4 != nil && p.ICMPv4.Type == ICMPv4DestUnreachable
	})
	want := ICMPv4Error(kernelB.Addr(), kernelA.Addr(), ICMPv4DestUnreachable, 3, Quote(probe))
	want.Eth = Eth{Dst: l.va.HWAddr, Src: l.vb.HWAddr}
	// Errors go out with precedence "internetwork control" (RFC 1812 4.3.2.5).
	want.IPv4.TOS = 0xc0
	want.IPv4.ID, want.IPv4.DontFragment = got.IPv4.ID, got.IPv4.DontFragment
	expectKernelFrame(t, frame, got, &want)
	if n := binary.BigEndian.Uint16(got.Payload[2:]); int(n) != len(probe)-EthLen {
		t.Errorf("quoted total length %d, want %d", n, len(probe)-EthLen)
	}
	captureGolden(t, "kernel_icmp_port_unreachable", "ICMP port unreachable 10.201.7.2 -> 10.201.7.1 quoting an empty UDP datagram 10.201.7.1:42000 -> 10.201.7.2:9, IP ID 0x1234.", frame)
}

// TestKernelPriorityTags pings B with VLAN-tagged requests. It needs no VLAN
// interfaces (the test kernel may lack CONFIG_VLAN_8021Q): the core receive
// path itself strips 802.1Q and 802.1ad tags, delivers a frame whose tags all
// carry VID 0 (priority tags) to the untagged interface, and drops one with
// any other VID as meant for another host. So a request with PCP and DEI set
// but VID 0 must be answered, and one that differs only in a VID, or in a
// TPID Linux does not read as a tag, must not: that holds Bytes to the
// kernel's reading of the TPID and TCI layout.
func TestKernelPriorityTags(t *testing.T) {
	tests := []struct {
		name      string
		good, bad []VLANTag
	}{
		{
			name: "802.1Q",
			good: []VLANTag{{TPID: TPID8021Q, PCP: 7, DEI: true}},
			bad:  []VLANTag{{TPID: TPID8021Q, PCP: 7, DEI: true, VID: 1}},
		},
		{
			name: "802.1ad over 802.1Q",
			good: []VLANTag{{TPID: TPID8021AD, PCP: 3, DEI: true}, {TPID: TPID8021Q, PCP: 5}},
			bad:  []VLANTag{{TPID: TPID8021AD, PCP: 3, DEI: true}, {TPID: TPID8021Q, PCP: 5, VID: 0x800}},
		},
		{
			name: "pre-standard QinQ TPID",
			good: []VLANTag{{TPID: TPID8021AD, PCP: 1}},
			bad:  []VLANTag{{TPID: TPIDQinQ, PCP: 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newKernelLink(t)
			const id = 0x7171
			data := []byte("sluice priority tag")
			// The bad request goes first, so the first reply tells them apart.
			for i, tags := range [][]VLANTag{tt.bad, tt.good} {
				req := ICMPv4Echo(kernelA.Addr(), kernelB.Addr(), id, uint16(i+1), false)
				req.Eth, req.Payload = l.ethFor(), data
				req.Eth.VLANs = tags
				l.sendFrame(t, MustBytes(t, req))
			}
			frame, got := l.receive(t, "echo reply", func(p *Packet) bool {
				return p.ICMPv4 != nil && p.ICMPv4.Type == ICMPv4EchoReply && p.ICMPv4.ID == id
			})
			if got.ICMPv4.Seq != 2 {
				t.Fatalf("echo reply answers seq %d, want 2: the request tagged %+v was answered", got.ICMPv4.Seq, tt.bad)
			}
			// B answers on its untagged interface.
			want := ICMPv4Echo(kernelB.Addr(), kernelA.Addr(), id, 2, true)
			want.Eth, want.Payload = Eth{Dst: l.va.HWAddr, Src: l.vb.HWAddr}, data
			want.IPv4.ID, want.IPv4.DontFragment = got.IPv4.ID, got.IPv4.DontFragment
			expectKernelFrame(t, frame, got, &want)
		})
	}
}

// TestKernelARP sends the request ARPRequest builds: Linux must answer it,
// with the reply arpReply describes.
func TestKernelARP(t *testing.T) {
	l := newKernelLink(t)
	req, err := ARPRequest(l.va.HWAddr, kernelA.Addr(), kernelB.Addr())
	if err != nil {
		t.Fatal(err)
	}
	l.sendFrame(t, MustBytes(t, req))

	frame, got := l.receive(t, "ARP reply", func(p *Packet) bool {
		return p.Eth.Type == EtherTypeARP && len(p.Payload) >= 8 && binary.BigEndian.Uint16(p.Payload[6:]) == ARPOpReply
	})
	want := arpReply(t, l.vb.HWAddr, kernelB.Addr(), l.va.HWAddr, kernelA.Addr())
	expectKernelFrame(t, frame, got, &want)
	captureGolden(t, "kernel_arp_reply", "ARP reply: 10.201.7.2 is at the sender MAC, to 10.201.7.1.", frame)
}
