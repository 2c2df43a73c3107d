package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
)

// grpcurl is built once per run of the test binary, into a directory
// that TestMain removes (removeGrpcurl): from the tool dependency in
// go.mod (go get -tool), so the version is the module's, and from the
// build cache after the first time.
var grpcurl struct {
	once      sync.Once
	dir, path string
	err       error
}

// grpcurlPath returns the path of the grpcurl command, building it first.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	grpcurl.once.Do(func() {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		if grpcurl.dir, grpcurl.err = os.MkdirTemp("", "notnets-grpcurl-"); grpcurl.err != nil {
			return
		}
		grpcurl.path = filepath.Join(grpcurl.dir, "grpcurl")
		out, err := exec.Command(goCmd, "build", "-o", grpcurl.path, "github.com/fullstorydev/grpcurl/cmd/grpcurl").CombinedOutput()
		if err != nil {
			grpcurl.err = fmt.Errorf("go build grpcurl (the tool in go.mod): %v\n%s", err, out)
		}
	})
	if grpcurl.err != nil {
		t.Fatal(grpcurl.err)
	}
	return grpcurl.path
}

// removeGrpcurl removes the grpcurl built by grpcurlPath, if any.
func removeGrpcurl() {
	if grpcurl.dir != "" {
		os.RemoveAll(grpcurl.dir)
	}
}

// bridgeTestServer serves Greeter, server reflection and health as the
// pool service "greeter" in the pool dir, says "ready", and serves until
// its standard input closes: a notnets service in a process of its own.
func bridgeTestServer(dir string) {
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		fmt.Println("error", err)
		return
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, benchsvc.Greeter{})
	reflection.Register(srv)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// child is a process of the test binary, run as a command.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	first string // its first line of output
}

// startChild runs the test binary with args and waits for its first line
// on standard output, which says it is ready. It is killed at cleanup if
// it has not exited by then.
func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(os.Args[0], args...)}
	c.cmd.Stderr = os.Stderr
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stdin.Close()
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("%v: no first line: %v", args, err)
	}
	c.first = strings.TrimSpace(line)
	return c
}

