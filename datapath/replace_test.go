package datapath

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
)

// replacePolicies are two server policies that both allow TCP/80 and deny
// TCP/81, by rules of different IDs, so the deciding rule says which of
// the two decided.
var replacePolicies = [2]polprog.Rules{
	{Tiers: []polprog.Tier{{Name: "a", EndRuleID: 12, Policies: []polprog.Policy{{Name: "a", Rules: []polprog.Rule{
		{ID: 10, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}},
		{ID: 11, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(81)}},
	}}}}}},
	{Tiers: []polprog.Tier{{Name: "b", EndRuleID: 23, Policies: []polprog.Policy{{Name: "b", Rules: []polprog.Rule{
		{ID: 20, Action: polprog.ActionAllow, Protocol: "tcp", SrcNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, DstPorts: []polprog.PortRange{polprog.Port(80)}},
		{ID: 21, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(5000)}},
		{ID: 22, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(81)}},
	}}}}}},
}

// TestReplacePolicyUnderTraffic replaces a workload's ingress policy 1,000
// times, alternating between two policies that both allow a TCP stream
// into it, while the stream carries data and test runs send new flows at
// the same hook: no allowed packet is dropped, nothing either policy
// denies passes, and every packet is decided by one of the two policies,
// never by a gap (no policy) or a mix.
func TestReplacePolicyUnderTraffic(t *testing.T) {
	replacements := 1000
	if testing.Short() {
		replacements = 100
	}
	node, client, server := nodePair(t, "10.67.0.1", "10.67.0.2")
	d, err := Open(Options{ConntrackEntries: 1 << 17, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetInterface(client.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(server.HostIfindex, Interface{Kind: Workload, Ingress: replacePolicies[0]}); err != nil {
		t.Fatal(err)
	}
	attachWorkload(t, node, d, client)
	attachWorkload(t, node, d, server)

	// The stream: the client writes until told to stop; the server
	// counts what it reads.
	var l net.Listener
	if err := server.NS.Do(func() (err error) { l, err = net.Listen("tcp4", "10.67.0.2:80"); return }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		received <- n
	}()
	var conn net.Conn
	if err := client.NS.Do(func() (err error) { conn, err = net.DialTimeout("tcp4", "10.67.0.2:80", 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			select {
			case <-stop:
				writeErr = conn.Close()
				return
			default:
			}
			conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			n, err := conn.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				writeErr = err
				return
			}
		}
	}()

	// Test runs: new flows to port 80 (allowed by both) and 81 (denied
	// by both) at the server's TC egress hook, run from inside the node.
	var runs [2]atomic.Int64 // allowed, denied
	var runErr atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := node.NS.Do(func() error {
			syn := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.200.0.1:1000"), netip.MustParseAddrPort("10.67.0.2:80"), testpkt.SYN, nil))
			ctx := skbCtx{Ifindex: uint32(server.HostIfindex)}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return nil
				default:
				}
				binary.BigEndian.PutUint16(syn[26+2:], uint16(i>>16)) // a fresh source per run
				binary.BigEndian.PutUint16(syn[34:], uint16(i))
				denied := i%2 == 1
				binary.BigEndian.PutUint16(syn[36:], map[bool]uint16{false: 80, true: 81}[denied])
				ret, err := d.TCEgress().Run(&ebpf.RunOptions{Data: syn, Context: ctx})
				if err != nil {
					return err
				}
				if want := map[bool]uint32{false: tcActOK, true: tcActShot}[denied]; ret != want {
					return errors.New("a test run got the wrong verdict")
				}
				if denied {
					runs[1].Add(1)
				} else {
					runs[0].Add(1)
				}
			}
		})
		if err != nil {
			runErr.Store(err)
		}
	}()

	start := time.Now()
	for i := range replacements {
		cfg := Interface{Kind: Workload, Ingress: replacePolicies[(i+1)%2]}
		if err := d.SetInterface(server.HostIfindex, cfg); err != nil {
			t.Fatalf("replacement %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if err, _ := runErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if writeErr != nil {
		t.Fatalf("stream: %v", writeErr)
	}
	var got int64
	select {
	case got = <-received:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the stream end")
	}
	t.Logf("%d replacements in %v (%v each); stream %d bytes; %d allowed and %d denied test runs",
		replacements, elapsed, elapsed/time.Duration(replacements), got, runs[0].Load(), runs[1].Load())
	if got != sent.Load() || got == 0 {
		t.Errorf("stream: sent %d bytes, received %d", sent.Load(), got)
	}

	c, err := d.Counters(server.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	in := c.Ingress
	for _, r := range []bpf.Reason{bpf.ReasonDroppedNoPolicy, bpf.ReasonDroppedPolicyFailed, bpf.ReasonDroppedBadHandoff, bpf.ReasonAcceptedUntracked} {
		if in[r] != 0 {
			t.Errorf("server ingress counted %d packets as %v", in[r], r)
		}
	}
	hits := func(ids ...uint64) uint64 {
		var n uint64
		for _, id := range ids {
			h, err := d.RuleHits().Get(id)
			if err != nil {
				t.Fatal(err)
			}
			n += h
		}
		return n
	}
	// The stream's SYN and every allowed run were decided by rule 10 or
	// 20; every denied run by 11 or 22; nothing by a tier's end.
	allowed, denied := uint64(runs[0].Load())+1, uint64(runs[1].Load())
	if in[bpf.ReasonAcceptedByPolicy] != allowed || hits(10, 20) != allowed {
		t.Errorf("allowed by policy: counted %d, rules 10 and 20 hit %d times; want %d", in[bpf.ReasonAcceptedByPolicy], hits(10, 20), allowed)
	}
	if in[bpf.ReasonDroppedByPolicy] != denied || hits(11, 22) != denied {
		t.Errorf("denied by policy: counted %d, rules 11 and 22 hit %d times; want %d", in[bpf.ReasonDroppedByPolicy], hits(11, 22), denied)
	}
	if n := hits(12, 23); n != 0 {
		t.Errorf("tier ends decided %d packets, want 0", n)
	}
	if d.policySlots.free != int(d.opts.PolicySlots)-4 {
		t.Errorf("%d policy slots free after the replacements, want %d", d.policySlots.free, d.opts.PolicySlots-4)
	}
}
