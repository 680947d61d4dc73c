package testutil

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TempBPFFS mounts a private bpffs on a new temporary directory and returns
// its path. The mount is detached and the directory removed in tb.Cleanup.
func TempBPFFS(tb testing.TB) string {
	tb.Helper()
	RequirePrivileged(tb)
	dir, err := os.MkdirTemp("", "sluice-bpffs-")
	if err != nil {
		tb.Fatalf("bpffs dir: %v", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		tb.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount bpffs %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted, read from
// /proc/mounts: hosts with the hybrid layout keep it under
// /sys/fs/cgroup/unified rather than /sys/fs/cgroup.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	return "", fmt.Errorf("no cgroup2 mount in /proc/mounts")
}

// TempCgroup creates a child cgroup under the cgroup v2 mount and returns
// its path; tb.Cleanup removes it.
func TempCgroup(tb testing.TB) string {
	tb.Helper()
	RequirePrivileged(tb)
	root, err := Cgroup2Mount()
	if err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "sluice-test-")
	if err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			tb.Errorf("remove cgroup %s: %v", filepath.Base(dir), err)
		}
	})
	return dir
}
