package peerbench

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluicenet/sluice/nat"
)

// The addresses of the benchmark, from 198.18.0.0/15 (RFC 2544's
// benchmarking range), as the reference run used them: the client, the
// servers 198.18.K.2, fake pod addresses for every service's endpoints
// but the first's and the last's, and ClusterIPs from 198.19.0.0/16.
var (
	clientAddr  = netip.MustParseAddr("198.18.0.2")
	clusterCIDR = "198.18.0.0/16"
	fakePods    = netip.MustParseAddr("198.18.128.0")
)

const (
	servicePort     = 80
	backendPort     = 8080
	lastBackendPort = 8081
	// floodPort is where the servers drain UDP floods.
	floodPort = 9000
	// servers is the number of server namespaces, the endpoints of the
	// services under test.
	servers = 5
)

// serverAddr is server k's address, k from 1.
func serverAddr(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(k), 2}) }

// clusterIP is service i's ClusterIP: 198.19.(i/250).(i%250+1).
func clusterIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(i%250 + 1)})
}

// svc is one generated service: its ClusterIP and its endpoints.
type svc struct {
	name      string
	ip        netip.Addr
	endpoints []netip.AddrPort
}

// services returns n services. The first and the last have the servers as
// endpoints (the first at backendPort, the last at lastBackendPort); every
// other has fake pod addresses in 198.18.128.0/17 that are never
// contacted.
//
// The first and the last service's endpoints differ in port so that a
// client port reused from a connection to the other service never meets
// the same backend tuple: sluice's TC NAT then translates the SYN-ACK
// back to the other service's frontend (see docs/benchmarks.md), which
// this benchmark is not about.
func services(n int) []svc {
	out := make([]svc, n)
	for i := range out {
		s := svc{name: fmt.Sprintf("ns%d/svc%d", i/100, i), ip: clusterIP(i)}
		for k := 1; k <= servers; k++ {
			ep, port := serverAddr(k), uint16(backendPort)
			if i == n-1 && n > 1 {
				port = lastBackendPort
			}
			if i != 0 && i != n-1 {
				off := uint32((i*servers+k-1)%32766 + 1)
				b := fakePods.As4()
				ep = netip.AddrFrom4([4]byte{b[0], b[1], b[2] + byte(off>>8), byte(off)})
			}
			s.endpoints = append(s.endpoints, netip.AddrPortFrom(ep, port))
		}
		out[i] = s
	}
	return out
}

// sluiceServices is svcs as sluice services, for nat.Table.Sync.
func sluiceServices(svcs []svc) map[string]nat.Service {
	m := make(map[string]nat.Service, len(svcs))
	for i, s := range svcs {
		ns := nat.Service{Frontends: []nat.Frontend{{Addr: s.ip, Port: servicePort, Protocol: nat.ProtoTCP}}}
		local := i == 0 || i == len(svcs)-1
		for _, ep := range s.endpoints {
			ns.Backends = append(ns.Backends, nat.Backend{Addr: ep.Addr(), Port: ep.Port(), Local: local})
		}
		m[s.name] = ns
	}
	return m
}

