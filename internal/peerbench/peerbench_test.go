package peerbench

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestPeerSetup builds every available side with 10 services and checks
// that its client's connections to the first and the last service (the
// baseline's to a server) succeed, and that the side's namespaces are
// gone once it is closed: the benchmark's setup is right. It does the
// same for the policy benchmark's sides with 10 rules, whose floods must
// arrive and, with a policy that does not allow the client, must not;
// and it runs each control-plane side with 10 services. Peers whose
// tools are not installed are skipped; sluice's sides always run.
func TestPeerSetup(t *testing.T) {
	testutil.RequirePrivileged(t)
	svcs := services(10)
	plain, sock := testutil.TempCgroup(t), testutil.TempCgroup(t)
	for _, p := range peers {
		t.Run(p.name, func(t *testing.T) {
			if missing := missingTools(t, p, false); len(missing) > 0 {
				t.Skipf("%v not installed", missing)
			}
			cgroup := plain
			if p.sock {
				cgroup = sock
			}
			s, err := newSide(t, p, svcs, cgroup)
			if err != nil {
				t.Fatal(err)
			}
			name := s.node.NS.Name
			rep, err := runClientIn(t, cgroup, request{NetNS: s.client.NS.Name, Dests: s.targets(svcs), Count: 20})
			if err == nil && p.conntrack {
				err = checkFlush(s)
			}
			if cerr := s.Close(); cerr != nil {
				t.Error(cerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range rep.Nanos {
				if len(n) != 20 {
					t.Errorf("destination %d: %d connects timed, want 20", i, len(n))
				}
			}
			if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
				t.Errorf("namespace %s left after Close: %v", name, err)
			}
		})
	}
	for _, p := range policyPeers(10, clientNet) {
		t.Run("policy/"+p.name, func(t *testing.T) {
			if missing := missingTools(t, p, false); len(missing) > 0 {
				t.Skipf("%v not installed", missing)
			}
			s := openSide(t, p, nil, plain, plain)
			rep, err := runClientIn(t, plain, request{NetNS: s.client.NS.Name, Dests: []netip.AddrPort{policyConnect}, Count: 20})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Nanos[0]) != 20 {
				t.Errorf("%d connects timed, want 20", len(rep.Nanos[0]))
			}
			pps, _, err := floodOnce(t, s, 20*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if pps <= 0 {
				t.Error("no flood packet reached the server")
			}
		})
	}
	// The same sides with a policy that allows another net must drop the
	// client's flood: the rules are enforced, not passed by.
	for _, p := range policyPeers(10, missNet(16383)) {
		if p.name == baseline || p.name == "sluice-nopolicy" {
			continue
		}
		t.Run("policy-deny/"+p.name, func(t *testing.T) {
			if missing := missingTools(t, p, false); len(missing) > 0 {
				t.Skipf("%v not installed", missing)
			}
			s := openSide(t, p, nil, plain, plain)
			d := 20 * time.Millisecond
			pps, _, err := floodOnce(t, s, d)
			if err != nil {
				t.Fatal(err)
			}
			// A few packets may be the server's own neighbour traffic.
			if got := pps * d.Seconds(); got > 5 {
				t.Errorf("%.0f flood packets reached the server through a policy that denies them", got)
			}
		})
	}
	small := services(10)
	more := services(13)[10:12]
	for _, cs := range cpSides {
		t.Run("control/"+cs.name, func(t *testing.T) {
			if missing := missingTools(t, cs.peer, false); len(missing) > 0 {
				t.Skipf("%v not installed", missing)
			}
			ms, err := runControlSide(cs, small, more)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) == 0 {
				t.Error("no operation timed")
			}
		})
	}
}

// checkFlush checks that the side's node tracked the client's
// connections and that flushConntrack empties its table.
func checkFlush(s *side) error {
	flows, err := s.node.NS.Handle.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	if len(flows) == 0 {
		return errors.New("no conntrack entries in the node after the connections")
	}
	s.flushConntrack()
	if flows, err = s.node.NS.Handle.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4); err != nil {
		return err
	}
	if len(flows) != 0 {
		return fmt.Errorf("%d conntrack entries left after the flush", len(flows))
	}
	return nil
}
