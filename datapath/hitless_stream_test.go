package datapath

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/topo"
)

// hitlessStreams are the two streams the hitless tests carry from a client
// workload through a service frontend to a backend: TCP at full speed,
// and sequence-numbered UDP datagrams paced by hitlessUDPPace. Each
// receiver notes every gap between two arrivals longer than
// hitlessGapMin: Stop tells those during the change (the stall it caused,
// on top of the machine's jitter) from the others (the jitter alone).
type hitlessStreams struct {
	stop chan struct{}
	wg   sync.WaitGroup

	tcpConn *stampedTCP
	tcpL    net.Listener
	tcpSent atomic.Int64
	tcpWErr error
	tcpDone chan struct{}
	tcpRecv int64
	tcpRErr error
	tcpGaps []hitlessGap
	// tcpReads are the backend's reads, for the TCP one-way delay.
	tcpReads []tcpRead
	udpConn  net.Conn
	udpPC    net.PacketConn
	udpSent  uint64
	udpErrs  int
	udpDone  chan struct{}
	udpSeen  []bool
	udpGaps  []hitlessGap
	// udpDelays are the datagrams whose one-way delay was at least
	// hitlessGapMin: End the kernel's receive time, Len the delay.
	udpDelays []hitlessGap
	client    *topo.NS
	server    *topo.NS
	node      *topo.NS
	before    hitlessKernel
}

// hitlessKernel are the kernel's counters that tell a loss of the
// datapath's from one of the kernel's, and a retransmit of a lost segment
// from a spurious one.
type hitlessKernel struct {
	// RcvbufErrors is Udp RcvbufErrors in the backend's namespace: the
	// datagrams its kernel dropped for a full socket buffer.
	RcvbufErrors uint64
	// Retransmits is Tcp RetransSegs in the client's namespace, LossProbes
	// TcpExt TCPLossProbes there: the probes its kernel sends when no
	// acknowledgement came for 10 ms or two round trips (a scheduling
	// stall on a busy machine is enough).
	Retransmits, LossProbes uint64
	// DSACKedSegs is TcpExt TCPDSACKRecvSegs in the client's namespace:
	// the segments the backend said it received twice, so retransmits of
	// segments that were not lost (a retransmit the backend received
	// only once makes up for a segment that was).
	DSACKedSegs uint64
	// ReceiverDrops is what the backend's TCP dropped on arrival (TcpExt
	// TCPBacklogDrop, TCPRcvQDrop, TCPOFODrop, TCPZeroWindowDrop,
	// RcvPruned and OfoPruned in its namespace): a full socket's, not the
	// datapath's.
	ReceiverDrops uint64
	// NodeDrops is what the node's IP stack dropped (Ip OutNoRoutes,
	// InAddrErrors, InDiscards, OutDiscards, IpExt InNoRoutes in its
	// namespace), and
	// NodeICMP the ICMP errors it sent (Icmp OutDestUnreachs): a packet
	// the datapath passed to the node untranslated lands there.
	NodeDrops, NodeICMP uint64
	// BacklogDrops is what the CPUs' input backlogs dropped (the second
	// column of /proc/net/softnet_stat): machine-wide, so other tests'
	// drops count too, but 0 clears the veths' receive path.
	BacklogDrops uint64
}

// read reads the counters of the client's, the backend's and the node's
// namespaces.
func (k *hitlessKernel) read(client, server, node *topo.NS) error {
	for _, c := range []struct {
		ns               *topo.NS
		file, proto, key string
		into             *uint64
	}{
		{server, "snmp", "Udp:", "RcvbufErrors", &k.RcvbufErrors},
		{client, "snmp", "Tcp:", "RetransSegs", &k.Retransmits},
		{client, "netstat", "TcpExt:", "TCPLossProbes", &k.LossProbes},
		{client, "netstat", "TcpExt:", "TCPDSACKRecvSegs", &k.DSACKedSegs},
	} {
		n, err := netCounter(c.ns, c.file, c.proto, c.key)
		if err != nil {
			return err
		}
		*c.into = n
	}
	k.ReceiverDrops = 0
	for _, key := range []string{"TCPBacklogDrop", "TCPRcvQDrop", "TCPOFODrop", "TCPZeroWindowDrop", "RcvPruned", "OfoPruned"} {
		n, err := netCounter(server, "netstat", "TcpExt:", key)
		if err != nil {
			return err
		}
		k.ReceiverDrops += n
	}
	k.NodeDrops = 0
	for _, key := range []string{"OutNoRoutes", "InAddrErrors", "InDiscards", "OutDiscards"} {
		n, err := netCounter(node, "snmp", "Ip:", key)
		if err != nil {
			return err
		}
		k.NodeDrops += n
	}
	n, err := netCounter(node, "netstat", "IpExt:", "InNoRoutes")
	if err != nil {
		return err
	}
	k.NodeDrops += n
	if k.NodeICMP, err = netCounter(node, "snmp", "Icmp:", "OutDestUnreachs"); err != nil {
		return err
	}
	k.BacklogDrops, err = backlogDrops()
	return err
}

