package pool

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// deadPID is a pid no process has: above the kernel's pid_max.
const deadPID = 0x3ffffff0

func TestScanAndClean(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, kind uint16, pid int) {
		seg, err := Create(dir, name, 3*PageSize)
		if err != nil {
			t.Fatal(err)
		}
		writeHeader(seg.Mem, kind, 0, 0, pid)
		seg.Close()
	}
	mk("live.listener", KindListener, os.Getpid())
	mk("dead.listener", KindListener, deadPID)
	mk(ConnPrefix+"00000000000000000000000000000001", KindConn, os.Getpid())
	mk(ConnPrefix+"00000000000000000000000000000002", KindConn, deadPID)
	old := ConnPrefix + "00000000000000000000000000000003"
	mk(old, KindConn, os.Getpid())
	past := time.Now().Add(-2 * staleConnection)
	os.Chtimes(filepath.Join(dir, old), past, past)
	if err := os.WriteFile(filepath.Join(dir, "garbage.listener"), []byte("not a segment"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	entries, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{ // name: stale
		"live.listener": false, "dead.listener": true,
		ConnPrefix + "00000000000000000000000000000001": false,
		ConnPrefix + "00000000000000000000000000000002": true,
		old:                true,
		"garbage.listener": false, // unreadable but new: maybe being created
		"notes.txt":        false,
	}
	if len(entries) != len(want) {
		t.Fatalf("Scan found %d entries, want %d: %+v", len(entries), len(want), entries)
	}
	for _, e := range entries {
		if e.Stale != want[e.Name] {
			t.Errorf("%s: stale %v (%s), want %v", e.Name, e.Stale, e.Why, want[e.Name])
		}
	}
	removed, err := Clean(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 3 {
		t.Errorf("Clean removed %d files, want 3: %+v", len(removed), removed)
	}
	for name, stale := range want {
		_, err := os.Stat(filepath.Join(dir, name))
		if gone := os.IsNotExist(err); gone != stale {
			t.Errorf("%s: removed %v, want %v", name, gone, stale)
		}
	}
}

func TestProcessAlive(t *testing.T) {
	if !ProcessAlive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if ProcessAlive(deadPID) || ProcessAlive(0) || ProcessAlive(-1) {
		t.Error("a pid no process has is alive")
	}
	s1, ok1 := ProcessStart(os.Getpid())
	s2, ok2 := ProcessStart(os.Getpid())
	if !ok1 || !ok2 || s1 != s2 {
		t.Errorf("start time of this process: %d %v, %d %v", s1, ok1, s2, ok2)
	}
}