// runGrpcurl runs grpcurl with args and returns its standard output; it
// fails the test if grpcurl fails.
func runGrpcurl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(grpcurlPath(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("grpcurl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// TestBridgeGrpcurl runs the grpcurl command line against a notnets
// service in another process, through the notnets bridge command in a
// third: over a Unix socket it lists the services (server reflection
// through the bridge), describes Greeter, calls SayHello with a JSON
// request and asks the health service; over a loopback TCP port it calls
// SayHello again. The bridge stops on SIGTERM, exits 0 and removes its
// socket.
func TestBridgeGrpcurl(t *testing.T) {
	grpcurlPath(t) // first: it may take minutes to build on a cold cache
	dir := t.TempDir()
	if s := startChild(t, "bridge-test-server", dir); s.first != "ready" {
		t.Fatalf("server process: %q", s.first)
	}
	sock := filepath.Join(t.TempDir(), "greeter.sock")
	bridge := startChild(t, "bridge", "-pool", dir, "-listen", "unix:"+sock, "-to", "greeter")
	if !strings.HasPrefix(bridge.first, "notnets bridge: serving unix:"+sock) {
		t.Fatalf("bridge: %q", bridge.first)
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("the bridge's socket: %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}

	list := runGrpcurl(t, "-plaintext", "-unix", sock, "list")
	for _, want := range []string{"helloworld.Greeter", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !strings.Contains(list, want+"\n") {
			t.Errorf("grpcurl list through the bridge does not list %s:\n%s", want, list)
		}
	}
	if got := runGrpcurl(t, "-plaintext", "-unix", sock, "describe", "helloworld.Greeter"); !strings.Contains(got, "rpc SayHello ( .helloworld.HelloRequest ) returns ( .helloworld.HelloReply )") {
		t.Errorf("grpcurl describe helloworld.Greeter through the bridge:\n%s", got)
	}
	if got := runGrpcurl(t, "-plaintext", "-unix", "-d", `{"name": "grpcurl"}`, sock, "helloworld.Greeter/SayHello"); !strings.Contains(got, `"message": "Hello grpcurl"`) {
		t.Errorf("grpcurl helloworld.Greeter/SayHello through the bridge:\n%s", got)
	}
	if got := runGrpcurl(t, "-plaintext", "-unix", sock, "grpc.health.v1.Health/Check"); !strings.Contains(got, `"status": "SERVING"`) {
		t.Errorf("grpcurl grpc.health.v1.Health/Check through the bridge:\n%s", got)
	}

	tcp := startChild(t, "bridge", "-pool", dir, "-listen", "127.0.0.1:0", "-to", "greeter")
	addr, ok := strings.CutPrefix(tcp.first, "notnets bridge: serving ")
	addr, _, _ = strings.Cut(addr, ": ")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("bridge on TCP: %q", tcp.first)
	}
	if got := runGrpcurl(t, "-plaintext", "-d", `{"name": "tcp"}`, addr, "helloworld.Greeter/SayHello"); !strings.Contains(got, `"message": "Hello tcp"`) {
		t.Errorf("grpcurl SayHello through the bridge on %s:\n%s", addr, got)
	}

	if err := bridge.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := bridge.cmd.Wait(); err != nil {
		t.Errorf("the bridge after SIGTERM: %v, want exit status 0", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the bridge's socket after it stopped: %v, want it removed", err)
	}
}

// TestBridgeReverseCommand puts a grpc-go server of this process (TCP
// loopback) in a pool with notnets bridge -reverse, run in another
// process, and calls it with a notnets client.
func TestBridgeReverseCommand(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterGreeterServer(gs, benchsvc.Greeter{})
	go gs.Serve(tcp)
	defer gs.Stop()
	dir := t.TempDir()
	rev := startChild(t, "bridge", "-reverse", "-pool", dir, "-target", tcp.Addr().String(), "-as", "net-greeter")
	if !strings.Contains(rev.first, "as service net-greeter") {
		t.Fatalf("bridge -reverse: %q", rev.first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := notnets.Dial(ctx, "net-greeter", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "pool"})
	if err != nil || r.GetMessage() != "Hello pool" {
		t.Fatalf("SayHello of the network server through the pool: %q, %v", r.GetMessage(), err)
	}
}

// TestParseBridgeFlags: the forms the command takes, and the mistakes it
// refuses with a reason.
func TestParseBridgeFlags(t *testing.T) {
	c, err := parseBridgeFlags([]string{"-listen", "unix:/x.sock", "-to", "greeter", "-route", "a.B=b", "-route", "c.D=d", "-mode", "0660"}, io.Discard)
	if err != nil || c.to != "greeter" || c.routes.String() != "a.B=b,c.D=d" || c.mode != 0o660 {
		t.Errorf("parse: %+v, %v", c, err)
	}
	c, err = parseBridgeFlags([]string{"-reverse", "-target", "dns:///x:1", "-as", "x", "-ca", "ca.pem"}, io.Discard)
	if err != nil || !c.reverse || !c.tls {
		t.Errorf("parse -reverse with -ca: %+v, %v (want -tls implied)", c, err)
	}
	for _, bad := range [][]string{
		{"-to", "greeter"},          // no -listen
		{"-listen", "unix:/x.sock"}, // no service
		{"-listen", "x", "-to", "a", "-route", "nosep"},
		{"-listen", "x", "-to", "a", "-route", "a.B=b", "-route", "a.B=c"},
		{"-listen", "x", "-to", "a", "-mode", "rw"},
		{"-listen", "x", "-to", "a", "-as", "b"},
		{"-reverse", "-target", "x:1"}, // no -as
		{"-reverse", "-target", "x:1", "-as", "x", "-to", "y"},
		{"-listen", "x", "-to", "a", "extra"},
	} {
		if _, err := parseBridgeFlags(bad, io.Discard); err == nil {
			t.Errorf("parseBridgeFlags(%q) succeeded, want an error", bad)
		}
	}
}

// TestListenBridge: a loopback TCP address is taken and any other
// refused (before anything listens); a Unix socket is made 0600 (or
// -mode); a stale socket is replaced, a live one or another file is not.
func TestListenBridge(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "tcp::0", "example.com:80", "nohostport"} {
		if lis, _, err := listenBridge(addr, 0o600); err == nil {
			lis.Close()
			t.Errorf("listenBridge(%q) listened, want it refused", addr)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "tcp:localhost:0"} {
		lis, where, err := listenBridge(addr, 0o600)
		if err != nil {
			t.Errorf("listenBridge(%q): %v", addr, err)
			continue
		}
		lis.Close()
		if !strings.HasPrefix(where, "127.0.0.1:") && !strings.HasPrefix(where, "[::1]:") {
			t.Errorf("listenBridge(%q) says it serves %q", addr, where)
		}
	}

	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody listens on: a bridge that died
	lis, where, err := listenBridge("unix://"+stale, 0o660)
	if err != nil {
		t.Fatalf("listenBridge over a stale socket: %v", err)
	}
	defer lis.Close()
	if fi, err := os.Lstat(stale); err != nil || fi.Mode().Perm() != 0o660 || where != "unix:"+stale {
		t.Errorf("the socket: %v, %v, %q; want mode 0660 at unix:%s", fi.Mode(), err, where, stale)
	}
	if _, _, err := listenBridge(stale, 0o600); err == nil || !strings.Contains(err.Error(), "another process listens") {
		t.Errorf("listenBridge on a live socket: %v, want it refused", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listenBridge("unix:"+file, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listenBridge on a regular file: %v, want it refused", err)
	}
}
