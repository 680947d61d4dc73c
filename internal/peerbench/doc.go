// Package peerbench measures sluice's service dataplane against the
// dataplanes users would run instead: kube-proxy's iptables mode (with the
// iptables-legacy and iptables-nft back ends) and its nftables mode.
//
// It holds benchmarks and their setup test only; nothing imports it. Each
// side gets its own topology of network namespaces (a client, a node that
// forwards, five servers, joined by veth pairs), programmed with the same
// N ClusterIP services, and a client process times blocking TCP
// connects to the first and to the last service, every side in the same
// run, in interleaved rounds. docs/benchmarks.md ("Against kube-proxy")
// has the method, the figures and the command that reproduces them.
package peerbench
