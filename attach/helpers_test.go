package attach

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

func init() { rlimit.RemoveMemlock() }

// Return codes of the test programs.
const (
	tcActOK = 0
	xdpPass = 2
)

// countSlots is the size of the counters array: each program counts the
// packets it sees into its own slot.
const countSlots = 64

// newCounters returns an array of countSlots u64 counters.
func newCounters(t *testing.T) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: countSlots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// countProg returns a program of type typ that adds one to counters[slot]
// and passes the packet.
func countProg(t *testing.T, typ ebpf.ProgramType, counters *ebpf.Map, slot uint32) *ebpf.Program {
	t.Helper()
	ret := int32(tcActOK)
	if typ == ebpf.XDP {
		ret = xdpPass
	}
	insns := asm.Instructions{
		asm.StoreImm(asm.R10, -4, int64(slot), asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counters.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
		asm.Mov.Imm(asm.R0, ret).WithSymbol("out"),
		asm.Return(),
	}
	return loadProg(t, typ, fmt.Sprintf("count%d", slot), insns)
}

// passProg returns a program of type typ that only passes the packet.
func passProg(t *testing.T, typ ebpf.ProgramType) *ebpf.Program {
	t.Helper()
	ret := int32(tcActOK)
	if typ == ebpf.XDP {
		ret = xdpPass
	}
	return loadProg(t, typ, "pass", asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()})
}

