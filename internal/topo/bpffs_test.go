package topo_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
)

// TestMountBPFFS: a pin made in the mounted bpffs is gone after a second
// MountBPFFS on the same directory (a run after a killed one starts
// clean), and UnmountBPFFS leaves neither mount nor directory, and does
// nothing for a directory that is not there.
func TestMountBPFFS(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := filepath.Join(t.TempDir(), "bpffs")
	t.Cleanup(func() { topo.UnmountBPFFS(dir) })
	if err := topo.MountBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pin := filepath.Join(dir, "m")
	if err := m.Pin(pin); err != nil {
		t.Fatal(err)
	}
	if err := topo.MountBPFFS(dir); err != nil {
		t.Fatalf("mount again: %v", err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin after a second mount: %v, want not there", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || uint32(st.Type) != unix.BPF_FS_MAGIC {
		t.Errorf("%s after a second mount: statfs %v, type %#x, want a bpffs", dir, err, uint32(st.Type))
	}
	if err := topo.UnmountBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after UnmountBPFFS: %v, want not there", dir, err)
	}
	if err := topo.UnmountBPFFS(dir); err != nil {
		t.Errorf("UnmountBPFFS of a missing directory: %v", err)
	}
}
