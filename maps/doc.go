// Package maps is the map layer sluice's conntrack, nat, ipsets and routes
// packages share.
//
// CheckLayout verifies a Go mirror of a C struct against BTF, so no offset
// is typed by hand twice.
package maps
