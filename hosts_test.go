package notnets_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/pool"
)

// Tests as separate hosts. A child process started as another host
// (asHost) runs in PID, mount, UTS, IPC and network namespaces of its own
// and shares nothing with the test but the pool directory: it mounts a
// fresh tmpfs over /dev/shm and /tmp, binds the pool back in, mounts a
// /proc of its own pid namespace (so that it sees no pid of the test's),
// takes a host name of its own and has a network of its own (loopback
// only). Its kernel is the test's, so futexes and Unix sockets would
// still reach it; in a cross-host pool nothing uses them, which is what
// these tests check: a pool that says it is shared across hosts works
// with peers that have nothing in common but the memory.

const (
	// hostEnv is the host name of a child started as another host
	// (asHost); TestMain sets its namespaces up before its role.
	hostEnv = "NOTNETS_TEST_HOST"
	// hostsEnv makes a test process run every server child it starts
	// (startServerCmd) as another host, in cross-host pools (testPool):
	// the suite of TestAsSeparateHosts.
	hostsEnv = "NOTNETS_TEST_HOSTS"
	// crossHostEnv makes the server child Listen WithCrossHost.
	crossHostEnv = "NOTNETS_TEST_CROSSHOST"
	// livenessEnv sets the server child's liveness timeout
	// (time.ParseDuration).
	livenessEnv = "NOTNETS_TEST_LIVENESS"
)

// hostSeq numbers the hosts startServerCmd starts, for their names.
var hostSeq atomic.Int64

// asHosts reports whether this test process runs its servers as separate
// hosts (hostsEnv).
func asHosts() bool { return os.Getenv(hostsEnv) != "" }

// needHosts skips t unless this process can start others as hosts.
func needHosts(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: running a process as another host needs namespaces and mounts of its own, so root (run the tests as root to run these)")
	}
}

// asHost makes cmd, the test binary, start as the host name: in new PID,
// mount, UTS, IPC and network namespaces, where TestMain (becomeHost)
// finishes the set-up before the child's role. It skips t when this
// process cannot (not root).
func asHost(t testing.TB, cmd *exec.Cmd, name string) {
	t.Helper()
	needHosts(t)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL, // a host does not outlive the test
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, hostEnv+"="+name)
}

// isHost reports whether cmd starts as another host (asHost).
func isHost(cmd *exec.Cmd) bool {
	return cmd.SysProcAttr != nil && cmd.SysProcAttr.Cloneflags&syscall.CLONE_NEWPID != 0
}

// startAsHost starts the test server as the host name on the pool dir,
// and waits until it listens; it skips t where namespaces are not
// permitted.
func startAsHost(t testing.TB, dir, name string, env ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	asHost(t, cmd, name)
	return startServerCmd(t, dir, cmd, env...)
}

// crossHostPool makes a pool of the test's own, cross-host (and of the
// coherence coherenceEnv asks for, if any).
func crossHostPool(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(testPool(t), "pool")
	c, ok := testCoherence(t)
	if !ok {
		c = pool.CoherenceHardware
	}
	if err := pool.PrepareCoherence(dir, pool.OwnerOnly, c); err != nil {
		t.Fatal(err)
	}
	return dir
}

// becomeHost finishes making this process, started by asHost as pid 1 of
// a new pid namespace, another host named name: nothing it mounts
// propagates back; /dev/shm and /tmp are fresh and empty, but for the
// pool directory ($NOTNETS_POOL), bound back in at its path; /proc is its
// pid namespace's; its host name is name; its loopback interface is up
// (its network namespace has nothing else).
func becomeHost(name string) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("pid %d, not 1: not in a pid namespace of its own", os.Getpid())
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the mounts private: %w", err)
	}
	dir := os.Getenv("NOTNETS_POOL")
	if dir == "" {
		return errors.New("no pool to share ($NOTNETS_POOL)")
	}
	pfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the pool %s: %w", dir, err)
	}
	defer unix.Close(pfd)
	for _, d := range []string{"/dev/shm", "/tmp"} {
		if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return fmt.Errorf("mount a fresh tmpfs on %s: %w", d, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make the pool's mount point: %w", err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", pfd), dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the pool %s: %w", dir, err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set the host name: %w", err)
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err == nil {
		err = unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr)
	}
	if err == nil {
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		err = unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr)
	}
	if err != nil {
		return fmt.Errorf("bring the loopback interface up: %w", err)
	}
	return nil
}

