package testutil

import (
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestVethTCP(t *testing.T) {
	RequirePrivileged(t)
	a, b := NewNetNS(t), NewNetNS(t)
	ConnectVeth(t, a, "sla0", netip.MustParsePrefix("10.99.0.1/24"), b, "slb0", netip.MustParsePrefix("10.99.0.2/24"))

	l := b.Listen(t, "tcp4", "10.99.0.2:7000")
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	var got []byte
	err := a.Do(func() error {
		c, err := net.Dial("tcp4", "10.99.0.2:7000")
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		got = make([]byte, 4)
		_, err = io.ReadFull(c, got)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ping" {
		t.Fatalf("echo = %q, want ping", got)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", a.Name)); err != nil {
		t.Fatalf("named netns missing: %v", err)
	}
}

func TestTempBPFFS(t *testing.T) {
	dir := TempBPFFS(t)
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("%s has fs type %#x, want bpffs", dir, fs.Type)
	}
}

func TestCgroup2Mount(t *testing.T) {
	RequirePrivileged(t)
	p := TempCgroup(t)
	if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err != nil {
		t.Fatalf("cgroup %s has no cgroup.procs: %v", p, err)
	}
}
