package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/pool"
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
	live := lis.Addr().(*notnets.Addr).Instance // live+<id>
	// A listener whose process has exited: the segment of a child that
	// listened, then was killed without closing it.
	child, dead := startInstance(t, dir, "dead")
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
	for _, want := range []string{live + ".listener", live + ".sock", dead + ".listener", dead + ".sock", "is gone", "is alive"} {
		if !strings.Contains(ls, want) {
			t.Errorf("pool ls does not mention %q:\n%s", want, ls)
		}
	}
	// The killed listener left its socket too: it goes with its listener.
	if got := run("clean"); !strings.Contains(got, "removed "+dead+".listener") || !strings.Contains(got, "removed "+dead+".sock") ||
		!strings.Contains(got, "2 stale files removed") {
		t.Errorf("pool clean said:\n%s", got)
	}
	for _, name := range []string{dead + ".listener", dead + ".sock"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", name, err)
		}
	}
	for _, name := range []string{live + ".listener", live + ".sock", pool.RegistryFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s removed: %v", name, err)
		}
	}
	// The live listener still takes connections.
	go notnets.NewServer().Serve(lis)
	cc, err := notnets.Dial(context.Background(), "live", notnets.WithPool(dir))
	if err != nil {
		t.Fatalf("Dial after clean: %v", err)
	}
	cc.Close()
}

// startInstance starts a child process that listens as an instance of
// service in the pool dir (and serves nothing), and returns it and the
// instance's base name once it listens. The test kills it at the end, if
// the caller has not.
func startInstance(t *testing.T, dir, service string) (*exec.Cmd, string) {
	t.Helper()
	child := exec.Command(os.Args[0], "pool-listen-and-hang", dir, service)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		child.Process.Kill()
		child.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	base, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "ready ")
	if err != nil || !ok {
		t.Fatalf("child: %q %v", line, err)
	}
	return child, base
}

// deadPID is a pid no process has: above the kernel's pid_max.
const deadPID = 0x3ffffff0

// TestPoolCleanRefusesPlantedLink: another user (uid 65534) makes the pool
// path a link to a root-only directory holding files clean would remove;
// root's pool clean (and ls) refuse the pool, as Listen and Dial do, and
// remove nothing there.
func TestPoolCleanRefusesPlantedLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the link is planted by uid 65534 and followed by root")
	}
	base := t.TempDir()
	// Like /dev/shm: anyone may create names in base (and reach it).
	if err := os.Chmod(filepath.Dir(base), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o1777); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(base, "secret")
	if err := os.Mkdir(secret, 0o700); err != nil {
		t.Fatal(err)
	}
	conn := pool.ConnPrefix + "0123456789abcdef0123456789abcdef"
	seg, err := pool.Create(secret, conn, pool.ConnSize(4096, 4096))
	if err != nil {
		t.Fatal(err)
	}
	pool.InitConn(seg.Mem, 4096, 4096, deadPID)
	seg.Close()
	seg, err = pool.Create(secret, pool.ListenerFile("precious"), pool.ListenerSize)
	if err != nil {
		t.Fatal(err)
	}
	pool.InitListener(seg.Mem, deadPID, 0)
	seg.Close()
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: filepath.Join(secret, "precious.sock")}); err != nil {
		t.Fatal(err)
	}
	unix.Close(s)
	planted := []string{conn, "precious.listener", "precious.sock"}

	link := filepath.Join(base, "pool")
	ln := exec.Command("ln", "-s", secret, link)
	ln.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := ln.CombinedOutput(); err != nil {
		t.Fatalf("ln -s as uid 65534: %v\n%s", err, out)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the planted link: %v, %v", fi, err)
	}
	for _, dir := range []string{link, link + "/"} {
		for _, cmd := range []string{"clean", "ls"} {
			out, err := exec.Command(os.Args[0], "pool", "-dir", dir, cmd).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "symbolic link") {
				t.Errorf("pool -dir %s %s: %v\n%s\nwant a refusal naming the symbolic link", dir, cmd, err, out)
			}
		}
	}
	for _, name := range planted {
		if _, err := os.Lstat(filepath.Join(secret, name)); err != nil {
			t.Errorf("%s was removed through the planted link: %v", name, err)
		}
	}
	// The directory itself, given as it is, is the root's pool: cleaned.
	out, err := exec.Command(os.Args[0], "pool", "-dir", secret, "clean").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 stale files removed") {
		t.Errorf("pool clean of the real directory: %v\n%s", err, out)
	}
}

// TestPoolGroupFlag: a pool shared by a group is checked with -group, as
// Listen and Dial check it with WithPoolGroup, and refused without it.
func TestPoolGroupFlag(t *testing.T) {
	gid := os.Getegid()
	if os.Geteuid() == 0 {
		gid = 4242
	}
	dir := filepath.Join(t.TempDir(), "pool")
	if err := pool.Prepare(dir, pool.Access{Shared: true, Group: gid}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(os.Args[0], "pool", "-dir", dir, "clean").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "writable by its group") {
		t.Errorf("pool clean of a group pool without -group: %v\n%s", err, out)
	}
	out, err = exec.Command(os.Args[0], "pool", "-dir", dir, "-group", strconv.Itoa(gid), "clean").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "0 stale files removed") {
		t.Errorf("pool clean -group %d: %v\n%s", gid, err, out)
	}
}
