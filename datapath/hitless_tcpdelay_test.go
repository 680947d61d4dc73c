package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The TCP stream's one-way delay, as the UDP stream's leaves out both
// sides' scheduling: the kernel stamps each of the client's writes as it
// leaves the client (a software transmit timestamp, SO_TIMESTAMPING), and
// each skb as it reaches the backend's veth (SO_TIMESTAMPNS on the
// backend's socket); the delay of a write is from the first to the
// second, both kernel times of the same clock.
//
// Semantics the measure rests on (Documentation/networking/timestamping.rst
// and net/ipv4/tcp.c):
//   - With SOF_TIMESTAMPING_OPT_ID (and OPT_ID_TCP) the kernel tags the
//     skb that holds the last byte of each send call, and reports its
//     timestamp with that byte's offset in the stream, counted from the
//     setsockopt (the client sets it before its first write, so from the
//     stream's first byte), as the sock_extended_err's ee_data (32 bits:
//     it wraps every 4 GiB, unwrapped here). When TCP splits that skb
//     (tcp_fragment, at the congestion window or an MSS), the tag moves
//     with the last byte. An skb has one tag: a write that adds to an
//     skb not yet sent takes it, and the earlier write has no stamp (a few
//     in ten thousand of 64 KiB writes here; half of 32 KiB ones). So
//     about three in four of the packets on the wire (GSO packets) carry
//     a stamp (TCPStamped of TCPPackets): a lost packet that carries none
//     shows only if a later one it held up does, and a loss of a whole
//     flight, as the gap sub-tests make, always shows.
//   - SOF_TIMESTAMPING_TX_SOFTWARE fires when the driver takes the skb:
//     veth_xmit calls skb_tx_timestamp, so on the client's veth, before
//     the node's side and its datapath. A retransmit is a new clone of the
//     same skb and fires again (TCPRestamped); the first of a key's stamps is its first
//     transmission, which is the one a delay is counted from (a segment
//     the datapath dropped shows as at least the retransmit's wait).
//   - veth offers TSO, so the stream's skbs cross every hop as GSO packets
//     of up to 64 KiB, one timestamp each at both ends.
//   - The backend's skbs are stamped in its namespace before its TCP:
//     a packet's stamp is cleared as it crosses namespaces and set again
//     as the backend's veth hands it to the stack (netif_rx), unless it
//     carries a delivery time (TCP's departure time, kept across
//     namespaces), which its IP replaces with the time as it delivers
//     the packet (skb_clear_delivery_time); either way in softirq, not in
//     the reader. tcp_recvmsg reports
//     the stamp of the last skb a read copied from. The backend reads up
//     to the next multiple of the write size at most, so the read that
//     ends a write ends at the tagged byte and reports that byte's skb
//     (if the backend's TCP coalesced it with a later one in its receive
//     queue, the later one's stamp: an overestimate, never an
//     underestimate).
//
// The client's socket is blocking and outside the runtime's poller, so
// that each write is one send call of hitlessTCPWrite bytes (a full send
// buffer waits in the kernel, not in a partial write) and so that the
// error queue's EPOLLERR does not wake the runtime's writers.

// hitlessTCPWrite is the size of the client's writes, and the most the
// backend reads at once.
const hitlessTCPWrite = 64 << 10

// tcpStamp is a transmit timestamp of the client: the stream offset of
// the last byte of a write, and the kernel's time as the skb holding it
// left.
type tcpStamp struct {
	Key uint64
	TX  time.Time
}

// tcpRead is a read of the backend: the stream offset it reached, and
// the kernel's receive time of the skb of its last byte (OK false if none
// came with it).
type tcpRead struct {
	End int64
	RX  time.Time
	OK  bool
}

// stampedTCP is the client's end of the TCP stream, a blocking socket
// whose transmit timestamps a goroutine reads from the error queue.
type stampedTCP struct {
	fd     int
	writes int64 // send calls that sent something, each a key

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
	stamps    []tcpStamp
	stampErr  error
	last      uint64 // the last key, unwrapped
}

// dialStampedTCP connects to addr from the calling thread's namespace,
// with transmit timestamps on.
func dialStampedTCP(addr string) (*stampedTCP, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	c := &stampedTCP{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	fail := func(what string, err error) (*stampedTCP, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// SO_SNDTIMEO bounds the connect, and then each write, as the
	// deadlines of a net.Conn would.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return fail("SO_SNDTIMEO", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		return fail("connect", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 10}); err != nil {
		return fail("SO_SNDTIMEO", err)
	}
	// The error queue is charged to the receive buffer: room for tens of
	// thousands of timestamps, should the reader not run for a while.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
		return fail("SO_RCVBUFFORCE", err)
	}
	flags := unix.SOF_TIMESTAMPING_TX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE | unix.SOF_TIMESTAMPING_OPT_ID |
		unix.SOF_TIMESTAMPING_OPT_ID_TCP | unix.SOF_TIMESTAMPING_OPT_TSONLY
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, flags); err != nil {
		return fail("SO_TIMESTAMPING", err)
	}
	go c.readStamps()
	return c, nil
}

// Write writes all of b, in one send call unless a signal cuts it short.
func (c *stampedTCP) Write(b []byte) (int, error) {
	var sent int
	for sent < len(b) {
		n, err := unix.Write(c.fd, b[sent:])
		if n > 0 {
			sent += n
			c.writes++
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return sent, fmt.Errorf("write: %w", err)
		}
	}
	return sent, nil
}

// CloseWrite sends the stream's end.
func (c *stampedTCP) CloseWrite() error {
	return unix.Shutdown(c.fd, unix.SHUT_WR)
}