// whoami answers the semantics service's "whoami" mode: the server's host
// name, its pid and how many processes its /proc shows.
func whoami() (*testpb.SimpleResponse, error) {
	host, err := os.Hostname()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "host name: %v", err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "/proc: %v", err)
	}
	procs := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			procs++
		}
	}
	return body(fmt.Sprintf("%s %d %d", host, os.Getpid(), procs)), nil
}

// whoAnswered makes a whoami call and returns the server's answer.
func whoAnswered(ctx context.Context, c testpb.TestServiceClient, opts ...grpc.CallOption) (string, error) {
	r, err := c.UnaryCall(withMode(ctx, "whoami", ""), &testpb.SimpleRequest{}, opts...)
	if err != nil {
		return "", err
	}
	return string(r.GetPayload().GetBody()), nil
}

// hostsSuite is what TestAsSeparateHosts runs with every server as
// another host, in cross-host pools: the end-to-end semantics (all four
// kinds of call, metadata, status, deadlines, cancellation, limits,
// codecs), grpc-go's interop cases (each client as a host too), the
// heaps, and a pool on a device.
const hostsSuite = "^(TestUnaryConcurrentCallsGetTheirOwnReplies|TestMetadataHeadersAndTrailers|TestStreamHeaderAndTrailer|" +
	"TestStatusCodesMessagesAndDetails|TestUnimplemented|TestDeadlineReachesTheServer|TestDeadlineExceeded|" +
	"TestCancelReachesTheServer|TestMessageSizes|TestMessageTooLarge|TestMetadataLargerThanTheRing|TestStreamingKinds|" +
	"TestClientInterceptorsAndCodec|TestPeerAndMethodOnTheServer|TestInterop|TestArenaBytesEcho|TestArenaProtobuf|TestArenaHeldReplies|" +
	"TestDeviceCalls)$"

// hostsSuiteTests is how many top-level tests hostsSuite names.
const hostsSuiteTests = 19

// TestAsSeparateHosts runs hostsSuite again, in a child test process,
// with every server (and every interop client) in namespaces of its own,
// as separate hosts sharing nothing but a cross-host pool: every test
// must pass there, none may skip.
func TestAsSeparateHosts(t *testing.T) {
	if asHosts() {
		t.Skip("skipped: already running as separate hosts")
	}
	needHosts(t)
	startAsHost(t, crossHostPool(t), "probe") // skips where namespaces are not permitted
	runSuite(t, "as separate hosts", hostsSuite, hostsSuiteTests, hostsEnv+"=1")
}

// runSuite runs the tests suite (a -test.run pattern naming tests top-level
// tests) in a child test process with env added to its environment: every
// test must pass, none may skip.
func runSuite(t *testing.T, what, suite string, tests int, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", suite, "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "\nPASS") || strings.Contains(string(out), "--- FAIL") {
		t.Fatalf("suite %s: %v\n%s", what, err, out)
	}
	passed := regexp.MustCompile(`(?m)^--- PASS: Test`).FindAllIndex(out, -1)
	// A subtest of what only a pool of one host has may skip
	// (oneHostOnly); a whole test may not.
	skipped := regexp.MustCompile(`(?m)^--- SKIP`).Match(out)
	if n := len(passed); n != tests || skipped {
		t.Fatalf("suite %s passed %d of %d tests (skips: %v):\n%s", what, n, tests, skipped, out)
	}
	t.Logf("suite %s: %d tests passed", what, tests)
}

