package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
)

// This file is the example's traffic: the flows the client tries, the
// packet policy sees of each, and the server's answers.

// flow is one exchange the client tries: TCP or UDP to a port, or an ICMP
// echo request with a code.
type flow struct {
	proto string
	port  uint16
	code  uint8
}

// flows try each rule of the example's policy.json, and its tiers' ends.
var flows = []flow{
	{proto: "tcp", port: 80},
	{proto: "tcp", port: 443},
	{proto: "tcp", port: 22},
	{proto: "tcp", port: 8080},
	{proto: "udp", port: 53},
	{proto: "udp", port: 1500},
	{proto: "udp", port: 2500},
	{proto: "icmp"},
	{proto: "icmp", code: 1},
}

// name is "tcp/80" or "icmp echo code 0".
func (f flow) name() string {
	if f.proto == "icmp" {
		return fmt.Sprintf("icmp echo code %d", f.code)
	}
	return fmt.Sprintf("%s/%d", f.proto, f.port)
}

// packet is what policy sees of the flow's first packet, sent from
// client's srcPort (an echo request's identifier takes no port).
func (f flow) packet(client netip.Addr, srcPort uint16, server netip.Addr) polprog.Packet {
	p := polprog.Packet{Src: client, Dst: server}
	switch f.proto {
	case "tcp":
		p.Protocol, p.SrcPort, p.DstPort = syscall.IPPROTO_TCP, srcPort, f.port
	case "udp":
		p.Protocol, p.SrcPort, p.DstPort = syscall.IPPROTO_UDP, srcPort, f.port
	case "icmp":
		p.Protocol, p.ICMPType, p.ICMPCode = syscall.IPPROTO_ICMP, 8, f.code
	}
	return p
}

// timeout is how long an exchange waits for its answer: a denied flow
// gets none. It is shorter than TCP's first retransmission timeout (1 s),
// so that a denied SYN is not sent again, to be counted with the next
// flow's hits.
const timeout = 800 * time.Millisecond

// try runs the exchange from client's srcPort (the echo request's
// identifier) and returns nil when the server answered.
func (f flow) try(client netip.Addr, srcPort uint16, server netip.Addr) error {
	switch f.proto {
	case "tcp":
		d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, srcPort))}
		c, err := d.Dial("tcp4", netip.AddrPortFrom(server, f.port).String())
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c)
	case "udp":
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(client, srcPort)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(server, f.port)))
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c)
	case "icmp":
		return ping(server, srcPort, f.code)
	}
	return fmt.Errorf("protocol %q", f.proto)
}

func echo(c net.Conn) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 5))
	return err
}

// ping sends one ICMP echo request with identifier id and the given code
// on a raw socket and waits for its reply.
func ping(server netip.Addr, id uint16, code uint8) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	req := []byte{8, code, 0, 0, byte(id >> 8), byte(id), 0, 1} // echo request, sequence 1
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
		// A raw socket returns the IP header too; the reply is type 0
		// with the request's identifier.
		if ihl := int(buf[0]&0x0f) * 4; n >= ihl+8 && buf[ihl] == 0 && buf[ihl+4] == byte(id>>8) && buf[ihl+5] == byte(id) {
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

// serve echoes on every TCP and UDP port the flows try (the kernel
// answers echo requests).
func serve(server *topo.Workload, flows []flow) error {
	return server.NS.Do(func() error {
		for _, f := range flows {
			addr := netip.AddrPortFrom(server.Addr, f.port).String()
			switch f.proto {
			case "tcp":
				l, err := net.Listen("tcp4", addr)
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
			case "udp":
				c, err := net.ListenPacket("udp4", addr)
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
		}
		return nil
	})
}
