package notnets_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
	"github.com/notnets/notnets/internal/pool"
)

// bigLimit is the message size limit of a server started with
// NOTNETS_TEST_BIG, and of clients that talk to it: above the largest
// message the tests send (64 MiB).
const bigLimit = 80 << 20

// The test binary doubles as the server (and, for interop cases, the
// client) process: TestMain dispatches on roleEnv.
const (
	roleEnv    = "NOTNETS_TEST_ROLE"
	caseEnv    = "NOTNETS_TEST_CASE"
	listenName = "test"
	// semantics is the test service: grpc.testing.TestService's messages
	// under another name, with handlers that report what the server saw.
	semanticsService = "notnets.test.Semantics"
)

func TestMain(m *testing.M) {
	if name := os.Getenv(hostEnv); name != "" && os.Getenv(roleEnv) != "" {
		// A child started as another host (startAsHost): its namespaces
		// first, then its role.
		if err := becomeHost(name); err != nil {
			fmt.Println("nohost", strings.ReplaceAll(err.Error(), "\n", " "))
			os.Exit(3)
		}
	}
	switch os.Getenv(roleEnv) {
	case "server":
		runServer()
		os.Exit(0)
	case "interop-client":
		os.Exit(runInteropCase(os.Getenv(caseEnv)))
	case "dropin-interop-client":
		os.Exit(runDropInInteropCase(os.Getenv(caseEnv)))
	case "blocking-client":
		runBlockingClient()
		os.Exit(0)
	case "call-client":
		runCallClient()
		os.Exit(0)
	case "sock-squatter":
		runSockSquatter()
		os.Exit(0)
	case "filler":
		runFiller()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testPool makes a pool directory of the test's own on tmpfs: a
// cross-host pool when the suite runs as separate hosts (hostsEnv), or
// with a coherence other than the hardware's (coherenceEnv).
func testPool(t testing.TB) string {
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "notnets-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if c, ok := testCoherence(t); ok {
		if err := pool.PrepareCoherence(dir, pool.OwnerOnly, c); err != nil {
			t.Fatal(err)
		}
	} else if asHosts() {
		if err := pool.PrepareCrossHost(dir, pool.OwnerOnly); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// serverProc is a test server running in a child process.
type serverProc struct {
	pool    string
	tcpAddr string // grpc-go's Greeter over TCP loopback
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	out     *bufio.Reader
}

// startServer starts the test server in a child process with a pool of its
// own, and waits until it listens.
func startServer(t testing.TB, env ...string) *serverProc {
	t.Helper()
	return startServerIn(t, testPool(t), env...)
}

// startServerIn starts the test server in a child process on the pool dir.
func startServerIn(t testing.TB, dir string, env ...string) *serverProc {
	t.Helper()
	return startServerCmd(t, dir, exec.Command(os.Args[0], "-test.run=^$"), env...)
}

// startServerCmd starts the test server with cmd (the test binary, maybe
// as another user) on the pool dir.
//
// When the suite runs as separate hosts (hostsEnv), a server started with
// the test binary itself runs as another host (startAsHost).
func startServerCmd(t testing.TB, dir string, cmd *exec.Cmd, env ...string) *serverProc {
	t.Helper()
	if asHosts() && cmd.Path == os.Args[0] && cmd.SysProcAttr == nil {
		asHost(t, cmd, fmt.Sprintf("server-%d", hostSeq.Add(1)))
	}
	p := &serverProc{pool: dir, cmd: cmd}
	base := cmd.Env
	if base == nil {
		base = os.Environ()
	}
	p.cmd.Env = append(append(base, roleEnv+"=server", "NOTNETS_POOL="+p.pool), env...)
	p.cmd.Stderr = os.Stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		if isHost(p.cmd) {
			t.Skipf("cannot start a process in namespaces of its own (as another host): %v", err)
		}
		t.Fatal(err)
	}
	p.out = bufio.NewReader(stdout)
	t.Cleanup(p.shutdown)
	line, err := p.out.ReadString('\n')
	if why, ok := strings.CutPrefix(strings.TrimSpace(line), "nohost "); ok {
		t.Skipf("the server process cannot set up its namespaces as another host: %s", why)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if err != nil || !ok {
		t.Fatalf("server process did not start: %q, %v", line, err)
	}
	p.tcpAddr = addr
	return p
}

// command sends a line to the server process and returns its answer line.
func (p *serverProc) command(t testing.TB, cmd string) string {
	t.Helper()
	if _, err := fmt.Fprintln(p.stdin, cmd); err != nil {
		t.Fatalf("send %q to server: %v", cmd, err)
	}
	line, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("server answer to %q: %v", cmd, err)
	}
	return strings.TrimSuffix(line, "\n")
}

func (p *serverProc) shutdown() {
	p.stdin.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// state asks the server process for its connections' state and the
// stacks of its goroutines that run notnets code, in one line.
// It may be called from any goroutine.
func (p *serverProc) state() string {
	if _, err := fmt.Fprintln(p.stdin, "state"); err != nil {
		return err.Error()
	}
	line, err := p.out.ReadString('\n')
	if err != nil {
		return err.Error()
	}
	return strings.TrimSuffix(line, "\n")
}

// compactStacks summarizes the goroutines that run notnets code, one line
// each: its state and the functions on its stack, innermost first. A
// stalled test puts this in its failure message, which CI shows whole where
// a full dump would be cut.
func compactStacks() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(g, "\n")
		if !strings.Contains(g, "notnets") || strings.Contains(g, "compactStacks") {
			continue
		}
		head := strings.TrimSuffix(strings.TrimPrefix(lines[0], "goroutine "), ":")
		var fns []string
		for _, l := range lines[1:] {
			if l == "" || strings.HasPrefix(l, "\t") || strings.HasPrefix(l, "created by") {
				continue
			}
			fn := l[:max(strings.LastIndex(l, "("), 0)]
			fn = strings.TrimPrefix(fn, "github.com/notnets/notnets.")
			if i := strings.LastIndex(fn, "/"); i >= 0 {
				fn = fn[i+1:]
			}
			if len(fns) < 8 {
				fns = append(fns, fn)
			}
		}
		out = append(out, head+" "+strings.Join(fns, "<"))
	}
	return strings.Join(out, " || ")
}

// dial connects to the server process's listener.
func (p *serverProc) dial(t testing.TB, opts ...notnets.DialOption) *notnets.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base := []notnets.DialOption{notnets.WithPool(p.pool)}
	for _, o := range idleFromEnv() {
		base = append(base, o)
	}
	cc, err := notnets.Dial(ctx, listenName, append(base, opts...)...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// runSockSquatter binds a Unix socket at $NOTNETS_TEST_SOCK, as another
// process could where a listener's socket was, prints "ready", and takes
// connections until its standard input closes.
func runSockSquatter() {
	ln, err := net.Listen("unix", os.Getenv("NOTNETS_TEST_SOCK"))
	if err != nil {
		fmt.Println("error", err)
		return
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	ln.Close()
}

// runCallClient dials the listener $NOTNETS_TEST_NAME in $NOTNETS_POOL
// (with the pool group $NOTNETS_TEST_GROUP, if set), calls SayHello once,
// and prints one line: "ok <reply>", or "dial|call <code> <message>".
func runCallClient() {
	opts := []notnets.DialOption{notnets.WithPool(os.Getenv("NOTNETS_POOL"))}
	if g := os.Getenv("NOTNETS_TEST_GROUP"); g != "" {
		opts = append(opts, notnets.WithPoolGroup(g))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := notnets.Dial(ctx, os.Getenv("NOTNETS_TEST_NAME"), opts...)
	if err != nil {
		fmt.Printf("dial %s %s\n", status.Code(err), strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	defer cc.Close()
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "x"})
	if err != nil {
		fmt.Printf("call %s %s\n", status.Code(err), strings.ReplaceAll(status.Convert(err).Message(), "\n", " "))
		return
	}
	fmt.Printf("ok %s\n", r.GetMessage())
}

// runServer is the server process: it serves Greeter, the interop
// TestService and the semantics service on one listener, answers commands
// on stdin, and exits when stdin closes.
func runServer() {
	if path := os.Getenv("NOTNETS_TEST_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if path := os.Getenv("NOTNETS_TEST_MEMPROFILE"); path != "" {
		runtime.MemProfileRate = 1
		defer func() {
			// The allocs profile counts allocations as of the last
			// collection: without one here, it misses the calls since.
			runtime.GC()
			if f, err := os.Create(path); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	var lopts []notnets.ListenOption
	if os.Getenv("NOTNETS_TEST_POLLONLY") != "" {
		lopts = append(lopts, notnets.WithPollOnly()) // poll-only waiting
	}
	if os.Getenv(crossHostEnv) != "" {
		lopts = append(lopts, notnets.WithCrossHost()) // makes the pool cross-host, or asserts it is
	}
	if g := os.Getenv("NOTNETS_TEST_GROUP"); g != "" {
		lopts = append(lopts, notnets.WithPoolGroup(g))
	}
	if c, ok := testCoherence(nil); ok && os.Getenv("NOTNETS_TEST_GROUP") == "" {
		// A pool this server makes (one a test names before it exists)
		// is of the suite's coherence too; an existing pool is kept.
		if err := pool.PrepareCoherence(os.Getenv("NOTNETS_POOL"), pool.OwnerOnly, c); err != nil && !errors.Is(err, pool.ErrPoolInUse) {
			fmt.Println("error", err)
			return
		}
	}
	lis, err := notnets.Listen(listenName, lopts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(2)
	}
	opts := []notnets.ServerOption{
		notnets.ChainUnaryInterceptor(unaryTag("s1"), unaryTag("s2")),
		notnets.ChainStreamInterceptor(streamTag("s1"), streamTag("s2")),
	}
	if os.Getenv("NOTNETS_TEST_POLLONLY") != "" {
		opts = append(opts, notnets.WithPollOnly())
	}
	if os.Getenv("NOTNETS_TEST_BIG") != "" {
		opts = append(opts, notnets.MaxRecvMsgSize(bigLimit), notnets.MaxSendMsgSize(bigLimit), bigLiveness)
	}
	if d, err := time.ParseDuration(os.Getenv(livenessEnv)); err == nil {
		opts = append(opts, notnets.WithLivenessTimeout(d))
	}
	if n, err := strconv.Atoi(os.Getenv("NOTNETS_TEST_MAXSTREAMS")); err == nil {
		opts = append(opts, notnets.MaxConcurrentStreams(uint32(n)))
	}
	if n, err := strconv.Atoi(os.Getenv("NOTNETS_TEST_MAXCONNS")); err == nil {
		opts = append(opts, notnets.MaxConnections(n))
	}
	if n, err := strconv.Atoi(os.Getenv("NOTNETS_TEST_MAXHEADER")); err == nil {
		opts = append(opts, notnets.MaxHeaderListSize(uint32(n)))
	}
	for _, o := range idleFromEnv() {
		opts = append(opts, o)
	}
	if os.Getenv("NOTNETS_TEST_STATS") != "" {
		opts = append(opts, notnets.StatsHandler(serverStats))
	}
	grpcFile := os.Getenv(grpcAddrFileEnv)
	if grpcFile != "" && os.Getenv(grpcTLSEnv) != "" {
		opts = append(opts, notnets.WithGRPCServerOptions(grpc.Creds(selfSignedTLS(grpcFile+".pem"))))
	}
	srv := notnets.NewServer(opts...)
	srv.RegisterService(&benchsvc.RawServiceDesc, struct{}{})
	pb.RegisterGreeterServer(srv, greeter{})
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	desc := testgrpc.TestService_ServiceDesc
	desc.ServiceName = semanticsService
	srv.RegisterService(&desc, newSemantics())
	// The standard services users add to every server.
	reflection.Register(srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	if grpcFile != "" {
		serveGRPCOnLoopback(srv, grpcFile) // before "ready": the parent reads the file then
	}
	if os.Getenv(dropInEnv) != "" {
		// A grpc.Server on ListenConn, an instance of the same name
		// (dropin_test.go); listening before "ready".
		defer serveDropIn(lopts)()
	}
	// grpc-go over TCP loopback, for benchmarks that compare.
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(2)
	}
	var gopts []grpc.ServerOption
	if os.Getenv(grpcSemanticsEnv) != "" {
		gopts = append(gopts, grpc.ChainUnaryInterceptor(unaryTag("s1"), unaryTag("s2")),
			grpc.ChainStreamInterceptor(streamTag("s1"), streamTag("s2")))
	}
	gsrv := grpc.NewServer(gopts...)
	pb.RegisterGreeterServer(gsrv, greeter{})
	if os.Getenv(grpcSemanticsEnv) != "" {
		gdesc := testgrpc.TestService_ServiceDesc
		gdesc.ServiceName = semanticsService
		gsrv.RegisterService(&gdesc, newSemantics())
		healthpb.RegisterHealthServer(gsrv, health.NewServer())
	}
	go gsrv.Serve(tcp)
	defer gsrv.Stop()
	fmt.Println("ready", tcp.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if n, ok := strings.CutPrefix(in.Text(), "stats "); ok {
			// The events since the last "stats", once n calls have ended.
			ends, _ := strconv.Atoi(n)
			fmt.Println(serverStats.take(ends))
			continue
		}
		switch in.Text() {
		case "stop":
			srv.Stop()
			fmt.Println("stopped", <-served)
		case "graceful":
			srv.GracefulStop()
			fmt.Println("stopped", <-served)
		case "state":
			// One line: the test reads answers a line at a time.
			fmt.Println(notnets.ServerState(srv), "|", compactStacks())
		case "heap":
			// Bytes of live heap objects after a collection, and the
			// streams open on every connection.
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Println(ms.HeapAlloc, notnets.OpenStreams(srv))
		case "threads":
			// OS threads, goroutines and open connections.
			threads, waits, hubs := procThreads()
			fmt.Println(threads, waits, hubs, runtime.NumGoroutine(), srv.ConnCount())
		case "served":
			fmt.Println(workServed.Load())
		case "health-serving", "health-not-serving":
			// The overall health ("") the health service reports.
			st := healthpb.HealthCheckResponse_SERVING
			if in.Text() == "health-not-serving" {
				st = healthpb.HealthCheckResponse_NOT_SERVING
			}
			hs.SetServingStatus("", st)
			fmt.Println("ok")
		case "services":
			var names []string
			for name := range srv.GetServiceInfo() {
				names = append(names, name)
			}
			fmt.Println(len(names))
		default:
			fmt.Println("unknown command")
		}
	}
	srv.Stop()
}

type greeter struct{ pb.UnimplementedGreeterServer }

func (greeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// unaryTag and streamTag are server interceptors that add their name to the
// "x-interceptors" trailer, so the client can check the chain's order.
func unaryTag(name string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		grpc.SetTrailer(ctx, metadata.Pairs("x-interceptors", name))
		return h(ctx, req)
	}
}

func streamTag(name string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ss.SetTrailer(metadata.Pairs("x-interceptors", name))
		return h(srv, ss)
	}
}

// semantics implements the test service. Each call's behaviour is chosen by
// the "x-mode" request metadata; calls are identified by "x-id".
type semantics struct {
	testgrpc.UnimplementedTestServiceServer
	mu      sync.Mutex
	started map[string]chan struct{} // closed when a blocking call starts
	ended   map[string]chan string   // receives how its context ended
}

func newSemantics() *semantics {
	return &semantics{started: map[string]chan struct{}{}, ended: map[string]chan string{}}
}

func (s *semantics) chans(id string) (chan struct{}, chan string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started[id] == nil {
		s.started[id] = make(chan struct{})
		s.ended[id] = make(chan string, 1)
	}
	return s.started[id], s.ended[id]
}

func mdValue(ctx context.Context, key string) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// workServed counts the "work" calls this server process has answered.
var workServed atomic.Int64

// work waits for the duration d (a time.ParseDuration string), times
// $NOTNETS_TEST_SLOWDOWN if set, without using the CPU (as a handler that
// calls another service does), counts the call, and answers with this
// process's pid.
func work(ctx context.Context, d string) (*testpb.SimpleResponse, error) {
	wait, err := time.ParseDuration(d)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "work %q: %v", d, err)
	}
	if k, err := strconv.Atoi(os.Getenv("NOTNETS_TEST_SLOWDOWN")); err == nil {
		wait *= time.Duration(k)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	workServed.Add(1)
	return body(strconv.Itoa(os.Getpid())), nil
}

func body(s string) *testpb.SimpleResponse {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(s)}}
}

// block waits for the call's context to end and reports how, and after how
// long, to a later "report" call.
func (s *semantics) block(ctx context.Context) error {
	started, ended := s.chans(mdValue(ctx, "x-id"))
	t0 := time.Now()
	close(started)
	<-ctx.Done()
	ended <- fmt.Sprintf("%v after %v", ctx.Err(), time.Since(t0).Round(time.Millisecond))
	return ctx.Err()
}

func (s *semantics) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	switch mdValue(ctx, "x-mode") {
	case "echo":
		if want := mdValue(ctx, "x-len"); want != "" && want != fmt.Sprint(len(in.GetPayload().GetBody())) {
			return nil, status.Errorf(codes.DataLoss, "request payload of %d bytes, the client sent %s", len(in.GetPayload().GetBody()), want)
		}
		md, _ := metadata.FromIncomingContext(ctx)
		hdr, trl := metadata.MD{}, metadata.MD{}
		for k, v := range md {
			if strings.HasPrefix(k, "x-echo-") {
				hdr[k] = v
				trl[k] = v
			}
		}
		// SetHeader's keys go out with SendHeader's.
		if err := grpc.SetHeader(ctx, hdr); err != nil {
			return nil, err
		}
		if err := grpc.SendHeader(ctx, metadata.Pairs("x-sent", "yes")); err != nil {
			return nil, err
		}
		trl.Set("x-reply-len", fmt.Sprint(len(in.GetPayload().GetBody())))
		grpc.SetTrailer(ctx, trl)
		return &testpb.SimpleResponse{Payload: in.GetPayload()}, nil
	case "big-header":
		grpc.SetHeader(ctx, metadata.Pairs("x-big", strings.Repeat("h", int(in.GetResponseSize()))))
		return &testpb.SimpleResponse{}, nil
	case "big-trailer":
		grpc.SetTrailer(ctx, metadata.Pairs("x-big", strings.Repeat("t", int(in.GetResponseSize()))))
		return &testpb.SimpleResponse{}, nil
	case "size":
		return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
	case "compressors", "big-md", "send-header-error":
		return serverBitsMode(ctx, mdValue(ctx, "x-mode"), in) // serverbits_test.go
	case "details":
		st, err := status.New(codes.FailedPrecondition, "with details").WithDetails(protoadapt.MessageV1Of(in))
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	case "error":
		return nil, fmt.Errorf("a plain error")
	case "deadline":
		dl, ok := ctx.Deadline()
		if !ok {
			return body("none"), nil
		}
		return body(time.Until(dl).String()), nil
	case "peer":
		p, _ := peer.FromContext(ctx)
		m, _ := grpc.Method(ctx)
		return body(fmt.Sprintf("%v %v", p.Addr, m)), nil
	case "auth":
		p, _ := peer.FromContext(ctx)
		a, ok := p.AuthInfo.(notnets.AuthInfo)
		if !ok {
			return nil, status.Errorf(codes.Internal, "AuthInfo is %T", p.AuthInfo)
		}
		return body(fmt.Sprintf("%d %d %d %v", a.UID, a.GID, a.PID, a.PIDVerified)), nil
	case "work":
		return work(ctx, mdValue(ctx, "x-id"))
	case "whoami":
		return whoami()
	case "block":
		return nil, s.block(ctx)
	case "started":
		started, _ := s.chans(mdValue(ctx, "x-id"))
		select {
		case <-started:
			return body("started"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case "report":
		_, ended := s.chans(mdValue(ctx, "x-id"))
		select {
		case r := <-ended:
			return body(r), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, status.Errorf(codes.InvalidArgument, "unknown x-mode %q", mdValue(ctx, "x-mode"))
}

// StreamingOutputCall sends one response per parameter, then blocks in
// "block" mode.
func (s *semantics) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	if err := stream.SendHeader(metadata.Pairs("x-stream", "header")); err != nil {
		return err
	}
	for _, p := range in.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	if mdValue(stream.Context(), "x-mode") == "block" {
		return s.block(stream.Context())
	}
	stream.SetTrailer(metadata.Pairs("x-stream", "trailer"))
	return nil
}

// FullDuplexCall echoes every request's payload until the client closes.
func (s *semantics) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}

// StreamingInputCall sums the payload sizes it receives.
func (s *semantics) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	if mdValue(stream.Context(), "x-mode") == "block" {
		return s.block(stream.Context()) // never reads: the client's sends fill the window
	}
	total := 0
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(in.GetPayload().GetBody())
	}
}

// renamed points a generated TestService client at the semantics service.
type renamed struct{ cc grpc.ClientConnInterface }

func (r renamed) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return r.cc.Invoke(ctx, rename(method), args, reply, opts...)
}

