package testpkt

import (
	"net/netip"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// CmpOptions are the go-cmp options that compare Packets: netip.Addr by
// value (it has unexported fields), and empty and nil byte slices as equal.
var CmpOptions = cmp.Options{
	cmpopts.EquateComparable(netip.Addr{}),
	cmpopts.EquateEmpty(),
}

// Diff returns cmp.Diff(want, got) under CmpOptions: empty when the packets
// are equal, otherwise a readable -want +got report.
func Diff(want, got *Packet) string {
	return cmp.Diff(want, got, CmpOptions)
}