// TestCrossHostCalls: a server started as another host in a cross-host
// pool, with no option that says so (the pool's marker does), answers
// the four kinds of call from this process. It is isolated as a host
// would be: its host name is its own, it is pid 1 and its /proc shows
// one process. Neither side knows the other's pid for sure: the client
// sees the server's listener pid (1), the server the pid the client
// wrote, both unverified. The connection went through the listener's
// slots (a named segment, no socket in the pool), and the listener's
// header names its host.
func TestCrossHostCalls(t *testing.T) {
	dir := crossHostPool(t)
	srv := startAsHost(t, dir, "peers-host")
	var p peer.Peer
	cc := srv.dial(t)
	c := semanticsClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	who, err := whoAnswered(ctx, c, grpc.Peer(&p))
	if err != nil {
		t.Fatal(err)
	}
	if who != "peers-host 1 1" {
		t.Errorf("the server says it is %q, want host peers-host, pid 1, seeing 1 process", who)
	}
	a, ok := p.AuthInfo.(notnets.AuthInfo)
	if !ok || a.PID != 1 || a.PIDVerified || a.UID != uint32(os.Geteuid()) {
		t.Errorf("the client's view of the server: %#v; want pid 1 (its namespace's), unverified, uid %d", p.AuthInfo, os.Geteuid())
	}
	r, err := c.UnaryCall(withMode(ctx, "auth", ""), &testpb.SimpleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%d %d %d false", os.Geteuid(), os.Getegid(), os.Getpid()); string(r.GetPayload().GetBody()) != want {
		t.Errorf("the server saw the client as %q, want %q (the pid it wrote, unverified)", r.GetPayload().GetBody(), want)
	}
	if notnets.SegmentPath(cc) == "" {
		t.Error("the connection segment has no name: it went through a socket, not the slots")
	}
	files, err := pool.ScanIn(dir, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	var listeners int
	for _, e := range files {
		switch e.Kind {
		case "socket":
			t.Errorf("a socket in a cross-host pool: %s", e.Name)
		case "listener":
			listeners++
			if e.Host.Name != "peers-host" || e.Host.Local() || e.Stale {
				t.Errorf("listener %s: host %v (local %v), stale %v (%s); want peers-host, not local, not stale", e.Name, e.Host, e.Host.Local(), e.Stale, e.Why)
			}
		}
	}
	if listeners != 1 {
		t.Errorf("%d listeners in the pool, want 1: %+v", listeners, files)
	}

	// The four kinds of call.
	if r, err := c.UnaryCall(withMode(ctx, "echo", "u"), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("unary")}}); err != nil || string(r.GetPayload().GetBody()) != "unary" {
		t.Errorf("unary: %v, %v", r, err)
	}
	cs, err := c.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := cs.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, i*1000)}}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := cs.CloseAndRecv(); err != nil || r.GetAggregatedPayloadSize() != 45000 {
		t.Errorf("client streaming: %v, %v; want 45000 bytes", r, err)
	}
	ss, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 200 << 10}, {Size: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for {
		r, err := ss.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(r.GetPayload().GetBody()))
	}
	if fmt.Sprint(sizes) != "[10 204800 0]" {
		t.Errorf("server streaming: sizes %v", sizes)
	}
	if err := pingPong(ctx, c, 0, 100); err != nil {
		t.Errorf("bidirectional: %v", err)
	}
}

// TestCrossHostServerKilled kills a server that runs as another host
// (SIGKILL) while a unary call and a server stream wait on it: with no
// pid to look up, both end with Unavailable once the server's heartbeat
// has stood still for the liveness timeout, not before and not much
// after; later calls fail at once.
func TestCrossHostServerKilled(t *testing.T) {
	const timeout = time.Second
	srv := startAsHost(t, crossHostPool(t), "doomed")
	c := semanticsClient(srv.dial(t, notnets.WithLivenessTimeout(timeout)))
	unary, streamErr := blockedCalls(t, c)
	killed := time.Now()
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"unary call": unary, "stream": streamErr} {
		select {
		case err := <-ch:
			after := time.Since(killed)
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "stopped answering") {
				t.Errorf("%s after the kill = %v, want Unavailable: the peer stopped answering", name, err)
			}
			if after < timeout-200*time.Millisecond || after > timeout+600*time.Millisecond {
				t.Errorf("%s ended %v after the kill, want about the liveness timeout, %v", name, after, timeout)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still waiting 10 s after the server was killed", name)
		}
	}
	start := time.Now()
	if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable || time.Since(start) > time.Second {
		t.Errorf("call on the dead connection = %v after %v, want Unavailable at once", err, time.Since(start))
	}
}

