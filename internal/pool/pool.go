//go:build linux

// Package pool manages a notnets memory pool: a directory of segment files
// that processes map with mmap(2) and share.
//
// A pool lives on tmpfs (/dev/shm) by default, or on a DAX or CXL file system
// when hosts share memory, or keeps its segments in a devdax device, its
// files then descriptors of the device's chunks (device.go). Everything that passes between two peers lives in a
// segment of the pool; see docs/PROTOCOL.md for the byte layout of segments.
//
// No page of a segment is written before its file block is allocated
// (fallocate), so that a full pool is an error wrapping ErrExhausted and
// never a SIGBUS: CreateIn allocates a whole segment, CreateConn all of a
// connection segment but its heaps, and Segment.Reserve a heap block
// before its sender first writes it (reserve.go). Every removal of a file
// checks the pool directory as Listen and Dial do and unlinks relative to
// a descriptor of it (CleanIn, Segment.Unlink).
package pool

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnvPool names the environment variable that selects the pool directory.
const EnvPool = "NOTNETS_POOL"

// DefaultDir returns the pool directory to use when none is given in code:
// $NOTNETS_POOL when set, else /dev/shm/notnets-<uid> (or the system
// temporary directory when /dev/shm does not exist).
func DefaultDir() string {
	if d := os.Getenv(EnvPool); d != "" {
		return d
	}
	base := "/dev/shm"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = os.TempDir()
	}
	return filepath.Join(base, fmt.Sprintf("notnets-%d", os.Getuid()))
}

// ValidName reports whether name may be used as a listener name: 1 to 200
// characters from [A-Za-z0-9._-], not starting with a dot. Names never carry
// a path separator, so a name cannot point outside the pool.
func ValidName(name string) error {
	if len(name) == 0 || len(name) > 200 {
		return fmt.Errorf("notnets: listener name %q: length must be 1 to 200", name)
	}
	if name[0] == '.' {
		return fmt.Errorf("notnets: listener name %q must not start with a dot", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("notnets: listener name %q has character %q; allowed are letters, digits, '.', '_' and '-'", name, c)
		}
	}
	return nil
}

// ListenerFile returns the file name of the listener segment for name.
func ListenerFile(name string) string { return name + ListenerSuffix }

// ListenerSuffix ends the file name of every listener segment.
const ListenerSuffix = ".listener"

// ConnPrefix starts the file name of every connection segment.
const ConnPrefix = "conn-"

// NewConnName returns a fresh connection segment file name carrying 128
// random bits, so that no other process can guess it.
func NewConnName() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("notnets: random segment name: %w", err)
	}
	return ConnPrefix + hex.EncodeToString(b[:]), nil
}

// ValidConnName reports whether s has the form NewConnName produces. The
// server checks names it reads from shared memory with it before opening.
func ValidConnName(s string) bool {
	h, ok := strings.CutPrefix(s, ConnPrefix)
	if !ok || len(h) != 32 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}
