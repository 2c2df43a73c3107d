package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
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
	_, deadID, _ := pool.ParseInstance(dead)
	if r := lsRow(ls, "dead", deadID); r == nil || r[5] != "stale" || !strings.HasSuffix(strings.Join(r, " "), "is gone") {
		t.Errorf("pool ls does not call the dead instance stale (its process is gone): %q\n%s", r, ls)
	}
	for _, want := range []string{live + ".listener", live + ".sock", dead + ".listener", dead + ".sock", "is gone", "is alive",
		"registry generation"} {
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

// blockGreeter's SayHello tells started that it runs, then waits for
// release (or its context).
type blockGreeter struct {
	pb.UnimplementedGreeterServer
	started chan struct{}
	release chan struct{}
}

func (g blockGreeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	g.started <- struct{}{}
	select {
	case <-g.release:
		return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// blockedInstance is an instance served in this process by a
// blockGreeter, with one call of a client of its own blocked in it.
type blockedInstance struct {
	srv    *notnets.Server
	id     string // the instance id, after the service name and "+"
	g      blockGreeter
	called chan error // the blocked call's outcome
}

// startBlocked starts an instance of service in the pool dir and blocks
// one call in it. The service's other instances must be draining or
// closed, for the call to come here.
func startBlocked(t *testing.T, ctx context.Context, dir, service string) *blockedInstance {
	t.Helper()
	lis, err := notnets.Listen(service, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	b := &blockedInstance{srv: notnets.NewServer(), called: make(chan error, 1),
		g: blockGreeter{started: make(chan struct{}, 1), release: make(chan struct{})}}
	_, b.id, _ = pool.ParseInstance(lis.Addr().(*notnets.Addr).Instance)
	pb.RegisterGreeterServer(b.srv, b.g)
	go b.srv.Serve(lis)
	t.Cleanup(b.srv.Stop)
	cc, err := notnets.Dial(ctx, service, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	go func() {
		_, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "blocked"})
		b.called <- err
	}()
	select {
	case <-b.g.started:
	case <-ctx.Done():
		t.Fatalf("the call to %s+%s never started", service, b.id)
	}
	return b
}

// lsRow returns the fields of the line of ls output that starts with the
// given fields, or nil.
func lsRow(out string, first ...string) []string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(first) && slicesEqual(f[:len(first)], first) {
			return f
		}
	}
	return nil
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

// TestPoolLsServices: two instances of one service, one of them in
// GracefulStop, each with a call in flight, and an instance of another
// service in a child process. pool ls lists both services with their
// instance counts, each instance's id, pid, owner, state and in-flight
// call, and the registry's generation; -beat sees the heartbeats move, and
// calls the child stale once it is stopped; -files lists only the files.
func TestPoolLsServices(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The draining instance first, so that the second client's call goes
	// to the other: clients start no call on a draining instance.
	draining := startBlocked(t, ctx, dir, "alpha")
	stopped := make(chan struct{})
	go func() { draining.srv.GracefulStop(); close(stopped) }()
	run := func(args ...string) string {
		t.Helper()
		b, err := exec.Command(os.Args[0], append([]string{"pool", "-dir", dir, "ls"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("pool ls %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	// until runs ls until cond holds of its output, bounded by ctx.
	until := func(what string, cond func(string) bool, args ...string) string {
		t.Helper()
		for {
			out := run(args...)
			if cond(out) {
				return out
			}
			if ctx.Err() != nil {
				t.Fatalf("pool ls never showed %s:\n%s", what, out)
			}
		}
	}
	until("the first instance draining", func(out string) bool {
		r := lsRow(out, "alpha", draining.id)
		return r != nil && r[5] == "draining"
	})
	open := startBlocked(t, ctx, dir, "alpha")
	child, beta := startInstance(t, dir, "beta")
	_, betaID, _ := pool.ParseInstance(beta)
	me := strconv.Itoa(os.Getpid())

	out := until("both services, each alpha instance with its call", func(out string) bool {
		a, b := lsRow(out, "alpha", open.id), lsRow(out, "alpha", draining.id)
		return a != nil && b != nil && a[6] == "1" && b[6] == "1" && lsRow(out, "beta", betaID) != nil
	})
	t.Logf("pool ls:\n%s", out)
	// SERVICE INSTANCES OPEN DRAINING STALE IN-FLIGHT QUEUED
	if r := lsRow(out, "alpha", "2"); !slicesEqual(r, []string{"alpha", "2", "1", "1", "0", "2", "0"}) {
		t.Errorf("alpha's line: %q, want 2 instances, 1 open, 1 draining, 2 calls in flight", r)
	}
	if r := lsRow(out, "beta", "1"); !slicesEqual(r, []string{"beta", "1", "1", "0", "0", "0", "0"}) {
		t.Errorf("beta's line: %q, want 1 instance, open, idle", r)
	}
	// SERVICE INSTANCE PID HOST OWNER STATE IN-FLIGHT QUEUED WORKERS HEARTBEAT
	owner := strconv.Itoa(os.Geteuid())
	host := pool.LocalHost().String()
	if u, err := userName(os.Geteuid()); err == nil {
		owner = u
	}
	for _, want := range [][]string{
		{"alpha", open.id, me, host, owner, "open", "1", "0"},
		{"alpha", draining.id, me, host, owner, "draining", "1", "0"},
		{"beta", betaID, strconv.Itoa(child.Process.Pid), host, owner, "open", "0", "0"},
	} {
		if r := lsRow(out, want[:2]...); r == nil || !slicesEqual(r[:len(want)], want) {
			t.Errorf("instance line %q, want it to start %q", r, want)
		}
	}
	if gen := lsRow(out, "pool", dir+":", "registry", "generation"); len(gen) != 5 {
		t.Errorf("registry line %q, want the generation", gen)
	} else if n, err := strconv.ParseUint(gen[4], 10, 32); err != nil || n == 0 {
		t.Errorf("registry line %q, want a generation above 0", gen)
	}
	for _, want := range []string{"FILES", "alpha+" + open.id + ".listener", "beta+" + betaID + ".sock", "registry  "} {
		if !strings.Contains(out, want) {
			t.Errorf("pool ls does not list %q", want)
		}
	}

	// -beat: live hearts move; a stopped process's does not.
	out = until("the heartbeats move", func(out string) bool {
		r := lsRow(out, "alpha", open.id)
		return r != nil && strings.HasPrefix(r[10], "(+")
	}, "-beat")
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	out = until("the stopped child stale", func(out string) bool {
		r := lsRow(out, "beta", betaID)
		return r != nil && r[5] == "stale" && strings.Contains(out, "no heartbeat")
	}, "-beat")
	t.Logf("pool ls -beat, beta's process stopped:\n%s", out)
	if r := lsRow(out, "beta", "1"); r == nil || r[4] != "1" {
		t.Errorf("beta's line with its instance stopped: %q, want 1 stale", r)
	}
	child.Process.Signal(syscall.SIGCONT)

	// -files: the files alone, as before services.
	files := run("-files")
	if strings.Contains(files, "SERVICE") || !strings.HasPrefix(files, "NAME") || !strings.Contains(files, "alpha+"+draining.id+".listener") {
		t.Errorf("pool ls -files:\n%s", files)
	}

	// The calls end; the draining instance's GracefulStop returns and its
	// file leaves the pool.
	close(open.g.release)
	close(draining.g.release)
	for _, b := range []*blockedInstance{open, draining} {
		if err := <-b.called; err != nil {
			t.Errorf("the call blocked in %s: %v", b.id, err)
		}
	}
	<-stopped
	out = run()
	if lsRow(out, "alpha", draining.id) != nil || lsRow(out, "alpha", "1") == nil {
		t.Errorf("pool ls after the drain:\n%s\nwant alpha with one instance", out)
	}
}

// userName returns the name of the user uid.
func userName(uid int) (string, error) {
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return "", err
	}
	return u.Username, nil
}

// TestShownQuotesNames: names that could break the table or reach the
// terminal as control sequences are quoted.
func TestShownQuotesNames(t *testing.T) {
	for in, want := range map[string]string{
		"svc+0123456789abcdef.listener": "svc+0123456789abcdef.listener",
		"a b":                           `"a b"`,
		"evil\x1b]0;x\x07":              `"evil\x1b]0;x\a"`,
		"tab\there":                     `"tab\there"`,
		"é":                             `"\u00e9"`,
	} {
		if got := shown(in); got != want {
			t.Errorf("shown(%q) = %s, want %s", in, got, want)
		}
	}
}