// backlogDrops sums the dropped column of /proc/net/softnet_stat.
func backlogDrops() (uint64, error) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		d, err := strconv.ParseUint(fields[1], 16, 64)
		if err != nil {
			return 0, err
		}
		n += d
	}
	return n, nil
}

func (k hitlessKernel) sub(o hitlessKernel) hitlessKernel {
	return hitlessKernel{k.RcvbufErrors - o.RcvbufErrors, k.Retransmits - o.Retransmits, k.LossProbes - o.LossProbes,
		k.DSACKedSegs - o.DSACKedSegs, k.ReceiverDrops - o.ReceiverDrops, k.NodeDrops - o.NodeDrops, k.NodeICMP - o.NodeICMP,
		k.BacklogDrops - o.BacklogDrops}
}

// hitlessUDPPace is the sleep between two datagrams of the UDP stream:
// at most 20,000 a second, well inside what a socket takes (a sleep's
// granularity on a busy machine makes it about 2,000 here).
const hitlessUDPPace = 50 * time.Microsecond

// hitlessGap is a time between two arrivals of a stream, longer than
// hitlessGapMin, ending at End.
type hitlessGap struct {
	End time.Time
	Len time.Duration
}

// hitlessGapMin is the shortest gap a receiver notes.
const hitlessGapMin = time.Millisecond

// noteGap notes the gap from last to now if it is long enough.
func noteGap(gaps []hitlessGap, last, now time.Time) []hitlessGap {
	if last.IsZero() || now.Sub(last) < hitlessGapMin {
		return gaps
	}
	return append(gaps, hitlessGap{End: now, Len: now.Sub(last)})
}

// longest returns the longest of gaps that overlap [from, to], and of
// those that do not.
func longest(gaps []hitlessGap, from, to time.Time) (during, outside time.Duration) {
	for _, g := range gaps {
		if g.End.After(from) && g.End.Add(-g.Len).Before(to) {
			during = max(during, g.Len)
		} else {
			outside = max(outside, g.Len)
		}
	}
	return during, outside
}

// hitlessResult is what the streams saw.
type hitlessResult struct {
	// TCPSent and TCPReceived are the bytes the client wrote and the
	// backend read; TCPErr is the first error either side met (a reset,
	// or a stall past the deadlines).
	TCPSent, TCPReceived int64
	TCPErr               error
	// TCPStall is the longest time between two reads of the backend
	// that overlaps the change, TCPJitter the longest elsewhere in the
	// stream (the machine's own, the floor to compare with).
	TCPStall, TCPJitter time.Duration
	// TCPDelay is the longest one-way delay of a write of the client's
	// during the change, TCPDelayOutside the longest of the others: from
	// the kernel's transmit timestamp of the skb that held the write's
	// last byte (its first transmission, on the client's veth) to the
	// kernel's receive timestamp of that byte at the backend's veth (see
	// hitless_tcpdelay_test.go), so that, as for UDPDelay, neither side's
	// wait for a CPU counts, nor the sender's wait for its congestion
	// window or send buffer; a segment lost and sent again counts the
	// retransmit's wait.
	TCPDelay, TCPDelayOutside time.Duration
	// TCPWrites is how many writes (send calls) the client made, and
	// TCPStamped how many of them had both timestamps; TCPRestamped is
	// how many transmit timestamps were of a write already stamped (the
	// skb that held its last byte sent again).
	TCPWrites                int64
	TCPStamped, TCPRestamped int
	// TCPPackets is how many packets the client's veth sent besides the
	// datagrams (GSO packets of up to 64 KiB count one; after the stream
	// started): a lost packet shows in TCPDelay if it held the last byte
	// of a write, which about TCPStamped of them did.
	TCPPackets uint64
	// UDPSent is how many datagrams the client sent (sequence numbers
	// 0 to UDPSent-1), UDPLost how many of them never arrived, UDPSendErrs
	// how many sends failed (an ICMP error of a dropped datagram, reported
	// on a later send of the connected socket).
	UDPSent, UDPLost uint64
	UDPSendErrs      int
	// UDPStall and UDPJitter are the same of the datagrams' arrivals.
	UDPStall, UDPJitter time.Duration
	// UDPDelay is the longest one-way delay of a datagram received during
	// the change, UDPDelayOutside the longest of the others: from the
	// sender's clock just before its send to the kernel's receive
	// timestamp (SO_TIMESTAMPNS), so neither the sender's nor the
	// receiver's waits for a CPU count, only the path between them. A
	// datapath that held or slowed packets shows here; one whose change
	// only competes for the CPU shows in UDPStall.
	UDPDelay, UDPDelayOutside time.Duration
	// Kernel is how the kernel's counters moved while the streams ran.
	Kernel hitlessKernel
	// VethDrops is the packets the veth pairs of the client and the
	// backend dropped, both ends (their rx and tx dropped statistics).
	VethDrops uint64
}

