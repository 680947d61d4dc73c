package datapath

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// TestRecordIndex is the table of which record a generation writes: its
// own, an empty one, or the oldest older one that is not the settled
// generation's; never a newer generation's or the settled one's.
func TestRecordIndex(t *testing.T) {
	type want struct {
		Index int
		OK    bool
	}
	for _, tt := range []struct {
		name         string
		records      [2]uint32
		gen, settled uint32
		want         want
	}{
		{"first configuration", [2]uint32{0, 0}, 1, 0, want{0, true}},
		{"its own record", [2]uint32{4, 3}, 3, 2, want{1, true}},
		{"an empty one", [2]uint32{2, 0}, 3, 2, want{1, true}},
		{"the unsettled predecessor's", [2]uint32{1, 2}, 3, 1, want{1, true}},
		{"the settled one is kept", [2]uint32{2, 1}, 3, 2, want{1, true}},
		{"never settled: the older", [2]uint32{2, 1}, 3, 0, want{1, true}},
		{"a newer generation's is kept", [2]uint32{1, 5}, 3, 0, want{0, true}},
		{"settled and newer: none", [2]uint32{2, 3}, 1, 2, want{-1, false}},
		{"two newer: none", [2]uint32{4, 5}, 3, 2, want{-1, false}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var entry bpf.Iface
			for i, g := range tt.records {
				entry.Records[i].Generation = g
			}
			i, ok := recordIndex(entry, tt.gen, tt.settled)
			if diff := cmp.Diff(tt.want, want{i, ok}); diff != "" {
				t.Errorf("recordIndex(%v, gen %d, settled %d) (-want +got):\n%s", tt.records, tt.gen, tt.settled, diff)
			}
		})
	}
}
