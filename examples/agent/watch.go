package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// watchFile reports on the returned channel each time the file at path may
// have a new content. It watches the file's directory, not the file: an
// editor or a config manager that writes a new file and renames it over the
// old one (the atomic way) replaces the inode a watch on the file would
// follow. IN_CLOSE_WRITE covers a file written in place, once the writer
// is done (not at each write, which would read it half-written), and
// IN_MOVED_TO a rename over it. The channel holds at most one pending
// event: the reader rereads the file, so coalesced events lose nothing.
func watchFile(path string) (<-chan struct{}, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	dir, base := filepath.Dir(path), filepath.Base(path)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	events := make(chan struct{}, 1)
	go func() {
		// The watch lives as long as the process.
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := unix.Read(fd, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				log.Printf("watch %s: %v; the state file is no longer watched (SIGHUP rereads it)", dir, err)
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				mask := binary.NativeEndian.Uint32(buf[off+4 : off+8])
				nameLen := int(binary.NativeEndian.Uint32(buf[off+12 : off+16]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen]
				off += unix.SizeofInotifyEvent + nameLen
				// An overflowed queue lost events, maybe the file's.
				if mask&unix.IN_Q_OVERFLOW == 0 && string(bytes.TrimRight(name, "\x00")) != base {
					continue
				}
				select {
				case events <- struct{}{}:
				default:
				}
			}
		}
	}()
	return events, nil
}
