package maps

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestOpenPinned opens a pinned map read-only: its entries read as the
// owner wrote them, writes are refused, and nothing is created, migrated
// or resized. Every missing piece is a sentinel error.
func TestOpenPinned(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	owner, _ := openFlows(t, flowParams(dir, 2, 64))
	want := fillFlows(t, owner, 10)

	// Another capacity is the owner's business (a resize keeps the
	// version): the reader opens the map as it is.
	raw, err := OpenPinned(flowParams(dir, 2, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	m, err := New[flowKey, flowValue](raw)
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
		t.Errorf("read-only map (-want +got):\n%s", diff)
	}
	k, v := flowEntry(99)
	if err := m.Update(k, v, ebpf.UpdateAny); err == nil {
		t.Error("update through the read-only handle succeeded")
	}

	wrongKey := flowParams(dir, 2, 64)
	wrongKey.KeySize++
	otherName := flowParams(dir, 2, 64)
	otherName.Name = "sl_other"
	tests := []struct {
		name string
		p    Params
		is   error
		msg  string
	}{
		{"older version", flowParams(dir, 1, 64), ErrOtherVersion,
			"open pinned map " + dir + "/sl_flows_v1: map pinned at another layout version: pinned at version [2], this reader knows version 1"},
		{"newer version", flowParams(dir, 3, 64), ErrOtherVersion,
			"open pinned map " + dir + "/sl_flows_v3: map pinned at another layout version: pinned at version [2], this reader knows version 3"},
		{"no such map", otherName, ErrNotPinned, "open pinned map " + dir + "/sl_other_v2: map not pinned"},
		{"no pin directory", flowParams(dir+"-missing", 2, 64), ErrNotPinned,
			"open pinned map " + dir + "-missing/sl_flows_v2: map not pinned: no pin directory " + dir + "-missing"},
		{"other key size", wrongKey, nil,
			"open pinned map " + dir + "/sl_flows_v2: pinned map is a Hash with key/value size 8/16, want a Hash with 9/16 at version 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := OpenPinned(tt.p)
			if err == nil {
				m.Close()
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			if diff := cmp.Diff(tt.msg, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff([]string{"sl_flows_v2"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins after reading (-want +got):\n%s", diff)
	}
}
