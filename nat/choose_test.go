package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// murmur3 is MurmurHash3_x86_32 as published: little-endian 4-byte
// blocks, a tail, and the length in the finaliser. Written out here apart
// from FlowHash so that the test does not check the hash against itself.
func murmur3(data []byte, seed uint32) uint32 {
	const c1, c2 = 0xcc9e2d51, 0x1b873593
	rotl := func(x uint32, r uint) uint32 { return x<<r | x>>(32-r) }
	h := seed
	n := len(data) / 4
	for i := 0; i < n; i++ {
		k := binary.LittleEndian.Uint32(data[4*i:])
		k *= c1
		k = rotl(k, 15)
		k *= c2
		h ^= k
		h = rotl(h, 13)
		h = h*5 + 0xe6546b64
	}
	tail := data[4*n:]
	var k uint32
	switch len(tail) {
	case 3:
		k ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		k ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		k ^= uint32(tail[0])
		k *= c1
		k = rotl(k, 15)
		k *= c2
		h ^= k
	}
	h ^= uint32(len(data))
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// TestMurmur3Reference holds the test's murmur3 to published vectors.
func TestMurmur3Reference(t *testing.T) {
	for _, tc := range []struct {
		in   string
		seed uint32
		want uint32
	}{
		{"", 0, 0},
		{"", 1, 0x514e28b7},
		{"", 0xffffffff, 0x81f16f39},
		{"test", 0, 0xba6bd213},
		{"Hello, world!", 0, 0xc0363e43},
		{"The quick brown fox jumps over the lazy dog", 0, 0x2e4ff723},
	} {
		if got := murmur3([]byte(tc.in), tc.seed); got != tc.want {
			t.Errorf("murmur3(%q, %#x) = %#x, want %#x", tc.in, tc.seed, got, tc.want)
		}
	}
}

// flowBytes lays flow's ten words out as murmur3 reads blocks: each word
// (big-endian from the 16-byte addresses, then the ports, then the
// protocol) stored little-endian.
func flowBytes(f Flow) []byte {
	var out []byte
	for _, a := range []netip.Addr{f.Client.Addr(), f.Dest.Addr()} {
		b := a.As16()
		for i := 0; i < 16; i += 4 {
			out = binary.LittleEndian.AppendUint32(out, binary.BigEndian.Uint32(b[i:]))
		}
	}
	out = binary.LittleEndian.AppendUint32(out, uint32(f.Client.Port())<<16|uint32(f.Dest.Port()))
	return binary.LittleEndian.AppendUint32(out, uint32(f.Protocol))
}

func TestFlowHash(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, f := range []Flow{
		{},
		{Client: ap("10.2.0.1:40000"), Dest: ap("10.96.0.10:80"), Protocol: ProtoTCP},
		{Client: ap("10.2.0.1:40001"), Dest: ap("10.96.0.10:80"), Protocol: ProtoTCP},
		{Client: ap("10.2.0.1:40000"), Dest: ap("10.96.0.10:80"), Protocol: ProtoUDP},
		{Client: ap("192.168.1.1:1"), Dest: ap("10.0.0.1:30080"), Protocol: ProtoTCP, ToNode: true},
		{Client: ap("[fd00::1]:65535"), Dest: ap("[fd00:96::a]:443"), Protocol: ProtoSCTP},
		{Client: ap("[2001:db8::ffff:1]:12345"), Dest: ap("[::1]:53"), Protocol: ProtoUDP},
	} {
		b := flowBytes(f)
		if len(b) != 40 {
			t.Fatalf("%+v: %d bytes", f, len(b))
		}
		if got, want := FlowHash(f), murmur3(b, 0); got != want {
			t.Errorf("FlowHash(%v -> %v proto %d) = %#x, want %#x", f.Client, f.Dest, f.Protocol, got, want)
		}
	}
	// ToNode is no input of the hash; an IPv4 address is hashed mapped.
	a := Flow{Client: ap("10.2.0.1:40000"), Dest: ap("10.96.0.10:80"), Protocol: ProtoTCP}
	b := a
	b.ToNode = true
	if FlowHash(a) != FlowHash(b) {
		t.Error("ToNode changes the hash")
	}
	mapped := a
	mapped.Client = netip.AddrPortFrom(netip.AddrFrom16(a.Client.Addr().As16()), a.Client.Port())
	if FlowHash(a) != murmur3(flowBytes(mapped), 0) {
		t.Error("an IPv4 address is not hashed as its IPv4-mapped form")
	}
}

func TestReasonString(t *testing.T) {
	want := map[Reason]string{ReasonNone: "none", ReasonHash: "hash", ReasonMaglev: "maglev", ReasonAffinity: "affinity",
		ReasonNoBackend: "no-backend", ReasonSourceRange: "source-range", Reason(99): "Reason(99)"}
	for r, s := range want {
		if r.String() != s {
			t.Errorf("Reason %d prints %q, want %q", uint8(r), r.String(), s)
		}
	}
}

// Backends of the model's services, named for their standing.
var (
	localA  = Backend{Addr: addr("10.1.0.4"), Port: 8080, Local: true}
	remoteB = Backend{Addr: addr("10.1.0.5"), Port: 8080}
	remoteC = Backend{Addr: addr("10.1.0.3"), Port: 8080}
	termL   = Backend{Addr: addr("10.1.0.9"), Port: 8080, Local: true, Terminating: true}
	termR   = Backend{Addr: addr("10.1.0.8"), Port: 8080, Terminating: true}
)

// modelServices are services that reach every step of the model.
func modelServices() map[string]Service {
	cluster := func(a string) Frontend { return Frontend{Addr: addr(a), Port: 80, Protocol: ProtoTCP} }
	node := func(port uint16) Frontend {
		return Frontend{Addr: netip.IPv4Unspecified(), Port: port, Protocol: ProtoTCP, NodePort: true, External: true}
	}
	return map[string]Service{
		"web": {
			Frontends: []Frontend{cluster("10.96.0.10"), node(30080),
				{Addr: addr("203.0.113.7"), Port: 80, Protocol: ProtoTCP, External: true}},
			Backends:      []Backend{remoteB, termR, localA, termL, remoteC},
			ExternalLocal: true,
			SourceRanges:  []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
		},
		"term":       {Frontends: []Frontend{cluster("10.96.0.20"), node(30020)}, Backends: []Backend{termR, termL}},
		"term-local": {Frontends: []Frontend{cluster("10.96.0.21")}, Backends: []Backend{termR, termL}, InternalLocal: true},
		"remote-only": {Frontends: []Frontend{cluster("10.96.0.22")}, Backends: []Backend{remoteB, termR},
			InternalLocal: true},
		"empty": {Frontends: []Frontend{cluster("10.96.0.23")}},
		"mg": {
			Frontends: []Frontend{cluster("10.96.0.30"), node(30030)},
			Backends: []Backend{{Addr: addr("10.1.1.1"), Port: 80, Weight: 3}, {Addr: addr("10.1.1.2"), Port: 80, Local: true},
				{Addr: addr("10.1.1.3"), Port: 80, Weight: 1}, termL},
			Maglev: true, ExternalLocal: true,
		},
		"mg-term": {Frontends: []Frontend{cluster("10.96.0.31")}, Backends: []Backend{termL, termR}, Maglev: true},
		"aff": {Frontends: []Frontend{cluster("10.96.0.40"), node(30040)}, Backends: []Backend{localA, remoteB, remoteC, termR},
			Affinity: 10 * time.Second, ExternalLocal: true},
		"v6": {Frontends: []Frontend{{Addr: netip.IPv6Unspecified(), Port: 30080, Protocol: ProtoTCP, NodePort: true, External: true}},
			Backends: []Backend{{Addr: addr("fd01::5"), Port: 8080}}},
	}
}

func TestChoose(t *testing.T) {
	svcs := modelServices()
	ap := netip.MustParseAddrPort
	now := 1000 * time.Second
	flow := func(client, dest string) Flow {
		return Flow{Client: ap(client), Dest: ap(dest), Protocol: ProtoTCP}
	}
	toNode := func(f Flow) Flow { f.ToNode = true; return f }
	udp := func(f Flow) Flow { f.Protocol = ProtoUDP; return f }
	// at picks from a group written out in slot order by the flow's hash.
	at := func(f Flow, group ...Backend) Backend { return group[FlowHash(f)%uint32(len(group))] }
	fe := func(name string, i int) Frontend { return svcs[name].Frontends[i] }
	aff := func(b Backend, age time.Duration) *AffinityRecord {
		return &AffinityRecord{Backend: netip.AddrPortFrom(b.Addr, b.Port), LastUsed: now - age}
	}
	mgTable := modelMaglev(t, svcs["mg"])
	mgBackend := func(f Flow) Backend {
		want := mgTable[FlowHash(f)%DefaultMaglevSize]
		for _, b := range svcs["mg"].Backends {
			if netip.AddrPortFrom(b.Addr, b.Port) == want {
				return b
			}
		}
		t.Fatalf("Maglev table names %v, not a backend", want)
		return Backend{}
	}

	type tc struct {
		name string
		flow Flow
		aff  *AffinityRecord
		want Choice
	}
	var cases []tc
	add := func(name string, f Flow, a *AffinityRecord, want Choice) {
		cases = append(cases, tc{name, f, a, want})
	}
	for i, client := range []string{"10.2.0.1:40000", "10.2.0.2:40000", "10.2.0.1:40001", "10.2.7.9:1"} {
		f := flow(client, "10.96.0.10:80")
		add("cluster IP hashes over every serving backend "+string(rune('a'+i)), f, nil,
			Choice{Service: "web", Frontend: fe("web", 0), Backend: at(f, localA, remoteC, remoteB), Reason: ReasonHash})
		f = flow(client, "10.96.0.20:80")
		add("terminating fallback "+string(rune('a'+i)), f, nil,
			Choice{Service: "term", Frontend: fe("term", 0), Backend: at(f, termL, termR), Reason: ReasonHash, Terminating: true})
		f = flow(client, "10.96.0.30:80")
		add("maglev "+string(rune('a'+i)), f, nil,
			Choice{Service: "mg", Frontend: fe("mg", 0), Backend: mgBackend(f), Reason: ReasonMaglev})
		f = flow(client, "10.96.0.31:80")
		add("maglev, terminating group hashes "+string(rune('a'+i)), f, nil,
			Choice{Service: "mg-term", Frontend: fe("mg-term", 0), Backend: at(f, termL, termR), Reason: ReasonHash, Terminating: true})
	}
	add("node port via a node address, local only",
		toNode(flow("192.168.1.1:5000", "10.0.0.1:30080")), nil,
		Choice{Service: "web", Frontend: fe("web", 1), Backend: localA, Reason: ReasonHash, LocalOnly: true})
	add("node port not ToNode: no service", flow("192.168.1.1:5000", "10.0.0.1:30080"), nil, Choice{})
	add("node port sent to the wildcard itself: no service", flow("192.168.1.1:5000", "0.0.0.0:30080"), nil, Choice{})
	add("node port of another protocol", udp(toNode(flow("192.168.1.1:5000", "10.0.0.1:30080"))), nil, Choice{})
	add("node port no service has", toNode(flow("192.168.1.1:5000", "10.0.0.1:30081")), nil, Choice{})
	add("exact frontend wins over a node port", toNode(flow("192.168.1.1:5000", "203.0.113.7:80")), nil,
		Choice{Service: "web", Frontend: fe("web", 2), Backend: localA, Reason: ReasonHash, LocalOnly: true})
	add("outside the source ranges at a node port", toNode(flow("10.9.9.9:5000", "10.0.0.1:30080")), nil,
		Choice{Service: "web", Frontend: fe("web", 1), Reason: ReasonSourceRange, LocalOnly: true})
	add("outside the source ranges at a load balancer", flow("10.9.9.9:5000", "203.0.113.7:80"), nil,
		Choice{Service: "web", Frontend: fe("web", 2), Reason: ReasonSourceRange, LocalOnly: true})
	add("source ranges do not apply inside", flow("10.9.9.9:5000", "10.96.0.10:80"), nil,
		Choice{Service: "web", Frontend: fe("web", 0), Backend: at(flow("10.9.9.9:5000", "10.96.0.10:80"), localA, remoteC, remoteB), Reason: ReasonHash})
	add("cluster IP, other protocol", udp(flow("10.2.0.1:1", "10.96.0.10:80")), nil, Choice{})
	add("terminating local fallback", flow("10.2.0.1:1", "10.96.0.21:80"), nil,
		Choice{Service: "term-local", Frontend: fe("term-local", 0), Backend: termL, Reason: ReasonHash, LocalOnly: true, Terminating: true})
	add("terminating node port, not local", toNode(flow("10.2.0.1:1", "10.0.0.1:30020")), nil,
		Choice{Service: "term", Frontend: fe("term", 1), Backend: at(flow("10.2.0.1:1", "10.0.0.1:30020"), termL, termR), Reason: ReasonHash, Terminating: true})
	add("local only without a local backend", flow("10.2.0.1:1", "10.96.0.22:80"), nil,
		Choice{Service: "remote-only", Frontend: fe("remote-only", 0), Reason: ReasonNoBackend, LocalOnly: true})
	add("no backend", flow("10.2.0.1:1", "10.96.0.23:80"), nil,
		Choice{Service: "empty", Frontend: fe("empty", 0), Reason: ReasonNoBackend})
	add("maglev frontend with local policy hashes over local", toNode(flow("10.2.0.1:1", "10.0.0.1:30030")), nil,
		Choice{Service: "mg", Frontend: fe("mg", 1), Backend: svcs["mg"].Backends[1], Reason: ReasonHash, LocalOnly: true})
	aflow := flow("10.2.0.1:40000", "10.96.0.40:80")
	hashed := Choice{Service: "aff", Frontend: fe("aff", 0), Backend: at(aflow, localA, remoteC, remoteB), Reason: ReasonHash}
	add("fresh affinity", aflow, aff(remoteB, 5*time.Second),
		Choice{Service: "aff", Frontend: fe("aff", 0), Backend: remoteB, Reason: ReasonAffinity})
	add("affinity just fresh", aflow, aff(remoteC, 10*time.Second-1),
		Choice{Service: "aff", Frontend: fe("aff", 0), Backend: remoteC, Reason: ReasonAffinity})
	add("affinity expired", aflow, aff(remoteB, 10*time.Second), hashed)
	add("affinity from the future", aflow, aff(remoteB, -time.Second), hashed)
	add("affinity to a terminating backend while one serves", aflow, aff(termR, time.Second), hashed)
	add("affinity to a backend gone", aflow, aff(Backend{Addr: addr("10.1.0.99"), Port: 8080}, time.Second), hashed)
	add("affinity to a remote backend at a local frontend", toNode(flow("10.2.0.1:1", "10.0.0.1:30040")), aff(remoteB, time.Second),
		Choice{Service: "aff", Frontend: fe("aff", 1), Backend: localA, Reason: ReasonHash, LocalOnly: true})
	add("affinity to a local backend at a local frontend", toNode(flow("10.2.0.1:1", "10.0.0.1:30040")), aff(localA, time.Second),
		Choice{Service: "aff", Frontend: fe("aff", 1), Backend: localA, Reason: ReasonAffinity, LocalOnly: true})
	add("affinity ignored without Affinity", flow("10.2.0.1:40000", "10.96.0.10:80"), aff(remoteB, time.Second),
		Choice{Service: "web", Frontend: fe("web", 0), Backend: at(flow("10.2.0.1:40000", "10.96.0.10:80"), localA, remoteC, remoteB), Reason: ReasonHash})
	add("IPv6 node port", toNode(flow("[fd00::1]:1000", "[fd00::2]:30080")), nil,
		Choice{Service: "v6", Frontend: fe("v6", 0), Backend: svcs["v6"].Backends[0], Reason: ReasonHash})
	add("IPv4-mapped client", flow("[::ffff:10.2.0.1]:1", "10.96.0.10:80"), nil, Choice{})
	add("IPv4-mapped destination", flow("[fd00::1]:1", "[::ffff:10.96.0.10]:80"), nil, Choice{})
	add("families mixed", flow("[fd00::1]:1", "10.96.0.10:80"), nil, Choice{})
	add("zero flow", Flow{}, nil, Choice{})

	opts := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b })}
	for _, c := range cases {
		got := Choose(svcs, c.flow, c.aff, now)
		if diff := cmp.Diff(c.want, got, opts); diff != "" {
			t.Errorf("%s: Choose (-want +got):\n%s", c.name, diff)
		}
	}
	// The model's Maglev backends follow the weights: 10.1.1.1 weighs 3,
	// the other two serving backends 1.
	counts := map[netip.AddrPort]int{}
	for _, b := range mgTable {
		counts[b]++
	}
	if heavy, light := counts[ap("10.1.1.1:80")], counts[ap("10.1.1.3:80")]; heavy < 2*light || len(counts) != 3 {
		t.Errorf("Maglev shares %v do not follow weights 3:1:1 over the serving backends", counts)
	}
}
