// Package peerbench measures sluice's service dataplane, its service
// control plane and its policy against what users would run instead:
// kube-proxy's iptables mode (with the iptables-legacy and iptables-nft
// back ends) and its nftables mode, and for policy iptables and ipset.
//
// It holds benchmarks and their setup test only; nothing imports it. Each
// side gets its own topology of network namespaces (a client, a node that
// forwards, five servers, joined by veth pairs), programmed with the same
// N ClusterIP services, and a client process times blocking TCP
// connects to the first and to the last service, every side in the same
// run, in interleaved rounds. BenchmarkServiceConnectPaired measures
// 10,000 services against 1 in one topology, each sluice side's table
// switched by Sync between the batches of a pair, and against nftables,
// and summarises the pairs' ratios. BenchmarkControlPlane times loading
// 10,000 services into an empty node and changing one;
// BenchmarkPolicy floods UDP and times connects through N rules that do
// not match and an allow. docs/benchmarks.md ("Against kube-proxy")
// has the method, the figures and the command that reproduces them.
package peerbench
