//go:build linux

package pool

import (
	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/coherence"
)

// readBack drops this host's cached copy of bytes [off, off+n) of the
// file fd, so that a pread of them that follows reads memory: in a pool
// whose memory is kept coherent by flushes (PROTOCOL.md 18.3), a reader
// of a heartbeat or header that only preads would read the kernel's
// view through this host's cache, which may hold a line another host has
// changed since, and a heartbeat read so could stand still for good: a
// cleaner would remove a live listener of another host. The range is
// mapped for reading just for the invalidate, from a multiple of align
// (PageSize for a file, the chunk size for a device, which a devdax
// device requires); a regular file shorter than the range, or one
// truncated meanwhile, leaves the read as it would be.
func readBack(fd int, off int64, n int, align int64) {
	var st unix.Stat_t
	if n <= 0 || off < 0 || unix.Fstat(fd, &st) != nil {
		return
	}
	end := off + int64(n)
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		if off >= st.Size {
			return
		}
		end = min(end, st.Size)
	}
	start := off / align * align
	mem, err := unix.Mmap(fd, start, int(end-start), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return
	}
	defer unix.Munmap(mem)
	Guard("read back", func() error {
		coherence.Software{}.Invalidate(mem[off-start : end-start])
		return nil
	})
}
