package peerbench

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestPeerSetup builds every available side with 10 services and checks
// that its client's connections to the first and the last service (the
// baseline's to a server) succeed, and that the side's namespaces are
// gone once it is closed: the benchmark's setup is right. Peers whose
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
			nanos, err := runClientIn(t, cgroup, request{NetNS: s.client.NS.Name, Dests: s.targets(svcs), Count: 20})
			if err == nil && p.conntrack {
				err = checkFlush(s)
			}
			if cerr := s.Close(); cerr != nil {
				t.Error(cerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range nanos {
				if len(n) != 20 {
					t.Errorf("destination %d: %d connects timed, want 20", i, len(n))
				}
			}
			if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
				t.Errorf("namespace %s left after Close: %v", name, err)
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
