// Package testutil holds helpers shared by sluice's tests: the privilege
// gate, network namespaces joined by veth pairs, a private bpffs mount and
// cgroup v2 discovery.
//
// Every helper registers its own clean-up with t.Cleanup and removes only
// what it created, by the name it created it under.
package testutil