func loadProg(t *testing.T, typ ebpf.ProgramType, name string, insns asm.Instructions) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: typ, License: "Dual BSD/GPL", Instructions: insns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func counts(t *testing.T, m *ebpf.Map) []uint64 {
	t.Helper()
	out := make([]uint64, countSlots)
	for i := range out {
		if err := m.Lookup(uint32(i), &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func sum(v []uint64) (s uint64) {
	for _, x := range v {
		s += x
	}
	return s
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	id, err := programID(p)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// pair is two namespaces joined by a veth pair, A (10.0.0.1, "sla") and B
// (10.0.0.2, "slb"), with IPv6 off and permanent neighbour entries, so
// that nothing crosses the pair but the test's own packets.
type pair struct {
	A, B   *testutil.NetNS
	VA, VB *testutil.Veth
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{A: testutil.NewNetNS(t), B: testutil.NewNetNS(t)}
	for _, ns := range []*testutil.NetNS{p.A, p.B} {
		ns.Sysctl(t, "net/ipv6/conf/all/disable_ipv6", "1")
		ns.Sysctl(t, "net/ipv6/conf/default/disable_ipv6", "1")
	}
	p.VA, p.VB = testutil.ConnectVeth(t,
		p.A, "sla", netip.MustParsePrefix("10.0.0.1/24"),
		p.B, "slb", netip.MustParsePrefix("10.0.0.2/24"))
	for _, n := range []struct {
		ns  *testutil.NetNS
		at  *testutil.Veth
		ip  netip.Prefix
		mac net.HardwareAddr
	}{{p.A, p.VA, p.VB.Addr, p.VB.HWAddr}, {p.B, p.VB, p.VA.Addr, p.VA.HWAddr}} {
		neigh := &netlink.Neigh{LinkIndex: n.at.Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: n.ip.Addr().AsSlice(), HardwareAddr: n.mac}
		if err := n.ns.Handle.NeighAdd(neigh); err != nil {
			t.Fatalf("neighbour in %s: %v", n.ns.Name, err)
		}
	}
	for _, v := range []*testutil.Veth{p.VA, p.VB} {
		waitActive(t, v)
	}
	return p
}

// waitActive waits until the kernel has activated v (linkwatch runs
// asynchronously after the link comes up): until then its root qdisc is
// noop, which drops every packet sent.
func waitActive(t *testing.T, v *testutil.Veth) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		dev, err := v.NS.Handle.LinkByIndex(v.Index)
		if err != nil {
			t.Fatal(err)
		}
		qdiscs, err := v.NS.Handle.QdiscList(dev)
		if err != nil {
			t.Fatal(err)
		}
		active := dev.Attrs().OperState == netlink.OperUp && len(qdiscs) > 0
		for _, q := range qdiscs {
			if q.Type() == "noop" {
				active = false
			}
		}
		if active {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not active: %v, qdiscs %v", v.Name, v.NS.Name, dev.Attrs().OperState, qdiscs)
		}
	}
}

// in runs fn in ns and fails the test on its error.
func in(t *testing.T, ns *testutil.NetNS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// open opens an Attacher on pinDir inside ns.
func open(t *testing.T, pinDir string) *Attacher {
	t.Helper()
	a, err := Open(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// echo serves UDP echo on B:7000 until the test ends.
func (p *pair) echo(t *testing.T) netip.AddrPort {
	t.Helper()
	srv := p.B.ListenPacket(t, "udp4", "10.0.0.2:7000")
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	return netip.MustParseAddrPort("10.0.0.2:7000")
}

// pingPong sends n numbered UDP requests from A to the echo server, one at
// a time, and returns how many were answered. A request is lost when no
// echo arrives within a second.
func (p *pair) pingPong(t *testing.T, srv netip.AddrPort, n int) (answered int, err error) {
	t.Helper()
	return pingPong(p.A.ListenPacket(t, "udp4", "10.0.0.1:0"), srv, n)
}

// pingPong is pair.pingPong on the client socket c, for any goroutine.
func pingPong(c net.PacketConn, srv netip.AddrPort, n int) (answered int, err error) {
	return exchange(c, srv, n, nil)
}

// flow is traffic running in the background: pingPong on c until stop is
// closed, on any goroutine.
type flow struct {
	stop chan struct{}
	res  chan flowResult
}

type flowResult struct {
	answered int
	err      error
}

func startFlow(c net.PacketConn, srv netip.AddrPort) *flow {
	f := &flow{stop: make(chan struct{}), res: make(chan flowResult, 1)}
	go func() {
		n, err := exchange(c, srv, -1, f.stop)
		f.res <- flowResult{n, err}
	}()
	return f
}

// end stops the flow and returns how many requests were answered, and the
// first loss or error.
func (f *flow) end() (int, error) {
	close(f.stop)
	r := <-f.res
	return r.answered, r.err
}

// exchange sends up to n requests (no limit if n < 0) until stop is closed.
func exchange(c net.PacketConn, srv netip.AddrPort, n int, stop <-chan struct{}) (answered int, err error) {
	to := net.UDPAddrFromAddrPort(srv)
	buf := make([]byte, 64)
	for i := 0; n < 0 || i < n; i++ {
		select {
		case <-stop:
			return answered, nil
		default:
		}
		msg := fmt.Appendf(nil, "req-%d", i)
		if _, err := c.WriteTo(msg, to); err != nil {
			return answered, err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		got, _, err := c.ReadFrom(buf)
		if err != nil {
			return answered, fmt.Errorf("request %d: %w", i, err)
		}
		if string(buf[:got]) != string(msg) {
			return answered, fmt.Errorf("request %d: echo %q", i, buf[:got])
		}
		answered++
	}
	return answered, nil
}

// kernelState is what the kernel holds on an interface's hooks.
type kernelState struct {
	TCXIngress, TCXEgress      []ebpf.ProgramID
	FiltersIngress, FiltersEgr []string
	Clsact                     bool
	XDP                        Mode
	XDPProgram                 ebpf.ProgramID
}

// stateOf reads the hooks of ifname; it must run inside the namespace.
func stateOf(ifname string) (kernelState, error) {
	var s kernelState
	dev, err := netlink.LinkByName(ifname)
	if err != nil {
		return s, err
	}
	idx := dev.Attrs().Index
	for _, q := range []struct {
		attach ebpf.AttachType
		into   *[]ebpf.ProgramID
	}{{ebpf.AttachTCXIngress, &s.TCXIngress}, {ebpf.AttachTCXEgress, &s.TCXEgress}} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: q.attach})
		if err != nil {
			return s, err
		}
		for _, p := range res.Programs {
			*q.into = append(*q.into, p.ID)
		}
	}
	qdiscs, err := netlink.QdiscList(dev)
	if err != nil {
		return s, err
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			s.Clsact = true
		}
	}
	if s.Clsact {
		for _, f := range []struct {
			parent uint32
			into   *[]string
		}{{netlink.HANDLE_MIN_INGRESS, &s.FiltersIngress}, {netlink.HANDLE_MIN_EGRESS, &s.FiltersEgr}} {
			filters, err := netlink.FilterList(dev, f.parent)
			if err != nil {
				return s, err
			}
			for _, flt := range filters {
				name := flt.Type()
				if bf, ok := flt.(*netlink.BpfFilter); ok {
					name = fmt.Sprintf("%s handle %#x prio %#x id %d", bf.Name, bf.Handle, bf.Priority, bf.Id)
				}
				*f.into = append(*f.into, name)
			}
		}
	}
	if x := dev.Attrs().Xdp; x != nil && x.Attached {
		s.XDPProgram = ebpf.ProgramID(x.ProgId)
		if s.XDP, err = xdpModeInForce(idx); err != nil {
			return s, err
		}
	}
	return s, nil
}

func filterDesc(name string, id ebpf.ProgramID) string {
	return fmt.Sprintf("%s%s handle %#x prio %#x id %d", FilterNamePrefix, name, ClsactHandle, ClsactPriority, id)
}

// pins lists every file and directory under the pin directory, relative
// to it, leaving out the two sub-directories Open creates and the
// iterators every bpffs mount starts with.
func pins(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		switch rel {
		case ".", linksDir, qdiscsDir, filtersDir:
		case "maps.debug", "progs.debug": // a new bpffs's own iterators
		default:
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// forceNoTCX makes the TCX probe report TCX unsupported until the test
// ends, as cilium/ebpf does on a kernel without it.
func forceNoTCX(t *testing.T) {
	orig := kernel.attachTCX
	kernel.attachTCX = func(link.TCXOptions) (link.Link, error) {
		return nil, fmt.Errorf("tcx forced off by test: %w", ebpf.ErrNotSupported)
	}
	t.Cleanup(func() { kernel.attachTCX = orig })
}

// forceNoNativeXDP makes driver-mode XDP attaches fail as they do on a
// driver without XDP support, until the test ends.
func forceNoNativeXDP(t *testing.T) {
	orig := kernel.attachXDP
	kernel.attachXDP = func(opts link.XDPOptions) (link.Link, error) {
		if opts.Flags&link.XDPDriverMode != 0 {
			return nil, fmt.Errorf("native xdp forced off by test: %w", unix.EOPNOTSUPP)
		}
		return orig(opts)
	}
	t.Cleanup(func() { kernel.attachXDP = orig })
}

// pinnedLinkID returns the ID of the link pinned at path.
func pinnedLinkID(t *testing.T, path string) link.ID {
	t.Helper()
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// waitCount waits until counters[slot] reaches n while traffic f runs, and
// fails if f stops first.
func (f *flow) waitCount(t *testing.T, counters *ebpf.Map, slot uint32, n uint64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		select {
		case r := <-f.res:
			t.Fatalf("traffic stopped after %d answered: %v (counters %v)", r.answered, r.err, counts(t, counters)[:4])
		default:
		}
		var v uint64
		if err := counters.Lookup(slot, &v); err != nil {
			t.Fatal(err)
		}
		if v >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter %d at %d, never reached %d", slot, v, n)
		}
	}
}