func (r renamed) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return r.cc.NewStream(ctx, desc, rename(method), opts...)
}

func rename(method string) string {
	return strings.Replace(method, "/grpc.testing.TestService/", "/"+semanticsService+"/", 1)
}

func semanticsClient(cc grpc.ClientConnInterface) testgrpc.TestServiceClient {
	return testgrpc.NewTestServiceClient(renamed{cc})
}

// withMode returns ctx carrying the x-mode and x-id request metadata.
func withMode(ctx context.Context, mode, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-mode", mode, "x-id", id)
}

// taggedCodec is protobuf with a leading marker byte, registered under its
// own name in both processes: a call that succeeds with it proves both
// sides used the codec the client asked for.
type taggedCodec struct{}

func (taggedCodec) Name() string { return "tagged" }

func (taggedCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(append([]byte{0xEE}, b...))}, nil
}

func (taggedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b := data.Materialize()
	if len(b) == 0 || b[0] != 0xEE {
		return fmt.Errorf("tagged codec: message without the marker byte")
	}
	return proto.Unmarshal(b[1:], v.(proto.Message))
}

func init() { encoding.RegisterCodecV2(taggedCodec{}) }

// bigLiveness is the liveness timeout of tests that move 64 MiB messages.
// Under the race detector a 64 MiB copy is checked in one runtime call
// that the Go scheduler cannot preempt, so a process's heartbeat can stand
// still for seconds (TestArenaProtobuf failed with "no heartbeat for 2s"
// under -race on the 2-core development machine, before and after the
// transport moved).
var bigLiveness = notnets.WithLivenessTimeout(map[bool]time.Duration{true: 60 * time.Second, false: notnets.DefaultLivenessTimeout}[raceEnabled])