// hash is kube-proxy's chain-name hash: the first 16 characters of the
// base32 of a SHA-256.
func hash(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "")))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// iptablesRules is iptables-restore input in the shape kube-proxy's
// iptables mode writes for svcs (KUBE-SERVICES, a KUBE-SVC-* chain per
// service choosing a KUBE-SEP-* chain per endpoint by statistic random,
// DNAT there; the masquerade chains, the nodeports rule last, the filter
// table's jumps).
func iptablesRules(svcs []svc) string {
	var chains, rules strings.Builder
	w := func(b *strings.Builder, format string, args ...any) { fmt.Fprintf(b, format+"\n", args...) }
	for _, c := range []string{"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"} {
		w(&chains, ":%s - [0:0]", c)
	}
	w(&rules, `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(&rules, `-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(&rules, `-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(&rules, `-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000`)
	w(&rules, `-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	w(&rules, `-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000`)
	w(&rules, `-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, s := range svcs {
		iptablesService(&chains, &rules, s, false)
	}
	w(&rules, `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	return "*filter\n" +
		":KUBE-FORWARD - [0:0]\n:KUBE-SERVICES - [0:0]\n" +
		`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD` + "\n" +
		`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES` + "\n" +
		`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP` + "\n" +
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT` + "\n" +
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` + "\n" +
		"COMMIT\n*nat\n" + chains.String() + rules.String() + "COMMIT\n"
}

// iptablesService writes s's chain declarations into chains and its
// rules into rules, in iptablesRules' shape. insert puts its
// KUBE-SERVICES rule first instead of appending it, as a delta on a
// loaded table must (the nodeports rule stays last).
func iptablesService(chains, rules *strings.Builder, s svc, insert bool) {
	w := func(b *strings.Builder, format string, args ...any) { fmt.Fprintf(b, format+"\n", args...) }
	op := "-A KUBE-SERVICES"
	if insert {
		op = "-I KUBE-SERVICES 1"
	}
	port := s.name + ":http"
	svcChain := "KUBE-SVC-" + hash(port, "tcp")
	w(chains, ":%s - [0:0]", svcChain)
	w(rules, `%s -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s/32 --dport %d -j %s`, op, port, s.ip, servicePort, svcChain)
	w(rules, `-A %s -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s/32 --dport %d ! -s %s -j KUBE-MARK-MASQ`, svcChain, port, s.ip, servicePort, clusterCIDR)
	for j, ep := range s.endpoints {
		sep := "KUBE-SEP-" + hash(port, "tcp", ep.String())
		w(chains, ":%s - [0:0]", sep)
		if left := len(s.endpoints) - j; left > 1 {
			w(rules, `-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.10f -j %s`, svcChain, port, ep, 1/float64(left), sep)
		} else {
			w(rules, `-A %s -m comment --comment "%s -> %s" -j %s`, svcChain, port, ep, sep)
		}
		w(rules, `-A %s -m comment --comment %s -s %s/32 -j KUBE-MARK-MASQ`, sep, port, ep.Addr())
		w(rules, `-A %s -m comment --comment %s -m tcp -p tcp -j DNAT --to-destination %s`, sep, port, ep)
	}
}

// iptablesDelta is the iptables-restore --noflush input that adds s to a
// table loaded from iptablesRules: its chains and rules and one inserted
// KUBE-SERVICES rule, the smallest change kube-proxy could write.
func iptablesDelta(s svc) string {
	var chains, rules strings.Builder
	iptablesService(&chains, &rules, s, true)
	return "*nat\n" + chains.String() + rules.String() + "COMMIT\n"
}

// nftRules is nft -f input in the statement form kube-proxy's nftables
// mode sends for svcs, in one transaction: the service-ips verdict map on
// daddr . l4proto . dport, a chain per service choosing an endpoint chain
// by numgen random, dnat there.
func nftRules(svcs []svc) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w(`add table ip kube-proxy { comment "rules for kube-proxy" ; }`)
	w(`add chain ip kube-proxy mark-for-masquerade`)
	w(`add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000`)
	w(`add chain ip kube-proxy masquerading`)
	w(`add rule ip kube-proxy masquerading mark and 0x4000 == 0 return`)
	w(`add rule ip kube-proxy masquerading mark set mark xor 0x4000`)
	w(`add rule ip kube-proxy masquerading masquerade fully-random`)
	w(`add chain ip kube-proxy services`)
	w(`add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }`)
	w(`add rule ip kube-proxy filter-forward ct state invalid drop`)
	w(`add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }`)
	w(`add rule ip kube-proxy nat-prerouting jump services`)
	w(`add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }`)
	w(`add rule ip kube-proxy nat-output jump services`)
	w(`add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }`)
	w(`add rule ip kube-proxy nat-postrouting jump masquerading`)
	w(`add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`)
	w(`add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips`)
	for _, s := range svcs {
		nftService(&b, s)
	}
	return b.String()
}

// nftService writes s's statements in nftRules' form into b. On a loaded
// table they are also the delta kube-proxy's nftables mode sends for a new
// service.
func nftService(b *strings.Builder, s svc) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format+"\n", args...) }
	id := strings.ReplaceAll(s.name, "/", "_") + "_tcp_http"
	chain := "service-" + hash(s.name, "tcp", "http")[:8] + "-" + id
	w(`add chain ip kube-proxy %s`, chain)
	w(`add rule ip kube-proxy %s ip daddr %s tcp dport %d ip saddr != %s jump mark-for-masquerade`, chain, s.ip, servicePort, clusterCIDR)
	var vmap []string
	for j, ep := range s.endpoints {
		epChain := "endpoint-" + hash(s.name, "tcp", ep.String())[:8] + "-" + id + "__" + strings.ReplaceAll(ep.String(), ":", "_")
		w(`add chain ip kube-proxy %s`, epChain)
		w(`add rule ip kube-proxy %s ip saddr %s jump mark-for-masquerade`, epChain, ep.Addr())
		w(`add rule ip kube-proxy %s meta l4proto tcp dnat to %s`, epChain, ep)
		vmap = append(vmap, fmt.Sprintf("%d : goto %s", j, epChain))
	}
	w(`add rule ip kube-proxy %s numgen random mod %d vmap { %s }`, chain, len(s.endpoints), strings.Join(vmap, " , "))
	w(`add element ip kube-proxy service-ips { %s . tcp . %d : goto %s }`, s.ip, servicePort, chain)
}