// Stamps stops the reader of the error queue once it has taken what is
// there, and returns the timestamps, in the order they came. Call it once
// the backend has read the whole stream: every byte has left, so every
// first transmission's stamp is queued.
func (c *stampedTCP) Stamps() ([]tcpStamp, error) {
	c.stopStamps()
	return c.stamps, c.stampErr
}

func (c *stampedTCP) stopStamps() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// Close stops the reader and closes the socket. A nil c is a no-op.
func (c *stampedTCP) Close() error {
	if c == nil {
		return nil
	}
	var err error
	c.closeOnce.Do(func() {
		c.stopStamps()
		err = unix.Close(c.fd)
	})
	return err
}

// readStamps takes the timestamps off the error queue until stopped,
// waiting in poll(2): a non-empty error queue is POLLERR.
func (c *stampedTCP) readStamps() {
	defer close(c.done)
	oob := make([]byte, 256)
	for {
		var stopping bool
		select {
		case <-c.stop:
			stopping = true
		default:
		}
		var took int
		for {
			_, oobn, _, _, err := unix.Recvmsg(c.fd, nil, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) && c.stampErr == nil {
					c.stampErr = fmt.Errorf("reading the error queue: %w", err)
				}
				break
			}
			took++
			c.note(oob[:oobn])
		}
		if stopping {
			return
		}
		fds := []unix.PollFd{{Fd: int32(c.fd)}}
		if _, err := unix.Poll(fds, 20); err == nil && took == 0 && fds[0].Revents&unix.POLLHUP != 0 {
			// Both directions shut: poll no longer waits.
			time.Sleep(time.Millisecond)
		}
	}
}

// note notes the timestamp of one message of the error queue, its
// SCM_TIMESTAMPING (three timespecs, the first the software one) and its
// IP_RECVERR (the sock_extended_err, with the key in ee_data).
func (c *stampedTCP) note(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	var (
		tx    time.Time
		key   uint32
		haveT bool
		haveK bool
	)
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPING && len(m.Data) >= 16:
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			tx, haveT = time.Unix(sec, nsec), sec != 0 || nsec != 0
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR && len(m.Data) >= int(unsafe.Sizeof(unix.SockExtendedErr{})):
			ee := (*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
			if ee.Errno == uint32(unix.ENOMSG) && ee.Origin == unix.SO_EE_ORIGIN_TIMESTAMPING && ee.Info == unix.SCM_TSTAMP_SND {
				key, haveK = ee.Data, true
			}
		}
	}
	if !haveT || !haveK {
		return
	}
	// The key nearest the last one, of those with these low 32 bits.
	k := c.last + uint64(int64(int32(key-uint32(c.last))))
	c.last = k
	c.stamps = append(c.stamps, tcpStamp{Key: k, TX: tx})
}

// readStampedTCP reads c to its end, up to the next multiple of
// hitlessTCPWrite at a time, noting each read's end and the receive time
// of its last byte; each read is passed to got.
func readStampedTCP(c *net.TCPConn, got func(n int)) ([]tcpRead, error) {
	if err := setsockoptInt(c, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	buf, oob := make([]byte, hitlessTCPWrite), make([]byte, 128)
	var (
		reads []tcpRead
		off   int64
	)
	for {
		want := hitlessTCPWrite - int(off%hitlessTCPWrite)
		var n, oobn int
		var rerr error
		err := raw.Read(func(fd uintptr) bool {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf[:want], oob, 0)
			return !errors.Is(rerr, unix.EAGAIN) && !errors.Is(rerr, unix.EINTR)
		})
		if err == nil && rerr != nil {
			err = fmt.Errorf("recvmsg: %w", rerr)
		}
		if err != nil {
			return reads, err
		}
		if n == 0 {
			return reads, nil // the stream's end
		}
		off += int64(n)
		rx, ok := rxTimestamp(oob[:oobn])
		reads = append(reads, tcpRead{End: off, RX: rx, OK: ok})
		got(n)
	}
}

// tcpDelays matches each write's first transmit timestamp with the
// backend's read that reached its last byte: the delays of at least
// hitlessGapMin (End the receive time, Len the delay), how many writes had
// both stamps, and how many had more than one transmit timestamp (a
// retransmit of the skb that held their last byte).
func tcpDelays(stamps []tcpStamp, reads []tcpRead) (delays []hitlessGap, matched, restamped int) {
	first := make(map[uint64]time.Time, len(stamps))
	for _, s := range stamps {
		t, ok := first[s.Key]
		switch {
		case !ok:
			first[s.Key] = s.TX
		case s.TX.Before(t):
			first[s.Key] = s.TX
			restamped++
		default:
			restamped++
		}
	}
	for key, tx := range first {
		i := sort.Search(len(reads), func(i int) bool { return reads[i].End > int64(key) })
		if i == len(reads) || !reads[i].OK {
			continue
		}
		matched++
		if d := reads[i].RX.Sub(tx); d >= hitlessGapMin {
			delays = append(delays, hitlessGap{End: reads[i].RX, Len: d})
		}
	}
	return delays, matched, restamped
}

// setsockoptInt sets an integer socket option of c.
func setsockoptInt(c syscall.Conn, level, opt, value int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), level, opt, value)
	}); err != nil {
		return err
	}
	return serr
}

// clientTxPackets is the packets the client's veth (its eth0) sent.
func (h *hitlessNode) clientTxPackets() uint64 {
	h.t.Helper()
	l, err := h.client.NS.Handle.LinkByName("eth0")
	if err != nil {
		h.t.Fatal(err)
	}
	if st := l.Attrs().Statistics; st != nil {
		return st.TxPackets
	}
	return 0
}
