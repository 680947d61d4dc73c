package topo

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MountBPFFS mounts a private bpffs on dir, creating dir if needed, for a
// program whose pins must go with it: unmounting the bpffs
// (UnmountBPFFS) drops every pin in it. An agent pins under the host's
// /sys/fs/bpf instead, so that its successor finds them. A bpffs already
// mounted on dir (left by a run that was killed) is unmounted first.
func MountBPFFS(dir string) error {
	if err := UnmountBPFFS(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// UnmountBPFFS unmounts the bpffs on dir, if one is mounted there, and
// removes dir, if it exists.
func UnmountBPFFS(dir string) error {
	var st unix.Statfs_t
	switch err := unix.Statfs(dir, &st); {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	if uint32(st.Type) == unix.BPF_FS_MAGIC {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount bpffs %s: %w", dir, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	return nil
}
