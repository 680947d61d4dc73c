package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicenet/sluice/internal/topo"
)

// buildAgent builds the agent binary into a temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "agent")
	out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// buildCLI builds the debug CLI, cmd/sluice, into a temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "sluice")
	out, err := exec.Command(gobin, "build", "-o", bin, "../../cmd/sluice").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// agentProc is one agent process, started in the node's namespace.
type agentProc struct {
	cmd *exec.Cmd
	log string
}

// startAgent starts the binary in ns with args; its log goes to a file.
// t.Cleanup kills it by its PID and reaps it if the test has not.
func startAgent(t *testing.T, ns *topo.NS, bin string, args ...string) *agentProc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "agent-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A child forked from a thread in the namespace starts in it.
	if err := ns.Do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, log: logf.Name()}
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	return p
}

// stop sends sig to the agent by its PID and waits for it to exit,
// returning its exit error; stopping a stopped agent does nothing.
func (p *agentProc) stop(sig syscall.Signal) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	p.cmd.Process.Signal(sig)
	return p.cmd.Wait()
}

// logText returns what the agent logged.
func (p *agentProc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// metrics are the series of one scrape: value by series, the series
// written as `name{label="value",...}` in the order the agent writes labels.
type metrics map[string]float64

// series returns the key of a series: labels are name, value pairs.
func series(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	var parts []string
	for i := 0; i+1 < len(labels); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$`)

// parseMetrics parses the text exposition format strictly: every sample
// line well formed, of a family with a # TYPE line before it, no series
// twice.
func parseMetrics(body []byte) (metrics, error) {
	m := metrics{}
	typed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "#" && f[1] == "TYPE" {
			if f[3] != "counter" && f[3] != "gauge" {
				return nil, fmt.Errorf("type %q of %s", f[3], f[2])
			}
			typed[f[2]] = true
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		sm := sampleLine.FindStringSubmatch(line)
		if sm == nil {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		if !typed[sm[1]] {
			return nil, fmt.Errorf("series of %s before its # TYPE", sm[1])
		}
		v, err := strconv.ParseFloat(sm[3], 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: %v", line, err)
		}
		key := sm[1] + sm[2]
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("series %s twice", key)
		}
		m[key] = v
	}
	return m, sc.Err()
}

// scrape gets /metrics from addr in ns. The socket is made in the
// namespace; the request is plain HTTP/1.0, read with net/http.
func scrape(ns *topo.NS, addr string) (metrics, error) {
	var c net.Conn
	err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 2*time.Second); return })
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		return nil, fmt.Errorf("status %s, content type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	return parseMetrics(body)
}

// waitMetrics scrapes until cond holds, and fails the test after 60 s.
func waitMetrics(t *testing.T, ns *topo.NS, addr string, p *agentProc, what string, cond func(metrics) bool) metrics {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		m, err := scrape(ns, addr)
		if err == nil && cond(m) {
			return m
		}
		lastErr = err
		if p.cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not in 60 s (last scrape error %v); agent log:\n%s", what, lastErr, p.logText())
	return nil
}

// writeState writes s to path by renaming a new file over it, as a config
// manager does.
func writeState(t *testing.T, path string, s State) {
	t.Helper()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serveWorkload runs, in w's namespace, a TCP server on tcpPort that
// sends name and a newline to each connection and then checks what it
// reads is the stream pattern, reporting each connection's result; and a
// UDP server on udpPort that answers each datagram with name.
func serveWorkload(t *testing.T, w *topo.Workload, name string, tcpPort, udpPort int, results chan<- streamResult) {
	t.Helper()
	var l net.Listener
	var pc net.PacketConn
	err := w.NS.Do(func() (err error) {
		if l, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", w.Addr, tcpPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf("%s:%d", w.Addr, udpPort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				r := readStream(c)
				if r.bytes == 0 {
					return // a probe, not a stream
				}
				select {
				case results <- r:
				default:
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name), from)
		}
	}()
}

// streamResult is what a server read of one connection.
type streamResult struct {
	bytes int64
	// corrupt is the offset of the first byte not of the pattern, -1 if
	// none.
	corrupt int64
	err     error
	// maxGap is the longest time between two reads.
	maxGap time.Duration
}

// streamByte is the stream pattern's byte at offset i: a prime period, so
// a lost or repeated chunk shows.
func streamByte(i int64) byte { return byte(i % 251) }

func readStream(c net.Conn) streamResult {
	r := streamResult{corrupt: -1}
	buf := make([]byte, 64<<10)
	last := time.Now()
	for {
		n, err := c.Read(buf)
		now := time.Now()
		if n > 0 {
			if gap := now.Sub(last); gap > r.maxGap && r.bytes > 0 {
				r.maxGap = gap
			}
			last = now
		}
		for i := 0; i < n && r.corrupt < 0; i++ {
			if buf[i] != streamByte(r.bytes+int64(i)) {
				r.corrupt = r.bytes + int64(i)
			}
		}
		r.bytes += int64(n)
		if err == io.EOF {
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
	}
}

// stream writes the pattern into a connection until stopped.
type stream struct {
	c       net.Conn
	mu      sync.Mutex
	written int64
	err     error
	done    chan struct{}
	stopc   chan struct{}
}

func startStream(c net.Conn) *stream {
	s := &stream{c: c, done: make(chan struct{}), stopc: make(chan struct{})}
	go func() {
		defer close(s.done)
		chunk := make([]byte, 16<<10)
		for {
			select {
			case <-s.stopc:
				return
			default:
			}
			s.mu.Lock()
			off := s.written
			s.mu.Unlock()
			for i := range chunk {
				chunk[i] = streamByte(off + int64(i))
			}
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			n, err := c.Write(chunk)
			s.mu.Lock()
			s.written += int64(n)
			s.err = err
			s.mu.Unlock()
			if err != nil {
				return
			}
			// Paced rather than at full speed: the test shares two CPUs
			// with the agent and other tests.
			time.Sleep(time.Millisecond)
		}
	}()
	return s
}

// progress returns the bytes written so far and the write error, if any.
func (s *stream) progress() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written, s.err
}

// waitProgress waits until the stream has written more than from.
func (s *stream) waitProgress(t *testing.T, from int64, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		n, err := s.progress()
		if err != nil {
			t.Fatalf("%s: the stream broke: %v", what, err)
		}
		if n > from+1<<20 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: the stream made no progress in 30 s", what)
}

// stop ends the stream: the writer stops and closes its side, so the
// server reads EOF.
func (s *stream) stop() (int64, error) {
	close(s.stopc)
	<-s.done
	s.c.(*net.TCPConn).CloseWrite()
	return s.progress()
}
