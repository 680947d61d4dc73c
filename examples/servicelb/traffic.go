package main

import (
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/sluicenet/sluice/internal/topo"
)

// serveName answers every TCP connection to w's backend port with name.
func serveName(w *topo.Workload, name string) error {
	return w.NS.Do(func() error {
		l, err := net.Listen("tcp4", netip.AddrPortFrom(w.Addr, backendPort).String())
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(name))
				c.Close()
			}
		}()
		return nil
	})
}

// askName connects from the address and port from to to and returns what
// the other end answered. The client closes after the server, so that
// its end of the connection is gone at once (the server's waits in
// TIME_WAIT) and its port is free again.
func askName(from, to netip.AddrPort) (string, error) {
	d := net.Dialer{Timeout: time.Second, LocalAddr: net.TCPAddrFromAddrPort(from)}
	c, err := d.Dial("tcp4", to.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}
