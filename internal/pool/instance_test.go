package pool

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadListener reads an instance's state and load as its server left
// them, from a file nobody may write (so nothing maps it writable), and
// refuses a truncated one.
func TestReadListener(t *testing.T) {
	dir := t.TempDir()
	base := "svc+0123456789abcdef"
	seg, err := Create(dir, ListenerFile(base), ListenerSize)
	if err != nil {
		t.Fatal(err)
	}
	InitListener(seg.Mem, 4242, 0)
	lay, err := MapListener(seg.Mem)
	if err != nil {
		t.Fatal(err)
	}
	lay.Server.State.Store(StateOpen)
	lay.Server.Heartbeat.Store(77)
	lay.Load.InFlight.Store(3)
	lay.Load.Queued.Store(1)
	lay.Load.Workers.Store(2)
	lay.Load.Draining.Store(1)
	seg.Close()
	path := filepath.Join(dir, ListenerFile(base))
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	info, err := ReadListener(dir, base, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	want := ListenerInfo{Owner: info.Owner, PID: 4242, Host: LocalHost(), State: StateOpen, Heartbeat: 77, InFlight: 3, Queued: 1, Workers: 2, Draining: 1}
	if info != want || info.Owner.UID != uint32(os.Geteuid()) {
		t.Errorf("ReadListener = %+v, want %+v owned by uid %d", info, want, os.Geteuid())
	}
	if err := os.Truncate(path, PageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadListener(dir, base, OwnerOnly); err == nil {
		t.Error("ReadListener of a truncated listener succeeded")
	}
	if _, err := ReadListener(dir, "none+0123456789abcdef", OwnerOnly); !errors.Is(err, unix.ENOENT) {
		t.Errorf("ReadListener of a missing listener = %v, want ENOENT", err)
	}
}

// TestReadGeneration reads the registry's generation without creating
// the registry.
func TestReadGeneration(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadGeneration(dir, OwnerOnly); !errors.Is(err, unix.ENOENT) {
		t.Errorf("ReadGeneration of a pool without a registry = %v, want ENOENT", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, RegistryFile)); !os.IsNotExist(err) {
		t.Errorf("ReadGeneration made a registry: %v", err)
	}
	reg, err := OpenRegistry(dir, OwnerOnly, CoherenceHardware)
	if err != nil {
		t.Fatal(err)
	}
	reg.Generation.Add(5)
	reg.Close()
	if g, err := ReadGeneration(dir, OwnerOnly); g != 5 || err != nil {
		t.Errorf("ReadGeneration = %d, %v; want 5", g, err)
	}
}