// The server process also serves its services as gRPC over HTTP/2
// (Server.ServeGRPC) on a loopback port when grpcAddrFileEnv names a file:
// it writes the address there before it reports ready. With grpcTLSEnv
// set as well it serves TLS, with a certificate of its own for 127.0.0.1
// whose PEM it writes to the file's name with ".pem" added.
const (
	grpcAddrFileEnv = "NOTNETS_TEST_GRPC_ADDR_FILE"
	grpcTLSEnv      = "NOTNETS_TEST_GRPC_TLS"
)

// grpcSemanticsEnv makes the server process's plain grpc-go server on TCP
// loopback (serverProc.tcpAddr) serve the semantics service and health
// too, with the same chained interceptors as the notnets server, so that
// the answers over it match answerChecks.
const grpcSemanticsEnv = "NOTNETS_TEST_GRPC_SEMANTICS"

// grpcEnv returns the environment setting that makes a server process
// serve gRPC over HTTP/2 too, with an address file in a directory of t's.
func grpcEnv(t testing.TB) string {
	return grpcAddrFileEnv + "=" + filepath.Join(t.TempDir(), "grpc-addr")
}

// serveGRPCOnLoopback listens on a loopback port, serves srv there with
// ServeGRPC, and writes the address to path.
func serveGRPCOnLoopback(srv *notnets.Server, path string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "server: listen for ServeGRPC:", err)
		os.Exit(2)
	}
	go func() {
		if err := srv.ServeGRPC(ln); err != nil {
			fmt.Fprintln(os.Stderr, "server: ServeGRPC:", err)
		}
	}()
	if err := writeFileAtomic(path, []byte(ln.Addr().String())); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(2)
	}
}

