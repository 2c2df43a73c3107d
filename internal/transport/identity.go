package transport

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/pool"
)

// Identity is the process at the other end of a connection, as far as the
// kernel vouches for it; the root package's AuthInfo documents each field.
type Identity struct {
	UID, GID    uint32
	PID         int
	PIDVerified bool // the kernel reported PID, or /proc showed it maps the peer's segment
	Mismatch    bool // the pid that maps the segment runs as another user than its owner
	Groups      []uint32
}

// peerIdentity is the Identity of the peer that created seg and wrote
// pid into its header: identityOf where that pid is of this process's pid
// domain, else (remote: another host or pid namespace, or a cross-host
// pool, F14) the file's owner and the pid as claimed, unverified: this
// process's /proc knows nothing of it.
func peerIdentity(seg *pool.Segment, pid int, remote bool) Identity {
	if remote {
		return Identity{UID: seg.Owner.UID, GID: seg.Owner.GID, PID: pid}
	}
	return identityOf(seg, pid)
}

// identityOf builds the Identity of the peer that created seg and claims
// to be pid.
func identityOf(seg *pool.Segment, pid int) Identity {
	a := Identity{
		UID: seg.Owner.UID,
		GID: seg.Owner.GID,
		PID: pid,
	}
	if pid > 0 && mapsInode(pid, seg.Owner.Dev, seg.Owner.Ino) {
		fsuid, groups := procIDs(pid)
		switch {
		case fsuid == seg.Owner.UID:
			a.PIDVerified, a.Groups = true, groups
		case fsuid == ^uint32(0) || seg.Owner.UID == 0:
			// Unknown (the process is gone), or a file root made for a
			// process that has dropped its privileges since: unverified.
		default:
			a.Mismatch = true
		}
	}
	return a
}

// mapsInode reports whether /proc/pid/maps shows a mapping of the file
// with device dev and inode ino.
func mapsInode(pid int, dev, ino uint64) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	want := fmt.Sprintf(" %02x:%02x %d ", unix.Major(dev), unix.Minor(dev), ino)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte(want)) {
			return true
		}
	}
	return false
}

// procIDs returns the file-system uid of pid (the uid its new files get;
// ^uint32(0) if unknown), and its effective gid and supplementary groups.
func procIDs(pid int) (fsuid uint32, gids []uint32) {
	fsuid = ^uint32(0)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fsuid, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "Uid" && key != "Gid" && key != "Groups") {
			continue
		}
		fields := strings.Fields(val)
		if key == "Uid" {
			if len(fields) == 4 {
				if u, err := strconv.ParseUint(fields[3], 10, 32); err == nil {
					fsuid = uint32(u)
				}
			}
			continue
		}
		if key == "Gid" && len(fields) > 1 {
			fields = fields[1:2] // real, effective, saved, fs: keep the effective
		}
		for _, f := range fields {
			if g, err := strconv.ParseUint(f, 10, 32); err == nil && !slices.Contains(gids, uint32(g)) {
				gids = append(gids, uint32(g))
			}
		}
	}
	return fsuid, gids
}
