//go:build linux

package pool

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Host identity (PROTOCOL.md 4, rule F14). The creator of a listener or
// connection segment writes who it is into reserved bytes of the header:
// a host id (the kernel's boot id, which changes at every boot and
// differs between machines, or 16 random bytes when it cannot be read),
// its pid namespace, and its host name. Readers use it for two things:
//
//   - to tell hosts apart when they show a pool (notnets pool ls);
//   - to know whether the header's pid means anything to them: only a
//     process with the same host id and the same pid namespace (the same
//     *pid domain*) may look that pid up in its /proc or signal it. For
//     everyone else the pid is a number of another kernel or namespace,
//     and liveness is judged by heartbeats alone.
//
// The pid namespace is part of the identity because the boot id is the
// kernel's and so the same in every container of a machine, where pids
// are not.

// Header offsets of the host identity, after the largest user agent of a
// connection header (46 + MaxUserAgent), on a 64-byte line of its own.
const (
	offHostID      = 1088 // 16 bytes
	offHostPIDNS   = 1104 // uint64
	offHostNameLen = 1112 // uint16
	offHostName    = 1114 // MaxHostName bytes at most
)

// MaxHostName is the longest host name a header carries (HOST_NAME_MAX).
const MaxHostName = 64

// hostEnd is the offset just past the host identity in a header.
const hostEnd = offHostName + MaxHostName

// Host is the identity of the host (and pid namespace) of a process, as
// it writes it into the segments it creates.
type Host struct {
	ID    [16]byte // the boot id of its kernel, or random bytes; all zero when unknown
	PIDNS uint64   // the inode of its pid namespace, 0 when unknown
	Name  string   // its host name (UTS), at most MaxHostName bytes; informational
}

// localHost is this process's Host, read once.
var localHost = sync.OnceValue(readLocalHost)

// LocalHost returns this process's host identity: its kernel's boot id
// (/proc/sys/kernel/random/boot_id; 16 random bytes drawn once per
// process if that cannot be read), the inode of its pid namespace
// (/proc/self/ns/pid) and its host name. It is read at first use.
func LocalHost() Host { return localHost() }

func readLocalHost() Host {
	var h Host
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		id, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
		if err == nil && len(id) == len(h.ID) {
			copy(h.ID[:], id)
		}
	}
	if h.ID == ([16]byte{}) {
		// No boot id: an id of this process alone, so that nobody
		// takes this process's pids for theirs, nor theirs for its.
		rand.Read(h.ID[:])
	} else {
		var st unix.Stat_t
		if unix.Stat("/proc/self/ns/pid", &st) == nil {
			h.PIDNS = st.Ino
		}
	}
	if name, err := os.Hostname(); err == nil {
		h.Name = truncateName(name)
	}
	return h
}

// truncateName cuts a host name to MaxHostName bytes.
func truncateName(s string) string {
	if len(s) > MaxHostName {
		s = s[:MaxHostName]
	}
	return s
}

// IsZero reports whether h says nothing: a header of a writer that wrote
// no host identity.
func (h Host) IsZero() bool { return h.ID == [16]byte{} }

// SamePIDs reports whether a pid written by a process of host o names
// the same process for a process of host h: both know their pid
// namespace, and both it and the host id are equal (PROTOCOL.md F14). A
// zero identity is nobody's.
func (h Host) SamePIDs(o Host) bool {
	return !h.IsZero() && h.ID == o.ID && h.PIDNS != 0 && h.PIDNS == o.PIDNS
}

// Local reports whether pids written by a process of host h name
// processes of this one (LocalHost().SamePIDs(h)).
func (h Host) Local() bool { return LocalHost().SamePIDs(h) }

// Short returns the first 8 hex digits of the host id, enough to tell
// the hosts of one pool apart on a screen.
func (h Host) Short() string { return hex.EncodeToString(h.ID[:4]) }

// String returns the host as notnets pool ls shows it: its name and
// the start of its id, name@1a2b3c4d ("?" for an unknown name).
func (h Host) String() string {
	if h.IsZero() {
		return "-"
	}
	name := h.Name
	if name == "" {
		name = "?"
	}
	return name + "@" + h.Short()
}

// writeHost writes h into the header page mem (which its creator has
// allocated).
func writeHost(mem []byte, h Host) {
	copy(mem[offHostID:offHostID+16], h.ID[:])
	binary.LittleEndian.PutUint64(mem[offHostPIDNS:], h.PIDNS)
	name := truncateName(h.Name)
	binary.LittleEndian.PutUint16(mem[offHostNameLen:], uint16(len(name)))
	copy(mem[offHostName:offHostName+MaxHostName], name)
}

// WriteHost overwrites the host identity in the header of the segment
// mem with h: for tests that stand in for a process of another host.
func WriteHost(mem []byte, h Host) { writeHost(mem, h) }

// readHost reads the host identity from a copy of a header (at least
// hostEnd bytes). A name length over MaxHostName gives no name (rule
// F14): the name is informational, and the segment is not refused for it.
// A name is cut at its first NUL, and is otherwise bytes as written:
// whoever shows it quotes it.
func readHost(h []byte) Host {
	var host Host
	copy(host.ID[:], h[offHostID:offHostID+16])
	host.PIDNS = binary.LittleEndian.Uint64(h[offHostPIDNS:])
	if n := int(binary.LittleEndian.Uint16(h[offHostNameLen:])); n <= MaxHostName {
		name := h[offHostName : offHostName+n]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		host.Name = string(name)
	}
	return host
}