// TestCrossHostClientKilled serves in this process, in a cross-host pool,
// and kills a client running as another host (SIGKILL) while its call
// blocks in a handler: the handler's context is cancelled once the
// client's heartbeat has stood still for the liveness timeout.
func TestCrossHostClientKilled(t *testing.T) {
	const timeout = time.Second
	dir := crossHostPool(t)
	lis, err := notnets.Listen(listenName, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	if !lis.CrossHost() {
		t.Fatal("a listener in a cross-host pool does not say it is cross-host")
	}
	srv := notnets.NewServer(notnets.WithLivenessTimeout(timeout))
	sem := newSemantics()
	desc := testpb.TestService_ServiceDesc
	desc.ServiceName = semanticsService
	srv.RegisterService(&desc, sem)
	go srv.Serve(lis)
	defer srv.Stop()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=blocking-client", "NOTNETS_POOL="+dir)
	asHost(t, cmd, "client-host")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start a process as another host: %v", err)
	}
	defer cmd.Wait()
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "blocked\n" {
		cmd.Process.Kill()
		if why, ok := strings.CutPrefix(line, "nohost "); ok {
			t.Skipf("the client process cannot set up its namespaces as another host: %s", why)
		}
		t.Fatalf("client process: %q, %v", line, err)
	}
	// The client is pid 1 of its namespace: its call's id names pid 1.
	_, ended := sem.chans(blockingID(1))
	killed := time.Now()
	cmd.Process.Kill()
	select {
	case how := <-ended:
		after := time.Since(killed)
		if !strings.HasPrefix(how, "context canceled") || after < timeout-200*time.Millisecond || after > timeout+600*time.Millisecond {
			t.Errorf("handler of the killed client ended %q, %v after the kill; want context canceled after about %v", how, after, timeout)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler of the killed client still running 10 s after the kill")
	}
}

// TestCrossHostDiscovery: a client of a service with one instance on
// another host finds a second instance started on a third host and uses
// it; when the first host is killed, only calls in flight on it fail, the
// client drops it (its connection fails by heartbeat, and it does not
// connect to it again: its listener's heartbeat stands still) and every
// later call goes to the second; and a clean that reads the pool twice,
// the bound apart, removes the dead host's listener, judged by its
// heartbeat alone, and leaves the live one.
func TestCrossHostDiscovery(t *testing.T) {
	const timeout = time.Second
	dir := crossHostPool(t)
	a := startAsHost(t, dir, "host-a")
	cc := newServiceClient(t, dir, 1, notnets.WithLivenessTimeout(timeout), notnets.WithBalancing(notnets.RoundRobin), notnets.WithCrossHost())
	c := semanticsClient(cc)
	ctx := context.Background()
	host := func() string {
		t.Helper()
		who, err := whoAnswered(ctx, c)
		if err != nil {
			t.Fatalf("whoami: %v", err)
		}
		return strings.Fields(who)[0]
	}
	if h := host(); h != "host-a" {
		t.Fatalf("the only instance is on %s, want host-a", h)
	}

	startAsHost(t, dir, "host-b")
	waitFor(t, 10*time.Second, "the client connects to the instance of host-b", func() bool {
		return notnets.ConnectedInstances(cc) == 2
	})
	seen := map[string]bool{}
	for range 4 {
		seen[host()] = true
	}
	if !seen["host-a"] || !seen["host-b"] {
		t.Fatalf("round robin over two instances reached %v, want host-a and host-b", seen)
	}

	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	a.cmd.Wait()
	killed := time.Now()
	// Calls go on; those in flight on host-a fail with Unavailable, the
	// others reach host-b. After the liveness timeout its connection
	// fails, and after one more attempt to connect, which gives up once
	// host-a's listener has not beaten for the liveness timeout, the
	// client drops it.
	failed := 0
	for notnets.Instances(cc) != 1 {
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("10 s after host-a was killed the client follows %d instances (%d connected), want host-b's alone", notnets.Instances(cc), notnets.ConnectedInstances(cc))
		}
		who, err := whoAnswered(ctx, c)
		switch {
		case status.Code(err) == codes.Unavailable:
			failed++
		case err != nil:
			t.Fatalf("a call after the kill: %v", err)
		case !strings.HasPrefix(who, "host-b "):
			t.Fatalf("a call after the kill was answered by %q", who)
		}
	}
	t.Logf("host-a dropped %v after the kill", time.Since(killed))
	if failed > 1 {
		t.Errorf("%d calls failed after the kill, want at most the one in flight", failed)
	}
	for range 20 {
		if h := host(); h != "host-b" {
			t.Fatalf("a call after host-a was dropped went to %s", h)
		}
	}

	// Reaped by heartbeat age: two readings of this process at least
	// the bound apart.
	deadline := time.Now().Add(5*pool.MinRemoteStaleAfter + 5*time.Second)
	var removed []pool.Entry
	for len(removed) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("host-a's listener was not removed by heartbeat age")
		}
		var err error
		if removed, err = pool.CleanAfter(dir, pool.OwnerOnly, pool.MinRemoteStaleAfter); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // rereads the pool: the rule needs readings apart in time
	}
	if len(removed) != 1 || removed[0].Host.Name != "host-a" || !strings.Contains(removed[0].Why, "heartbeat") {
		t.Errorf("clean removed %+v, want host-a's listener, for its heartbeat", removed)
	}
	entries, err := pool.ScanIn(dir, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, e := range entries {
		if e.Kind == "listener" {
			live = append(live, e.Host.Name)
		}
	}
	if fmt.Sprint(live) != "[host-b]" {
		t.Errorf("listeners left in the pool: %v, want host-b's", live)
	}
	if h := host(); h != "host-b" {
		t.Errorf("after the clean, a call went to %s", h)
	}
}