// selfSignedTLS makes a key and a self-signed certificate for 127.0.0.1
// in memory, writes the certificate as PEM to pemPath, and returns the
// server's TLS credentials.
func selfSignedTLS(pemPath string) credentials.TransportCredentials {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server: TLS key:", err)
		os.Exit(2)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "notnets test server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server: TLS certificate:", err)
		os.Exit(2)
	}
	if err := writeFileAtomic(pemPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(2)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})
}

// writeFileAtomic writes data to a temporary file and renames it to path,
// so that a reader never sees part of it.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}

// grpcFile returns the address file of a server process started with
// grpcEnv.
func (p *serverProc) grpcFile(t testing.TB) string {
	t.Helper()
	var path string
	for _, kv := range p.cmd.Env {
		if v, ok := strings.CutPrefix(kv, grpcAddrFileEnv+"="); ok {
			path = v // the last setting wins, as for the process
		}
	}
	if path == "" {
		t.Fatalf("the server process was started without %s (grpcEnv)", grpcAddrFileEnv)
	}
	return path
}

// grpcAddr returns the loopback address where the server process serves
// gRPC over HTTP/2.
func (p *serverProc) grpcAddr(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(p.grpcFile(t))
	if err != nil {
		t.Fatalf("the server process's gRPC address: %v", err)
	}
	return string(b)
}

// grpcCertPool returns a pool that trusts the certificate of a server
// process started with grpcTLSEnv.
func (p *serverProc) grpcCertPool(t testing.TB) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(p.grpcFile(t) + ".pem")
	if err != nil {
		t.Fatalf("the server process's TLS certificate: %v", err)
	}
	certs := x509.NewCertPool()
	if !certs.AppendCertsFromPEM(b) {
		t.Fatalf("no certificate in the server process's PEM %q", b)
	}
	return certs
}
