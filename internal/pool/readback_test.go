//go:build linux

package pool

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadBackLeavesTheFile: dropping the cached lines of a range of a
// file (readBack) changes none of its bytes, for ranges inside the file,
// across its end and wholly past it; whether the lines left the cache
// only a machine without coherence can show.
func TestReadBackLeavesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seg")
	want := bytes.Repeat([]byte("notnets!"), 3*PageSize/8)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, r := range []struct {
		off int64
		n   int
	}{{0, 64}, {PageSize + 8, 8}, {2*PageSize + 100, 2 * PageSize}, {5 * PageSize, 64}, {-1, 8}, {0, 0}} {
		readBack(fd, r.off, r.n, PageSize)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the file changed: %v", err)
	}
}
