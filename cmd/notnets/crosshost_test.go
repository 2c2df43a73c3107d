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

// TestPoolCrossHost: pool init -cross-host makes a cross-host pool (DIR
// as an operand or -dir), again harmlessly, and refuses a pool of one
// host that has a listener. In a cross-host pool, ls says so and shows
// each instance's host (this process's, and the host identity another
// wrote); -beat calls an instance whose heartbeat stands still stale
// without looking its pid up; clean alone removes no listener (it cannot
// judge them in one reading) and says how; clean -watch removes the
// listener whose heartbeat stood still and leaves the live one; a watch
// shorter than the protocol's least bound is refused.
func TestPoolCrossHost(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pool")
	run := func(fail bool, args ...string) string {
		t.Helper()
		b, err := exec.Command(os.Args[0], append([]string{"pool"}, args...)...).CombinedOutput()
		if (err != nil) != fail {
			t.Fatalf("pool %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	if out := run(false, "init", "-cross-host", dir); !strings.Contains(out, "cross-host (marked by "+pool.LocalHost().String()+"), hardware coherence") {
		t.Errorf("pool init -cross-host:\n%s", out)
	}
	if mode, err := pool.ReadMode(dir, pool.OwnerOnly); err != nil || !mode.CrossHost {
		t.Fatalf("after pool init -cross-host: %+v, %v", mode, err)
	}
	run(false, "-dir", dir, "init", "-cross-host")
	if out := run(true, "-dir", dir, "init", "-cross-host", "-coherence", "software"); !strings.Contains(out, "hardware coherence, not software") {
		t.Errorf("pool init -coherence software of a pool with hardware coherence:\n%s", out)
	}
	sim := filepath.Join(t.TempDir(), "sim")
	if out := run(false, "init", "-cross-host", "-coherence", "simulated", sim); !strings.Contains(out, "simulated coherence") {
		t.Errorf("pool init -coherence simulated:\n%s", out)
	}
	if mode, err := pool.ReadMode(sim, pool.OwnerOnly); err != nil || mode.Coherence != pool.CoherenceSimulated {
		t.Fatalf("after pool init -coherence simulated: %+v, %v", mode, err)
	}
	if out := run(true, "init", "-coherence", "software", filepath.Join(t.TempDir(), "one")); !strings.Contains(out, "needs -cross-host") {
		t.Errorf("pool init -coherence without -cross-host:\n%s", out)
	}

	used := t.TempDir()
	lis, err := notnets.Listen("svc", notnets.WithPool(used))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if out := run(true, "-dir", used, "init", "-cross-host"); !strings.Contains(out, "in use") {
		t.Errorf("pool init -cross-host of a pool in use:\n%s", out)
	}

	live, err := notnets.Listen("svc", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	liveID := strings.TrimPrefix(live.Addr().(*notnets.Addr).Instance, "svc+")
	// An instance another host left: its heartbeat stands still.
	const deadID = "00000000000000ee"
	seg, err := pool.CreateIn(dir, pool.ListenerFile("svc+"+deadID), pool.ListenerSize, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	pool.InitListener(seg.Mem, 1, 0)
	elsewhere := pool.Host{ID: [16]byte{0xee, 0xee, 0xee, 0xee}, PIDNS: 7, Name: "elsewhere"}
	pool.WriteHost(seg.Mem, elsewhere)
	lay, err := pool.MapListener(seg.Mem)
	if err != nil {
		t.Fatal(err)
	}
	lay.Load.Workers.Store(1)
	lay.Server.Heartbeat.Store(41)
	lay.Server.State.Store(pool.StateOpen)
	seg.Close()

	out := run(false, "-dir", dir, "ls")
	t.Logf("pool ls:\n%s", out)
	if !strings.Contains(out, "mode: cross-host") {
		t.Errorf("pool ls does not say the pool is cross-host:\n%s", out)
	}
	// SERVICE INSTANCE PID HOST OWNER STATE
	if r := lsRow(out, "svc", liveID); r == nil || r[3] != pool.LocalHost().String() || r[5] != "open" {
		t.Errorf("the live instance's line: %q, want this host, open", r)
	}
	if r := lsRow(out, "svc", deadID); r == nil || r[2] != "1" || r[3] != "elsewhere@eeeeeeee" || r[5] != "open" {
		t.Errorf("the other host's instance: %q, want pid 1 of elsewhere@eeeeeeee, open (one reading cannot tell)", r)
	}
	if !strings.Contains(out, "hosts ") || !strings.Contains(out, "shared across hosts") {
		t.Errorf("pool ls does not list the marker:\n%s", out)
	}
	out = run(false, "-dir", dir, "ls", "-beat")
	if r := lsRow(out, "svc", deadID); r == nil || r[5] != "stale" || !strings.Contains(out, "cannot be looked up here") {
		t.Errorf("pool ls -beat, the other host's instance: %q\n%s", r, out)
	}
	if r := lsRow(out, "svc", liveID); r == nil || r[5] != "open" {
		t.Errorf("pool ls -beat, the live instance: %q", r)
	}

	out = run(false, "-dir", dir, "clean")
	if !strings.Contains(out, "0 stale files removed") || !strings.Contains(out, "2 listeners can be judged by their heartbeat alone") {
		t.Errorf("pool clean of a cross-host pool:\n%s", out)
	}
	if out := run(true, "-dir", dir, "clean", "-watch", "1s"); !strings.Contains(out, "at least 2s") {
		t.Errorf("pool clean -watch 1s:\n%s", out)
	}
	out = run(false, "-dir", dir, "clean", "-watch", pool.MinRemoteStaleAfter.String())
	if !strings.Contains(out, "removed svc+"+deadID+".listener (heartbeat 41 has not moved") || !strings.Contains(out, "1 stale files removed") {
		t.Errorf("pool clean -watch:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, pool.ListenerFile(live.Addr().(*notnets.Addr).Instance))); err != nil {
		t.Errorf("the live listener was removed: %v", err)
	}
}