func (r hitlessResult) String() string {
	return fmt.Sprintf("tcp %d of %d bytes lost, longest stall %v (%v outside the change), "+
		"longest one-way delay %v (%v outside; %d of %d writes stamped, %d stamped again, %d packets), err %v; "+
		"udp %d of %d datagrams lost, longest gap %v (%v outside), longest one-way delay %v (%v outside), %d send errors; "+
		"kernel %+v, veth drops %d",
		r.TCPSent-r.TCPReceived, r.TCPSent, r.TCPStall, r.TCPJitter,
		r.TCPDelay, r.TCPDelayOutside, r.TCPStamped, r.TCPWrites, r.TCPRestamped, r.TCPPackets, r.TCPErr,
		r.UDPLost, r.UDPSent, r.UDPStall, r.UDPJitter, r.UDPDelay, r.UDPDelayOutside, r.UDPSendErrs, r.Kernel, r.VethDrops)
}

// startHitlessStreams listens at tcpBackend and udpBackend in the
// server's namespace and starts both streams from the client's to
// tcpFrontend and udpFrontend, through the node's namespace.
func startHitlessStreams(node *topo.NS, client, server *topo.Workload, tcpFrontend, tcpBackend, udpFrontend, udpBackend string) (*hitlessStreams, error) {
	s := &hitlessStreams{stop: make(chan struct{}), tcpDone: make(chan struct{}), udpDone: make(chan struct{}), client: client.NS, server: server.NS, node: node}
	if err := s.before.read(client.NS, server.NS, node); err != nil {
		return nil, err
	}
	var err error
	err = server.NS.Do(func() (err error) {
		if s.tcpL, err = net.Listen("tcp4", tcpBackend); err != nil {
			return err
		}
		if s.udpPC, err = net.ListenPacket("udp4", udpBackend); err != nil {
			return err
		}
		// A large buffer (forced past rmem_max, with CAP_NET_ADMIN and no
		// sysctl) so that the reader's scheduling delays on a busy machine
		// drop nothing.
		if err := forceRcvbuf(s.udpPC.(*net.UDPConn), 16<<20); err != nil {
			return err
		}
		return setsockoptInt(s.udpPC.(*net.UDPConn), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	})
	if err != nil {
		s.closeAll()
		return nil, err
	}
	go s.readTCP()
	go s.readUDP()
	err = client.NS.Do(func() (err error) {
		if s.tcpConn, err = dialStampedTCP(tcpFrontend); err != nil {
			return err
		}
		s.udpConn, err = net.Dial("udp4", udpFrontend)
		return err
	})
	if err != nil {
		s.closeAll()
		return nil, err
	}
	s.wg.Add(2)
	go s.writeTCP()
	go s.writeUDP()
	return s, nil
}

func forceRcvbuf(c *net.UDPConn, size int) error {
	return setsockoptInt(c, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
}

// rxTimestamp is the SCM_TIMESTAMPNS receive time in oob, false if there
// is none.
func rxTimestamp(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}

func (s *hitlessStreams) closeAll() {
	// Each is an interface, nil until made.
	for _, c := range []io.Closer{s.tcpL, s.udpPC, s.tcpConn, s.udpConn} {
		if c != nil {
			c.Close()
		}
	}
}

func (s *hitlessStreams) readTCP() {
	defer close(s.tcpDone)
	c, err := s.tcpL.Accept()
	if err != nil {
		s.tcpRErr = err
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var last time.Time
	s.tcpReads, s.tcpRErr = readStampedTCP(c.(*net.TCPConn), func(n int) {
		now := time.Now()
		s.tcpGaps = noteGap(s.tcpGaps, last, now)
		last = now
		s.tcpRecv += int64(n)
	})
}

func (s *hitlessStreams) writeTCP() {
	defer s.wg.Done()
	buf := make([]byte, hitlessTCPWrite)
	for {
		select {
		case <-s.stop:
			s.tcpWErr = s.tcpConn.CloseWrite()
			return
		default:
		}
		n, err := s.tcpConn.Write(buf)
		s.tcpSent.Add(int64(n))
		if err != nil {
			s.tcpWErr = err
			return
		}
	}
}

func (s *hitlessStreams) readUDP() {
	defer close(s.udpDone)
	buf, oob := make([]byte, 64), make([]byte, 128)
	var last time.Time
	for {
		n, oobn, _, _, err := s.udpPC.(*net.UDPConn).ReadMsgUDP(buf, oob)
		if err != nil {
			return // closed by Stop
		}
		now := time.Now()
		s.udpGaps = noteGap(s.udpGaps, last, now)
		last = now
		if n != 16 {
			continue
		}
		if rx, ok := rxTimestamp(oob[:oobn]); ok {
			sent := time.Unix(0, int64(binary.BigEndian.Uint64(buf[8:])))
			if d := rx.Sub(sent); d >= hitlessGapMin {
				s.udpDelays = append(s.udpDelays, hitlessGap{End: rx, Len: d})
			}
		}
		seq := binary.BigEndian.Uint64(buf)
		for uint64(len(s.udpSeen)) <= seq {
			s.udpSeen = append(s.udpSeen, false)
		}
		s.udpSeen[seq] = true
	}
}

func (s *hitlessStreams) writeUDP() {
	defer s.wg.Done()
	var msg [16]byte
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		binary.BigEndian.PutUint64(msg[:], s.udpSent)
		binary.BigEndian.PutUint64(msg[8:], uint64(time.Now().UnixNano()))
		// A failed send sent nothing: its sequence number is sent again.
		if _, err := s.udpConn.Write(msg[:]); err != nil {
			s.udpErrs++
		} else {
			s.udpSent++
		}
		time.Sleep(hitlessUDPPace)
	}
}

// Stop ends both streams, waits for the receivers to take what is in
// flight, and returns what they saw, the change having run from from to
// to.
func (s *hitlessStreams) Stop(from, to time.Time) hitlessResult {
	close(s.stop)
	s.wg.Wait()
	var r hitlessResult
	select {
	case <-s.tcpDone:
	case <-time.After(15 * time.Second):
		r.TCPErr = errors.New("the backend never saw the TCP stream end")
	}
	stamps, stampErr := s.tcpConn.Stamps()
	time.Sleep(200 * time.Millisecond) // the last datagrams
	s.closeAll()
	<-s.udpDone
	if r.TCPErr == nil {
		r.TCPErr = errors.Join(s.tcpWErr, s.tcpRErr, stampErr)
	}
	var delays []hitlessGap
	delays, r.TCPStamped, r.TCPRestamped = tcpDelays(stamps, s.tcpReads)
	r.TCPWrites = s.tcpConn.writes
	r.TCPDelay, r.TCPDelayOutside = longest(delays, from, to)
	r.TCPSent = s.tcpSent.Load()
	r.TCPStall, r.TCPJitter = longest(s.tcpGaps, from, to)
	r.TCPReceived = s.tcpRecv
	r.UDPSent, r.UDPSendErrs = s.udpSent, s.udpErrs
	r.UDPStall, r.UDPJitter = longest(s.udpGaps, from, to)
	r.UDPDelay, r.UDPDelayOutside = longest(s.udpDelays, from, to)
	for seq := range r.UDPSent {
		if seq >= uint64(len(s.udpSeen)) || !s.udpSeen[seq] {
			r.UDPLost++
		}
	}
	var after hitlessKernel
	if err := after.read(s.client, s.server, s.node); err == nil {
		r.Kernel = after.sub(s.before)
	}
	return r
}

// netCounter reads the counter name of the lines of proto ("Udp:") of
// /proc/net/<file> ("snmp", "netstat") in ns.
func netCounter(ns *topo.NS, file, proto, name string) (uint64, error) {
	var n uint64
	err := ns.Do(func() error {
		// thread-self: /proc/net is the namespace of the process's main
		// thread, not of this one.
		f, err := os.Open("/proc/thread-self/net/" + file)
		if err != nil {
			return err
		}
		defer f.Close()
		var header []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != proto {
				continue
			}
			if header == nil {
				header = fields
				continue
			}
			for i, h := range header {
				if h == name && i < len(fields) {
					n, err = strconv.ParseUint(fields[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no %s %s in /proc/net/%s: %w", proto, name, file, syscall.ENOENT)
	})
	return n, err
}
