package datapath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
)

// atk11Model is what policy sees of a frame as testpkt decodes it, and
// whether it decoded it.
func atk11Model(frame []byte) (polprog.Packet, bool) {
	p, err := testpkt.Parse(frame)
	if err != nil && strings.Contains(err.Error(), "udp length") {
		// Neither hook reads UDP's length field (the stack drops a
		// datagram longer than its packet): decode with the right one.
		p, err = atk11FixUDPLen(frame, err)
	}
	if err != nil || len(p.Eth.VLANs) > 0 {
		return polprog.Packet{}, false
	}
	var pkt polprog.Packet
	switch {
	case p.IPv4 != nil:
		pkt.Src, pkt.Dst, pkt.Protocol = p.IPv4.Src, p.IPv4.Dst, p.IPv4.Protocol
	case p.IPv6 != nil:
		pkt.Src, pkt.Dst, pkt.Protocol = p.IPv6.Src, p.IPv6.Dst, p.IPv6.Protocol
	default:
		return polprog.Packet{}, false
	}
	switch {
	case p.TCP != nil:
		pkt.Protocol, pkt.SrcPort, pkt.DstPort = 6, p.TCP.SrcPort, p.TCP.DstPort
	case p.UDP != nil:
		pkt.Protocol, pkt.SrcPort, pkt.DstPort = 17, p.UDP.SrcPort, p.UDP.DstPort
	case p.ICMPv4 != nil:
		pkt.Protocol, pkt.ICMPType, pkt.ICMPCode = 1, p.ICMPv4.Type, p.ICMPv4.Code
	case p.ICMPv6 != nil:
		pkt.Protocol, pkt.ICMPType, pkt.ICMPCode = 58, p.ICMPv6.Type, p.ICMPv6.Code
	}
	return pkt, true
}

// atk11FixUDPLen decodes frame, whose UDP length field testpkt refused
// with err, with that field set to what its IP length leaves for it: the
// field is where the value err names sits.
func atk11FixUDPLen(frame []byte, err error) (*testpkt.Packet, error) {
	var bad int
	if _, serr := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "udp length"):], "udp length %d", &bad); serr != nil || len(frame) < testpkt.EthLen+40 {
		return nil, err
	}
	end := testpkt.EthLen + int(binary.BigEndian.Uint16(frame[testpkt.EthLen+2:]))
	if frame[testpkt.EthLen]>>4 == 6 {
		end = testpkt.EthLen + 40 + int(binary.BigEndian.Uint16(frame[testpkt.EthLen+4:]))
	}
	for at := testpkt.EthLen + 20; at+8 <= len(frame) && at+8 <= end; at++ {
		if int(binary.BigEndian.Uint16(frame[at+4:])) != bad {
			continue
		}
		out := append([]byte(nil), frame...)
		binary.BigEndian.PutUint16(out[at+4:], uint16(end-at))
		if p, perr := testpkt.Parse(out); perr == nil {
			return p, nil
		}
	}
	return nil, err
}

// TestAttack11XDPMutations: the attack frames with random bytes of their
// headers changed, through XDP then TC at each interface setting: every
// frame is counted once over both hooks, and what XDP drops by policy
// decodes to a packet the XDP tiers deny (polprog.Evaluate): XDP never
// drops what the policy allows, whatever the bytes.
func TestAttack11XDPMutations(t *testing.T) {
	d := openXDP(t)
	rules := polprog.Rules{ForHost: true, PreDNATTiers: xdpTiers}
	bases := atk11Frames(t)
	r := rand.New(rand.NewPCG(11, 11))
	n := 3000
	if testing.Short() {
		n = 500
	}
	stats := map[string]int{}
	for _, cfg := range []Interface{
		{Kind: Host, XDP: xdpTiers},
		{Kind: Host, XDP: xdpTiers, PassFragments: true, IPv6: IPv6Pass},
	} {
		if err := d.SetInterface(loIfindex, cfg); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			base := bases[r.IntN(len(bases))]
			frame := append([]byte(nil), base.frame...)
			for k := r.IntN(3) + 1; k > 0; k-- {
				at := 12 + r.IntN(min(len(frame), 110)-12)
				frame[at] = byte(r.Uint32())
			}
			before := xdpCounts(t, d)
			ret := runXDP(t, d, frame)
			if ret == xdpPass {
				runTCAt1(t, d, frame)
			}
			delta := diffCounts(before, xdpCounts(t, d))
			if c := countSum(delta); c != 1 {
				t.Fatalf("%s mutated %x: counted %d times: %v", base.name, frame, c, delta)
			}
			if ret != xdpDrop || delta[bpf.ReasonDroppedByPolicy] == 0 {
				stats["other"]++
				continue
			}
			stats["xdp policy drop"]++
			pkt, ok := atk11Model(frame)
			if !ok {
				t.Errorf("%s mutated %x: XDP dropped by policy a frame testpkt does not decode", base.name, frame)
				continue
			}
			want, err := polprog.Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			if want.Verdict != polprog.VerdictDeny {
				t.Errorf("%s mutated %x: XDP dropped %+v, which Evaluate allows (%+v)", base.name, frame, pkt, want)
			}
		}
	}
	t.Logf("%v", stats)
}
