package testutil

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// RequirePrivilegedEnv names the environment variable that turns a missing
// privilege from a skip into a failure. CI sets it so no test can hide.
const RequirePrivilegedEnv = "SLUICE_REQUIRE_PRIVILEGED"

// RequirePrivileged skips tb unless the process may load BPF programs and
// manage network namespaces (root, or CAP_BPF with CAP_NET_ADMIN and
// CAP_SYS_ADMIN). With SLUICE_REQUIRE_PRIVILEGED=1 it fails instead.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	if privileged() {
		return
	}
	if os.Getenv(RequirePrivilegedEnv) == "1" {
		tb.Fatalf("test needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN, and %s=1 forbids skipping", RequirePrivilegedEnv)
	}
	tb.Skip("needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN")
}

// privileged reports whether the effective capability set holds what the
// privileged tests use.
func privileged() bool {
	if os.Geteuid() == 0 {
		return true
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return has(unix.CAP_BPF) && has(unix.CAP_NET_ADMIN) && has(unix.CAP_SYS_ADMIN)
}
