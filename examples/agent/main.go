// Command agent is a long-running node agent built on sluice: the shape an
// embedder copies. It reads the node's desired state from a JSON file
// (interfaces with their policies, workload endpoints, routes, services and
// IP sets; the schema is the State type in state.go, and state.example.json
// is an example), programs the datapath through the library, watches the
// file (inotify on its directory, so a rename over it counts; SIGHUP
// rereads it too) and applies only what changed, make-before-break, and
// serves its counters on /metrics.
//
//	agent -state /etc/sluice/state.json -pin-dir /sys/fs/bpf/sluice \
//	      -listen 127.0.0.1:9477 [-cgroup /sys/fs/cgroup] [-debug-dir /run/sluice]
//
// The debug CLI reads what it runs: the datapath's pins are under the
// datapath/ sub-directory of -pin-dir, and -debug-dir holds the policy
// files that let it explain verdicts:
//
//	sluice -pin-dir /sys/fs/bpf/sluice/datapath -debug-dir /run/sluice counters
//
// Restarts are hitless. Everything that must outlive the process is pinned
// under -pin-dir: the datapath's maps (its datapath/ directory) and the
// links that attach its programs to each interface's TC hooks and to the
// cgroup's connect-time hooks (attach/). SIGTERM and SIGKILL alike leave
// them in place, so the old programs keep enforcing while no agent runs. A
// new process with the same flags opens the next datapath generation on
// the same pins, configures every interface, updates the pinned links to
// its programs and calls Settle, which retires the old generation; no
// packet meets a hook without a program or an interface without its
// policy. To remove sluice from the node, detach the links and delete the
// pin directory; the agent never does that itself.
//
// A state file that does not parse or validate is rejected with an error
// naming the field (for example `interfaces["eth1"].kind`), logged and
// counted (sluice_last_apply_success 0, sluice_applies_total{result="error"});
// the last good state stays in force. An agent whose file is bad when it
// starts does not settle: the previous process's programs go on enforcing
// its state until the file is fixed. An apply that fails in the kernel is
// retried every few seconds.
//
// To stay within the core module's dependencies the agent uses only the
// standard library beside sluice's own: JSON rather than YAML for the
// state, and the Prometheus text exposition format written by hand (it is
// a few lines per metric, see metrics.go) rather than a Prometheus client.
// An embedder who wants either puts the agent in its own module.
//
// The agent works in the network namespace it is started in: the
// interfaces it names, the hooks it attaches and the /metrics listener are
// that namespace's. Run it as root on Linux with TCX (6.6 or later).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/datapath"
)

// retryEvery is how often an apply that failed in the kernel is retried.
const retryEvery = 5 * time.Second

// settleEvents is how long the agent waits after a change of the state
// file for more of them: a tool that writes it in several steps gets read
// once.
const settleEvents = 100 * time.Millisecond

func main() {
	var cfg config
	flag.StringVar(&cfg.state, "state", "", "desired-state JSON `file` (required)")
	flag.StringVar(&cfg.pinDir, "pin-dir", "", "bpffs `directory` for the datapath's maps and the attach links (required)")
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:9477", "`address` of the /metrics listener")
	flag.StringVar(&cfg.cgroup, "cgroup", "", "cgroup v2 `directory` to attach connect-time load balancing to (none if empty)")
	flag.StringVar(&cfg.debugDir, "debug-dir", "", "`directory` for the policy debug files the sluice CLI explains verdicts with (datapath.Options.DebugDir; none if empty)")
	flag.Parse()
	if cfg.state == "" || cfg.pinDir == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Fatal(err)
	}
}

// config is the agent's flags.
type config struct {
	state, pinDir, listen, cgroup, debugDir string
}

func run(ctx context.Context, cfg config) error {
	dpDir, attachDir := filepath.Join(cfg.pinDir, "datapath"), filepath.Join(cfg.pinDir, "attach")
	for _, dir := range []string{dpDir, attachDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	dp, err := datapath.Open(datapath.Options{PinDir: dpDir, DebugDir: cfg.debugDir})
	if err != nil {
		return fmt.Errorf("open datapath: %w", err)
	}
	// Close keeps the pins: the programs keep enforcing after this process.
	defer dp.Close()
	at, err := attach.Open(attachDir)
	if err != nil {
		return err
	}
	a := &agent{dp: dp, at: at, cgroup: cfg.cgroup, writes: map[string]uint64{}, status: status{applies: map[string]uint64{}}}
	log.Printf("datapath generation %d on %s", dp.Generation(), cfg.pinDir)

	events, err := watchFile(cfg.state)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", a.metricsHandler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	log.Printf("metrics on http://%s/metrics", ln.Addr())

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	l := loader{a: a, path: cfg.state}
	l.load()
	debounce := time.NewTimer(0)
	<-debounce.C
	retry := time.NewTicker(retryEvery)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Printf("stopping; the pinned programs keep enforcing")
			return nil
		case <-events:
			debounce.Reset(settleEvents)
		case <-debounce.C:
			l.load()
		case <-hup:
			l.load()
		case <-retry.C:
			if l.kernelFailed {
				l.load()
			}
		}
	}
}

// readStateFile reads the state file, refusing one larger than
// maxStateSize.
func readStateFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := readState(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// loader reads the state file and applies it.
type loader struct {
	a    *agent
	path string
	// good is the content last applied in full.
	good []byte
	// kernelFailed says the last apply failed after its file validated,
	// which a retry may get past.
	kernelFailed bool
}

// load reads, validates and applies the state file, unless it holds what
// was last applied.
func (l *loader) load() {
	data, err := readStateFile(l.path)
	if err == nil && l.good != nil && !l.kernelFailed && bytes.Equal(data, l.good) {
		l.a.record(nil)
		return
	}
	var d *desired
	if err == nil {
		d, err = parseState(data)
	}
	if err != nil {
		err = fmt.Errorf("state file %s rejected, the last good state stays applied: %w", l.path, err)
		log.Print(err)
		// Retrying cannot help until the file changes.
		l.kernelFailed = false
		l.a.record(err)
		return
	}
	for id, name := range d.setNames {
		log.Printf("ip set %q has ID %d", name, id)
	}
	err = l.a.apply(d)
	l.kernelFailed = err != nil
	if err != nil {
		err = fmt.Errorf("apply %s: %w", l.path, err)
		log.Print(err)
	} else {
		l.good = data
		log.Printf("applied %s: %d interfaces, %d services, %d routes, %d IP sets",
			l.path, len(d.ifaces), len(d.services), len(d.routes), len(d.sets))
	}
	l.a.record(err)
}
