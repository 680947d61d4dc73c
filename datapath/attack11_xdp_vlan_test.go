package datapath

import (
	"errors"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/bpf"
)

// TestAttack11XDPVLANOffload: the client sends UDP the XDP tiers deny
// through a VLAN interface on its veth, whose tag travels beside the
// frame (VLAN offload), not in it. Every such packet is dropped and
// counted once at the host interface; which hook counts it is logged: a
// tag outside the frame is what TC drops VLANs for, but XDP may see the
// frame untagged and drop it by policy.
func TestAttack11XDPVLANOffload(t *testing.T) {
	for _, mode := range []attach.XDPMode{attach.XDPNative, attach.XDPGeneric} {
		t.Run(mode.String(), func(t *testing.T) {
			d, _, client, _, _ := xdpNode(t, mode, xdpHostConfig)
			err := client.NS.Do(func() error {
				eth, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				vl := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0.7", ParentIndex: eth.Attrs().Index}, VlanId: 7}
				if err := netlink.LinkAdd(vl); err != nil {
					return err
				}
				if err := netlink.LinkSetUp(vl); err != nil {
					return err
				}
				addr, _ := netlink.ParseAddr("10.69.0.1/24")
				if err := netlink.AddrAdd(vl, addr); err != nil {
					return err
				}
				return netlink.NeighAdd(&netlink.Neigh{LinkIndex: vl.Attrs().Index, State: netlink.NUD_PERMANENT,
					IP: net.ParseIP("10.69.0.2"), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 9}})
			})
			if errors.Is(err, unix.EOPNOTSUPP) {
				t.Skip("no 802.1Q in this kernel (the 8021q module is not loaded; the host's modules are not the test's to load)")
			}
			if err != nil {
				t.Fatal(err)
			}
			before, err := d.Counters(client.HostIfindex)
			if err != nil {
				t.Fatal(err)
			}
			const sent = 10
			err = client.NS.Do(func() error {
				c, err := net.Dial("udp4", "10.69.0.2:9999")
				if err != nil {
					return err
				}
				defer c.Close()
				for range sent {
					if _, err := c.Write([]byte("x")); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			after, err := d.Counters(client.HostIfindex)
			if err != nil {
				t.Fatal(err)
			}
			got := diffCounts(before.Ingress, after.Ingress)
			t.Logf("%s: counted %v", mode, got)
			if got[bpf.ReasonDroppedVLAN]+got[bpf.ReasonDroppedByPolicy] != sent {
				t.Errorf("sent %d tagged packets, counted %v", sent, got)
			}
		})
	}
}
