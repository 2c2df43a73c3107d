package transport

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/notnets/notnets/internal/pool"
)

// TestReaperRemovesADeadHostsListener: in a cross-host pool, a listener
// of another host whose heartbeat stands still loses its file to the
// reaper of a process listening there, with no one running notnets pool
// clean; the live listener keeps its own.
func TestReaperRemovesADeadHostsListener(t *testing.T) {
	every, after := reapEvery, reapAfter
	reapEvery, reapAfter = 100*time.Millisecond, pool.MinRemoteStaleAfter
	defer func() { reapEvery, reapAfter = every, after }()

	dir := filepath.Join(t.TempDir(), "pool")
	if err := pool.PrepareCrossHost(dir, pool.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	dead := pool.ListenerFile("svc+00000000000000ee")
	seg, err := pool.CreateIn(dir, dead, pool.ListenerSize, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	pool.InitListener(seg.Mem, 1, 0)
	pool.WriteHost(seg.Mem, pool.Host{ID: [16]byte{0xee}, PIDNS: 7, Name: "elsewhere"})
	lay, err := pool.MapListener(seg.Mem)
	if err != nil {
		t.Fatal(err)
	}
	lay.Server.Heartbeat.Store(41)
	lay.Server.State.Store(pool.StateOpen)
	seg.Close()

	l, err := Listen(dir, "svc", pool.OwnerOnly, ListenConfig{Wait: Wait{Spin: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// The reaper needs two readings at least reapAfter apart: the file
	// goes between 2 s and 2 s plus a period or two.
	deadline := time.Now().Add(10 * reapAfter)
	for {
		_, err := os.Stat(filepath.Join(dir, dead))
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead host's listener is still there after %v (%v)", 10*reapAfter, err)
		}
		time.Sleep(reapEvery)
	}
	if _, err := os.Stat(filepath.Join(dir, pool.ListenerFile(l.Instance()))); err != nil {
		t.Errorf("the live listener lost its file: %v", err)
	}
}
