package datapath

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicenet/sluice/internal/topo"
)

// echoStream is a TCP connection from a client workload to an echo server
// in another, carrying data both ways at full speed until Stop.
type echoStream struct {
	t       testing.TB
	conn    net.Conn
	l       net.Listener
	stop    chan struct{}
	wg      sync.WaitGroup
	sent    atomic.Int64
	read    atomic.Int64
	echoed  chan int64
	errOnce sync.Once
	err     error
}

// startEchoStream listens at addr in the server's namespace and starts a
// stream to it from the client's.
func startEchoStream(t testing.TB, client, server *topo.Workload, addr string) *echoStream {
	t.Helper()
	s := &echoStream{t: t, stop: make(chan struct{}), echoed: make(chan int64, 1)}
	if err := server.NS.Do(func() (err error) { s.l, err = net.Listen("tcp4", addr); return }); err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := s.l.Accept()
		if err != nil {
			s.echoed <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(c, c)
		s.echoed <- n
	}()
	if err := client.NS.Do(func() (err error) { s.conn, err = net.DialTimeout("tcp4", addr, 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	s.wg.Add(2)
	go func() { // write until told to stop
		defer s.wg.Done()
		buf := make([]byte, 16<<10)
		for {
			select {
			case <-s.stop:
				s.conn.(*net.TCPConn).CloseWrite()
				return
			default:
			}
			s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			n, err := s.conn.Write(buf)
			s.sent.Add(int64(n))
			if err != nil {
				s.fail(err)
				return
			}
		}
	}()
	go func() { // and read the echo back
		defer s.wg.Done()
		s.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := io.Copy(io.Discard, s.conn)
		s.read.Add(n)
		if err != nil {
			s.fail(err)
		}
	}()
	return s
}

func (s *echoStream) fail(err error) { s.errOnce.Do(func() { s.err = err }) }

// Stop ends the stream and checks that every byte the client sent came
// back, and that the connection saw no error (a reset or a stall past its
// deadlines). It returns the bytes carried each way.
func (s *echoStream) Stop() int64 {
	s.t.Helper()
	close(s.stop)
	s.wg.Wait()
	s.conn.Close()
	s.l.Close()
	if s.err != nil {
		s.t.Fatalf("stream: %v", s.err)
	}
	var echoed int64
	select {
	case echoed = <-s.echoed:
	case <-time.After(10 * time.Second):
		s.t.Fatal("the server never saw the stream end")
	}
	if echoed != s.sent.Load() || s.read.Load() != s.sent.Load() || echoed == 0 {
		s.t.Errorf("stream: client sent %d bytes, server echoed %d, client read %d", s.sent.Load(), echoed, s.read.Load())
	}
	return echoed
}