// TestPIDNamespacesWithoutMarker: a server in namespaces of its own (pid,
// mount, UTS, IPC, network) on this host, in a pool that is not
// cross-host, and clients on both sides of the namespace boundary. This
// is the failure of issue 15 (a server that looked a client's pid up in
// its own /proc closed live connections; Listen's clean-up removed
// listeners whose pids its namespace did not have): with no marker,
// notnets treats the peers as one host (socket, sealed memfd, futex all
// work across namespaces of one kernel) but looks a pid up only where
// it is of its own pid namespace, or the kernel gave it. So: the
// server's Listen leaves this process's listener in the pool; this
// process's client connects through the socket, and sees the server's
// pid as the kernel reports it (its pid in this namespace, verified),
// while the server sees pid 0 (the kernel cannot name this process in
// the server's namespace), unverified; calls go on for many liveness
// timeouts without a connection closing; a client in the server's
// namespaces calls this process's server; and a kill of the server is
// seen within about 100 ms (the kernel's pid is looked up), not after
// the liveness timeout.
func TestPIDNamespacesWithoutMarker(t *testing.T) {
	oneHostOnly(t, "pid namespaces sharing a pool of one host")
	const timeout = 300 * time.Millisecond
	dir := testPool(t)
	mine, err := notnets.Listen("mine", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	msrv := notnets.NewServer(notnets.WithLivenessTimeout(timeout))
	pb.RegisterGreeterServer(msrv, greeter{})
	go msrv.Serve(mine)
	defer msrv.Stop()

	srv := startAsHost(t, dir, "same-kernel", livenessEnv+"="+timeout.String())
	if _, err := os.Stat(filepath.Join(dir, pool.ListenerFile(mine.Addr().(*notnets.Addr).Instance))); err != nil {
		t.Fatalf("the server in another pid namespace removed this process's listener at its Listen: %v", err)
	}
	var p peer.Peer
	cc := srv.dial(t, notnets.WithLivenessTimeout(timeout))
	c := semanticsClient(cc)
	ctx := context.Background()
	who, err := whoAnswered(ctx, c, grpc.Peer(&p))
	if err != nil {
		t.Fatal(err)
	}
	if who != "same-kernel 1 1" {
		t.Errorf("the server says it is %q, want same-kernel, pid 1, seeing 1 process", who)
	}
	if notnets.SegmentPath(cc) != "" {
		t.Errorf("segment %s: want a sealed memfd through the socket", notnets.SegmentPath(cc))
	}
	if a, ok := p.AuthInfo.(notnets.AuthInfo); !ok || a.PID != srv.cmd.Process.Pid || !a.PIDVerified {
		t.Errorf("the client's view of the server: %#v; want pid %d (the kernel's, of this namespace), verified", p.AuthInfo, srv.cmd.Process.Pid)
	}
	r, err := c.UnaryCall(withMode(ctx, "auth", ""), &testpb.SimpleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%d %d 0 false", os.Geteuid(), os.Getegid()); string(r.GetPayload().GetBody()) != want {
		t.Errorf("the server saw the client as %q, want %q", r.GetPayload().GetBody(), want)
	}
	// Many liveness timeouts of calls: neither side closes the other.
	for start := time.Now(); time.Since(start) < 6*timeout; {
		if _, err := c.UnaryCall(withMode(ctx, "echo", "alive"), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("a call %v into the calls: %v", time.Since(start), err)
		}
	}

	// The other way: a client in namespaces of its own calls this
	// process's server (the kernel gives it pid 0 for this process).
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=call-client", "NOTNETS_POOL="+dir, "NOTNETS_TEST_NAME=mine")
	asHost(t, cmd, "caller")
	out, err := cmd.Output()
	if string(out) != "ok Hello x\n" {
		t.Errorf("a client in another pid namespace calling this process: %q, %v", out, err)
	}

	unary := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(withMode(ctx, "block", "k"), &testpb.SimpleRequest{})
		unary <- err
	}()
	if _, err := c.UnaryCall(withMode(ctx, "started", "k"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	srv.cmd.Process.Kill()
	select {
	case err := <-unary:
		if after := time.Since(killed); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "has exited") || after > 500*time.Millisecond {
			t.Errorf("call to the killed server = %v, %v after the kill; want Unavailable, its process has exited, within a few heartbeats", err, after)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call to the killed server still waits 10 s after the kill")
	}
}

// TestCrossHostOptionMismatch: WithCrossHost on a client of a pool of one
// host fails with FailedPrecondition, naming the marker, instead of
// connecting as if the peers were local; on Listen in a pool of one host
// that has a listener it fails with ErrPoolInUse; and a client with no
// option in a cross-host pool follows the pool (the slots, poll-only).
func TestCrossHostOptionMismatch(t *testing.T) {
	oneHostOnly(t, "WithCrossHost in a pool of one host")
	dir := testPool(t)
	lis, err := notnets.Listen("svc", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if lis.CrossHost() {
		t.Error("a listener in a pool of one host says it is cross-host")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := notnets.Dial(ctx, "svc", notnets.WithPool(dir), notnets.WithCrossHost()); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "hosts marker") {
		t.Errorf("Dial WithCrossHost in a pool of one host = %v, want FailedPrecondition naming the marker", err)
	}
	if _, err := notnets.ContextDialer(notnets.WithPool(dir), notnets.WithCrossHost())(ctx, "svc"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ContextDialer WithCrossHost in a pool of one host = %v, want FailedPrecondition", err)
	}
	if _, err := notnets.Listen("svc", notnets.WithPool(dir), notnets.WithCrossHost()); !errors.Is(err, notnets.ErrPoolInUse) {
		t.Errorf("Listen WithCrossHost in a pool of one host in use = %v, want ErrPoolInUse", err)
	}

	cross := filepath.Join(t.TempDir(), "pool")
	clis, err := notnets.Listen("svc", notnets.WithPool(cross), notnets.WithCrossHost())
	if err != nil {
		t.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	go srv.Serve(clis)
	defer srv.Stop()
	if !clis.CrossHost() {
		t.Error("a listener made WithCrossHost does not say it is cross-host")
	}
	cc, err := notnets.Dial(ctx, "svc", notnets.WithPool(cross))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if notnets.SegmentPath(cc) == "" {
		t.Error("a client with no option in a cross-host pool used the socket")
	}
	if !notnets.PollsOnly(cc) {
		t.Error("a client with no option in a cross-host pool waits on a futex")
	}
	if r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "x"}); err != nil || r.GetMessage() != "Hello x" {
		t.Errorf("SayHello in a cross-host pool: %v, %v", r, err)
	}
}

// TestCrossHostExclusive: in a cross-host pool, where no pid is looked
// up, an exclusive Listen is refused by a live instance (its heartbeat
// moves) and not by one another host left (its heartbeat stands still,
// its pid means nothing here).
func TestCrossHostExclusive(t *testing.T) {
	dir := crossHostPool(t)
	// The other host's instance, dead: open, never beating again.
	seg, err := pool.CreateIn(dir, pool.ListenerFile(listenName+"+00000000000000ee"), pool.ListenerSize, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	pool.InitListener(seg.Mem, 1, 0)
	pool.WriteHost(seg.Mem, pool.Host{ID: [16]byte{0xee}, PIDNS: 7, Name: "gone"})
	lay, err := pool.MapListener(seg.Mem)
	if err != nil {
		t.Fatal(err)
	}
	lay.Server.State.Store(pool.StateOpen)
	seg.Close()

	first, err := notnets.Listen(listenName, notnets.WithPool(dir), notnets.WithExclusive())
	if err != nil {
		t.Fatalf("exclusive Listen beside a dead instance of another host: %v", err)
	}
	defer first.Close()
	if _, err := notnets.Listen(listenName, notnets.WithPool(dir), notnets.WithExclusive()); !errors.Is(err, notnets.ErrInstanceExists) {
		t.Errorf("exclusive Listen beside a live instance of a cross-host pool = %v, want ErrInstanceExists", err)
	}
}
