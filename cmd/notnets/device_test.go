package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/pool"
)

// TestPoolDevice: pool init -device makes a pool whose segments live in
// a device (a regular file stands in for /dev/daxX.Y here), says so, and
// again harmlessly; a listener there is a descriptor in the directory
// and bytes in the device; ls shows the device and the instances read
// from it; clean removes a dead process's listener and gives its chunk
// back to the device.
func TestPoolDevice(t *testing.T) {
	base := t.TempDir()
	dev, dir := filepath.Join(base, "dax0.0"), filepath.Join(base, "pool")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 4<<20); err != nil {
		t.Fatal(err)
	}
	run := func(fail bool, args ...string) string {
		t.Helper()
		b, err := exec.Command(os.Args[0], append([]string{"pool"}, args...)...).CombinedOutput()
		if (err != nil) != fail {
			t.Fatalf("pool %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	out := run(false, "init", "-device", dev, "-chunk-size", "65536", dir)
	if !strings.Contains(out, "segments in device "+dev+": 64 chunks of 65536 bytes") {
		t.Errorf("pool init -device:\n%s", out)
	}
	run(false, "-dir", dir, "init", "-device", dev, "-chunk-size", "65536")
	if out := run(true, "init", "-device", dev, "-chunk-size", "3000", filepath.Join(base, "other")); !strings.Contains(out, "power of two") {
		t.Errorf("pool init -chunk-size 3000:\n%s", out)
	}

	live, err := notnets.Listen("svc", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	inst := live.Addr().(*notnets.Addr).Instance
	if fi, err := os.Stat(filepath.Join(dir, pool.ListenerFile(inst))); err != nil || fi.Size() >= pool.ListenerSize {
		t.Fatalf("the listener file: %v, %v: want a small descriptor", fi, err)
	}
	const deadID = "00000000000000dd"
	seg, err := pool.CreateIn(dir, pool.ListenerFile("svc+"+deadID), pool.ListenerSize, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	pool.InitListener(seg.Mem, 0x3ffffff0, 0) // a pid no process has
	seg.Close()
	before, err := pool.ClaimedChunks(dir, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}

	out = run(false, "-dir", dir, "ls")
	t.Logf("pool ls:\n%s", out)
	if !strings.Contains(out, "device: segments in device "+dev) {
		t.Errorf("pool ls does not show the device:\n%s", out)
	}
	if r := lsRow(out, "svc", strings.TrimPrefix(inst, "svc+")); r == nil || r[5] != "open" {
		t.Errorf("the live instance's line: %q, want open", r)
	}
	if r := lsRow(out, "svc", deadID); r == nil || r[5] != "stale" {
		t.Errorf("the dead instance's line: %q, want stale", r)
	}
	if !strings.Contains(out, "claims of the device's chunks") || !strings.Contains(out, pool.ListenerFile(inst)+"  listener  12288") {
		t.Errorf("pool ls does not list the chunks, or a listener's size:\n%s", out)
	}
	out = run(false, "-dir", dir, "clean")
	if !strings.Contains(out, "removed svc+"+deadID+".listener") {
		t.Errorf("pool clean:\n%s", out)
	}
	after, err := pool.ClaimedChunks(dir, pool.OwnerOnly)
	if err != nil || len(after) != len(before)-1 {
		t.Fatalf("claimed chunks %v before the clean, %v after (%v): want one fewer", before, after, err)
	}
}
