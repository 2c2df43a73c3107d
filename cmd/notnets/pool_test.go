package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/notnets/notnets"
)

// TestPoolLsAndClean lists a pool holding a live listener and a listener
// file left by a dead process, cleans it, and checks that only the stale
// file went.
func TestPoolLsAndClean(t *testing.T) {
	dir := t.TempDir()
	lis, err := notnets.Listen("live", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	// A listener whose process has exited: the segment of a child that
	// listened, then was killed without closing it.
	child := exec.Command(os.Args[0], "pool-listen-and-hang", dir)
	out, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("child: %q %v", buf, err)
	}
	child.Process.Kill()
	child.Wait()

	run := func(args ...string) string {
		t.Helper()
		b, err := exec.Command(os.Args[0], append([]string{"pool", "-dir", dir}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("pool %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	ls := run("ls")
	for _, want := range []string{"live.listener", "dead.listener", "is gone", "is alive"} {
		if !strings.Contains(ls, want) {
			t.Errorf("pool ls does not mention %q:\n%s", want, ls)
		}
	}
	if got := run("clean"); !strings.Contains(got, "removed dead.listener") || !strings.Contains(got, "1 stale files removed") {
		t.Errorf("pool clean said:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "dead.listener")); !os.IsNotExist(err) {
		t.Errorf("dead.listener still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "live.listener")); err != nil {
		t.Errorf("live.listener removed: %v", err)
	}
	// The live listener still takes connections.
	go notnets.NewServer().Serve(lis)
	cc, err := notnets.Dial(context.Background(), "live", notnets.WithPool(dir))
	if err != nil {
		t.Fatalf("Dial after clean: %v", err)
	}
	cc.Close()
}
