package nat

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestAdoptedChoosesAsProgrammed reads random services back from the maps
// a Table programmed and holds Choose over them to Choose over the
// services as given, for flows to every frontend: the same frontend,
// backend, reason and group. Weights are left out (the maps keep only
// the Maglev table they gave).
func TestAdoptedChoosesAsProgrammed(t *testing.T) {
	m := newTestMaps(t)
	r := rand.New(rand.NewPCG(13, 1))
	for round := range 20 {
		services := randomServices(r)
		nodePort := uint16(30000)
		for name, s := range services {
			nodePort++
			for j := range s.Backends {
				s.Backends[j].Weight = 0
			}
			s.InternalLocal = r.IntN(2) == 0
			if r.IntN(3) == 0 {
				wild := netip.IPv4Unspecified()
				if s.Frontends[0].Addr.Is6() {
					wild = netip.IPv6Unspecified()
				}
				s.Frontends = append(s.Frontends, Frontend{Addr: wild, Port: nodePort, Protocol: ProtoTCP, NodePort: true, External: true})
			}
			services[name] = s
		}
		tb, err := NewTable(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.Sync(services); err != nil {
			t.Fatal(err)
		}
		reader, err := NewTable(m)
		if err != nil {
			t.Fatal(err)
		}
		adopted, err := reader.Adopted()
		if err != nil {
			t.Fatal(err)
		}
		if len(adopted) != len(services) {
			t.Fatalf("round %d: %d services read back, %d programmed", round, len(adopted), len(services))
		}
		read := map[string]Service{}
		for _, ks := range adopted {
			read[fmt.Sprint(ks.ID)] = ks.Service
		}
		type outcome struct {
			Frontend          Frontend
			Backend           netip.AddrPort
			Reason            Reason
			LocalOnly, Termin bool
		}
		of := func(c Choice) outcome {
			// External is what the maps cannot always say; what it
			// decides (LocalOnly, source ranges) is compared.
			c.Frontend.External = false
			return outcome{c.Frontend, netip.AddrPortFrom(c.Backend.Addr, c.Backend.Port), c.Reason, c.LocalOnly, c.Terminating}
		}
		for _, s := range services {
			for _, f := range s.Frontends {
				for range 20 {
					client := netip.AddrFrom4([4]byte{10, byte(r.IntN(3)), 0, byte(r.IntN(250))})
					dst := f.Addr
					if f.Addr.Is6() {
						client = netip.AddrFrom16([16]byte{0xfd, byte(r.IntN(3)), 15: byte(r.IntN(250))})
					}
					if f.NodePort {
						dst = client.Next()
					}
					flow := Flow{Client: netip.AddrPortFrom(client, uint16(1024+r.IntN(60000))), Dest: netip.AddrPortFrom(dst, f.Port),
						Protocol: f.Protocol, ToNode: f.NodePort}
					want, got := of(Choose(services, flow, nil, 0)), of(Choose(read, flow, nil, 0))
					if diff := cmp.Diff(fmt.Sprintf("%+v", want), fmt.Sprintf("%+v", got)); diff != "" {
						t.Fatalf("round %d, flow %+v (-programmed +read back):\n%s", round, flow, diff)
					}
				}
			}
		}
	}
}
