package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/sluicenet/sluice/internal/topo"
)

// This file is the quickstart's traffic: the flows the client tries
// against the server's policy, and the server's answers.

// decidingRule names the rules whose hits went up, by ID.
func decidingRule(before, after map[uint64]uint64) string {
	s := ""
	for id, n := range after {
		if n > before[id] && id != 1 { // 1 is the client's allow-all
			s += fmt.Sprintf("%d ", id)
		}
	}
	if s == "" {
		return "- (conntrack)"
	}
	return s
}

// flow is one exchange the client tries.
type flow struct {
	name string
	try  func(server netip.Addr) error
}

var flows = []flow{
	{"tcp/80", func(s netip.Addr) error { return tcpEcho(s, 80) }},
	{"tcp/81", func(s netip.Addr) error { return tcpEcho(s, 81) }},
	{"tcp/8080", func(s netip.Addr) error { return tcpEcho(s, 8080) }},
	{"udp/53", func(s netip.Addr) error { return udpEcho(s, 53) }},
	{"udp/54", func(s netip.Addr) error { return udpEcho(s, 54) }},
	{"icmp echo", ping},
}

// serve answers on every port the flows try.
func serve(server *topo.Workload) error {
	return server.NS.Do(func() error {
		for _, port := range []int{80, 81, 8080} {
			l, err := net.Listen("tcp4", fmt.Sprintf("%s:%d", server.Addr, port))
			if err != nil {
				return err
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(c, c); c.Close() }()
				}
			}()
		}
		for _, port := range []int{53, 54} {
			c, err := net.ListenPacket("udp4", fmt.Sprintf("%s:%d", server.Addr, port))
			if err != nil {
				return err
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := c.ReadFrom(buf)
					if err != nil {
						return
					}
					c.WriteTo(buf[:n], from)
				}
			}()
		}
		return nil
	})
}

const timeout = 500 * time.Millisecond

func tcpEcho(server netip.Addr, port uint16) error {
	c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(server, port).String(), timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c)
}

func udpEcho(server netip.Addr, port uint16) error {
	c, err := net.Dial("udp4", netip.AddrPortFrom(server, port).String())
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c)
}

func echo(c net.Conn) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	_, err := io.ReadFull(c, buf)
	return err
}

// ping sends one ICMP echo request on a raw socket and waits for the reply.
func ping(server netip.Addr) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	req := []byte{8, 0, 0, 0, 0x51, 0x51, 0, 1} // echo request, id 0x5151, seq 1
	sum := checksum(req)
	req[2], req[3] = byte(sum>>8), byte(sum)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrInet4{Addr: server.As4()}); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		// A raw socket returns the IP header too.
		if ihl := int(buf[0]&0x0f) * 4; n >= ihl+8 && buf[ihl] == 0 && buf[ihl+4] == 0x51 {
			return nil
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
