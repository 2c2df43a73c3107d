package notnets_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// grpcClient connects a grpc-go client to addr over HTTP/2.
func grpcClient(t testing.TB, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("grpc.NewClient(%q): %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// testCtx returns a context that ends with the test, or after a minute.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestServeGRPCSameAnswers makes every kind of call to the server process
// over the pool and over HTTP/2 (ServeGRPC): the answers, the metadata
// and the server's chained interceptors (which tag the trailer) are the
// same on both paths; only the peer's address tells them apart.
func TestServeGRPCSameAnswers(t *testing.T) {
	srv := startServer(t, grpcEnv(t))
	paths := []struct {
		name string
		cc   grpc.ClientConnInterface
	}{
		{"pool", srv.dial(t)},
		{"tcp", grpcClient(t, srv.grpcAddr(t), insecure.NewCredentials())},
	}
	ctx := testCtx(t)
	for _, p := range paths {
		checkAnswers(t, ctx, p.name, p.cc)
	}
	for _, p := range paths {
		addr, err := peerAddr(ctx, p.cc)
		if err != nil {
			t.Fatalf("peer over %s: %v", p.name, err)
		}
		host, _, err := net.SplitHostPort(addr)
		if tcp := err == nil && host == "127.0.0.1"; tcp != (p.name == "tcp") {
			t.Errorf("the handler's peer.Addr over %s is %q; want a TCP address only over tcp", p.name, addr)
		}
	}
}

// answerChecks are calls of every kind to the server process's services
// (Greeter, and the semantics service whose handlers echo what they saw)
// and what they answer over the pool. The "[s1 s2]" in trailers is the
// server's chained interceptors, which tag the trailer in order.
var answerChecks = []struct {
	name string
	run  func(context.Context, grpc.ClientConnInterface) (string, error)
	want string
}{
	{"unary", unaryAnswer, "reply=abc header=[yes] [one two] trailer=[3] [s1 s2]"},
	{"greeter", greeterAnswer, "Hello x"},
	{"server-streaming", serverStreamingAnswer, "header=[header] sizes=[10 20] trailer=[trailer] [s1 s2]"},
	{"client-streaming", clientStreamingAnswer, "sum=6 trailer=[s1 s2]"},
	{"bidi", bidiAnswer, "echoes=[a bb ccc] trailer=[s1 s2]"},
	{"details", detailsAnswer, "FailedPrecondition: with details, 1 detail"},
	{"too-large", tooLargeAnswer, "ResourceExhausted"},
	{"unimplemented", unimplementedAnswer, "Unimplemented"},
}

// checkAnswers runs answerChecks on cc, which reaches the server over path.
func checkAnswers(t *testing.T, ctx context.Context, path string, cc grpc.ClientConnInterface) {
	t.Helper()
	for _, c := range answerChecks {
		got, err := c.run(ctx, cc)
		if err != nil {
			t.Errorf("%s over %s: %v", c.name, path, err)
		} else if got != c.want {
			t.Errorf("%s over %s: %s, want %s (as over the pool)", c.name, path, got, c.want)
		}
	}
}

func unaryAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	ctx = metadata.AppendToOutgoingContext(withMode(ctx, "echo", "u"), "x-echo-text", "one", "x-echo-text", "two")
	var header, trailer metadata.MD
	r, err := semanticsClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("abc")}},
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("reply=%s header=%v %v trailer=%v %v", r.GetPayload().GetBody(),
		header.Get("x-sent"), header.Get("x-echo-text"), trailer.Get("x-reply-len"), trailer.Get("x-interceptors")), nil
}

func greeterAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "x"})
	return r.GetMessage(), err
}

func serverStreamingAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	stream, err := semanticsClient(cc).StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 20}},
	})
	if err != nil {
		return "", err
	}
	header, err := stream.Header()
	if err != nil {
		return "", err
	}
	var sizes []int
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		sizes = append(sizes, len(r.GetPayload().GetBody()))
	}
	tr := stream.Trailer()
	return fmt.Sprintf("header=%v sizes=%v trailer=%v %v", header.Get("x-stream"), sizes, tr.Get("x-stream"), tr.Get("x-interceptors")), nil
}

func clientStreamingAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	stream, err := semanticsClient(cc).StreamingInputCall(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range []int{1, 2, 3} {
		if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, n)}}); err != nil {
			return "", err
		}
	}
	r, err := stream.CloseAndRecv()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("sum=%d trailer=%v", r.GetAggregatedPayloadSize(), stream.Trailer().Get("x-interceptors")), nil
}

func bidiAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	stream, err := semanticsClient(cc).FullDuplexCall(ctx)
	if err != nil {
		return "", err
	}
	var echoes []string
	for _, s := range []string{"a", "bb", "ccc"} {
		r, err := echo(stream, s)
		if err != nil {
			return "", err
		}
		echoes = append(echoes, r)
	}
	if err := endStream(stream); err != nil {
		return "", err
	}
	return fmt.Sprintf("echoes=%v trailer=%v", echoes, stream.Trailer().Get("x-interceptors")), nil
}

// echo sends s on a FullDuplexCall and returns what comes back.
func echo(stream testgrpc.TestService_FullDuplexCallClient, s string) (string, error) {
	if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(s)}}); err != nil {
		return "", fmt.Errorf("send %q: %w", s, err)
	}
	r, err := stream.Recv()
	if err != nil {
		return "", fmt.Errorf("receive the echo of %q: %w", s, err)
	}
	return string(r.GetPayload().GetBody()), nil
}

// endStream closes a FullDuplexCall's sending side and returns nil if
// the call then ends with OK.
func endStream(stream testgrpc.TestService_FullDuplexCallClient) error {
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return fmt.Errorf("Recv after CloseSend = %v, want io.EOF", err)
	}
	return nil
}

func detailsAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	_, err := semanticsClient(cc).UnaryCall(withMode(ctx, "details", "d"), &testpb.SimpleRequest{ResponseSize: 42})
	st := status.Convert(err)
	return fmt.Sprintf("%v: %s, %d detail", st.Code(), st.Message(), len(st.Details())), nil
}

// tooLargeAnswer sends a request above the server's limit (4 MiB).
func tooLargeAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	big := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 5<<20)}}
	_, err := semanticsClient(cc).UnaryCall(withMode(ctx, "echo", "big"), big)
	return status.Code(err).String(), nil
}

func unimplementedAnswer(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	err := cc.Invoke(ctx, "/no.such.Service/Method", &testpb.Empty{}, &testpb.Empty{})
	return status.Code(err).String(), nil
}

// peerAddr returns the caller's address as the handler saw it.
func peerAddr(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	r, err := semanticsClient(cc).UnaryCall(withMode(ctx, "peer", "p"), &testpb.SimpleRequest{})
	if err != nil {
		return "", err
	}
	addr, _, _ := strings.Cut(string(r.GetPayload().GetBody()), " ")
	return addr, nil
}

// TestServeGRPCTLS serves TLS (grpc.Creds in WithGRPCServerOptions): a
// client that trusts the certificate calls, and its handler sees TLS
// state as the peer's AuthInfo; a client without TLS cannot call.
func TestServeGRPCTLS(t *testing.T) {
	srv := startServer(t, grpcEnv(t), grpcTLSEnv+"=1")
	addr, ctx := srv.grpcAddr(t), testCtx(t)
	tlsCC := grpcClient(t, addr, credentials.NewClientTLSFromCert(srv.grpcCertPool(t), ""))
	if got, err := greeterAnswer(ctx, tlsCC); err != nil || got != "Hello x" {
		t.Fatalf("SayHello over TLS = %q, %v; want Hello x", got, err)
	}
	_, err := semanticsClient(tlsCC).UnaryCall(withMode(ctx, "auth", "a"), &testpb.SimpleRequest{})
	if st := status.Convert(err); !strings.Contains(st.Message(), "TLSInfo") {
		t.Errorf("the handler's AuthInfo over TLS: %v; want credentials.TLSInfo", st)
	}
	plain := grpcClient(t, addr, insecure.NewCredentials())
	if _, err := greeterAnswer(ctx, plain); status.Code(err) != codes.Unavailable {
		t.Errorf("SayHello without TLS = %v; want Unavailable", err)
	}
}

// TestServeGRPCGracefulStopDrainsBoth holds a call open over the pool and
// one over HTTP/2 while the server process stops gracefully: both paths
// are told to start no new calls at once (each client leaves READY while
// the other's call is still open), both calls run to the end, and
// GracefulStop returns only after the last.
func TestServeGRPCGracefulStopDrainsBoth(t *testing.T) {
	srv := startServer(t, grpcEnv(t))
	ctx := testCtx(t)
	poolCC := srv.dial(t)
	tcpCC := grpcClient(t, srv.grpcAddr(t), insecure.NewCredentials())
	poolCall := openEcho(t, ctx, poolCC)
	tcpCall := openEcho(t, ctx, tcpCC)

	stopped := make(chan string, 1)
	go func() { // the fixture's command() may not be used off the test's goroutine
		fmt.Fprintln(srv.stdin, "graceful")
		line, err := srv.out.ReadString('\n')
		if err != nil {
			line = "the server process's answer: " + err.Error()
		}
		stopped <- strings.TrimSpace(line)
	}()
	if !tcpCC.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("the HTTP/2 client stayed READY: no GOAWAY while a call over the pool was open")
	}
	if !poolCC.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("the pool client stayed READY: no GOAWAY while a call over HTTP/2 was open")
	}
	for name, call := range map[string]testgrpc.TestService_FullDuplexCallClient{"tcp": tcpCall, "pool": poolCall} {
		if got, err := echo(call, "after GOAWAY"); err != nil || got != "after GOAWAY" {
			t.Fatalf("the call in flight over %s, after GracefulStop began: %q, %v", name, got, err)
		}
	}
	if err := endStream(tcpCall); err != nil {
		t.Fatalf("the call in flight over tcp: %v", err)
	}
	select {
	case s := <-stopped:
		t.Fatalf("GracefulStop returned (%s) while a call over the pool was open", s)
	default:
	}
	if err := endStream(poolCall); err != nil {
		t.Fatalf("the call in flight over the pool: %v", err)
	}
	if s := <-stopped; s != "stopped <nil>" {
		t.Fatalf("GracefulStop: %q, want Serve to return nil", s)
	}
}

// openEcho starts a FullDuplexCall on cc and waits for its first echo, so
// the call is running on the server.
func openEcho(t *testing.T, ctx context.Context, cc grpc.ClientConnInterface) testgrpc.TestService_FullDuplexCallClient {
	t.Helper()
	call, err := semanticsClient(cc).FullDuplexCall(ctx)
	if err != nil {
		t.Fatalf("FullDuplexCall: %v", err)
	}
	if got, err := echo(call, "before"); err != nil || got != "before" {
		t.Fatalf("first echo: %q, %v", got, err)
	}
	return call
}

// serveGRPCInProcess serves srv with ServeGRPC on a loopback port of this
// process and returns a grpc-go client of it and ServeGRPC's result. The
// tests that use it check what needs a server built in the test (options,
// registrations after ServeGRPC, its return value); the server process
// of the other tests has its services and options fixed.
func serveGRPCInProcess(t *testing.T, srv *notnets.Server) (*grpc.ClientConn, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeGRPC(ln) }()
	t.Cleanup(srv.Stop)
	return grpcClient(t, ln.Addr().String(), insecure.NewCredentials()), served
}

// TestServeGRPCAfterStop: ServeGRPC returns nil when Stop ends it, and
// ErrServerStopped at once (closing its listener) after Stop or
// GracefulStop, whether or not it served before.
func TestServeGRPCAfterStop(t *testing.T) {
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	cc, served := serveGRPCInProcess(t, srv)
	if got, err := greeterAnswer(testCtx(t), cc); err != nil {
		t.Fatalf("SayHello before Stop = %q, %v", got, err)
	}
	srv.Stop()
	if err := <-served; err != nil {
		t.Errorf("ServeGRPC ended by Stop returned %v, want nil", err)
	}
	for name, s := range map[string]*notnets.Server{"Stop": srv, "GracefulStop": gracefullyStopped()} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ServeGRPC(ln); err != notnets.ErrServerStopped {
			t.Errorf("ServeGRPC after %s = %v, want ErrServerStopped", name, err)
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept on the listener ServeGRPC refused after %s: %v, want it closed", name, err)
		}
	}
}

// gracefullyStopped returns a server that never served, stopped with
// GracefulStop.
func gracefullyStopped() *notnets.Server {
	srv := notnets.NewServer()
	srv.GracefulStop()
	return srv
}

// TestServeGRPCLateRegistration registers services after ServeGRPC made
// its grpc.Server (which takes no registration once it serves): they are
// served over HTTP/2 too, unary and streaming, with the server's
// interceptors run once each, as for the services registered before.
func TestServeGRPCLateRegistration(t *testing.T) {
	srv := notnets.NewServer(
		notnets.ChainUnaryInterceptor(unaryTag("s1"), unaryTag("s2")),
		notnets.ChainStreamInterceptor(streamTag("s1"), streamTag("s2")),
	)
	pb.RegisterGreeterServer(srv, greeter{})
	cc, _ := serveGRPCInProcess(t, srv)
	ctx := testCtx(t)
	if got, err := greeterAnswer(ctx, cc); err != nil || got != "Hello x" {
		t.Fatalf("SayHello, registered before ServeGRPC = %q, %v", got, err)
	}

	healthpb.RegisterHealthServer(srv, health.NewServer())
	desc := testgrpc.TestService_ServiceDesc
	desc.ServiceName = semanticsService
	srv.RegisterService(&desc, newSemantics())

	r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health Check, registered after ServeGRPC = %v, %v; want SERVING", r, err)
	}
	checkAnswers(t, ctx, "tcp, registered late", cc)
}

// TestServeGRPCRefusesWithAuthorizer: a server that authorizes its
// callers by uid refuses calls over HTTP/2, which carry none, and counts
// them, for unary and streaming calls alike.
func TestServeGRPCRefusesWithAuthorizer(t *testing.T) {
	srv := notnets.NewServer(notnets.AllowUIDs(uint32(os.Geteuid())))
	pb.RegisterGreeterServer(srv, greeter{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	cc, _ := serveGRPCInProcess(t, srv)
	ctx := testCtx(t)
	if _, err := greeterAnswer(ctx, cc); status.Code(err) != codes.PermissionDenied {
		t.Errorf("unary call over HTTP/2 to a server with AllowUIDs = %v, want PermissionDenied", err)
	}
	w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("streaming call over HTTP/2 to a server with AllowUIDs = %v, want PermissionDenied", err)
	}
	if n := srv.RefusedCalls(); n != 2 {
		t.Errorf("RefusedCalls = %d, want 2", n)
	}
}

// TestServeGRPCCarriesServerOptions: the grpc.Server behind ServeGRPC has
// the server's stats handler, message size limits and stream limit.
func TestServeGRPCCarriesServerOptions(t *testing.T) {
	sh := &beginCounter{}
	g := &blockingGreeter{started: make(chan struct{}), release: make(chan struct{})}
	srv := notnets.NewServer(notnets.StatsHandler(sh), notnets.MaxRecvMsgSize(1000),
		notnets.MaxSendMsgSize(1000), notnets.MaxConcurrentStreams(1))
	pb.RegisterGreeterServer(srv, g)
	cc, _ := serveGRPCInProcess(t, srv)
	ctx := testCtx(t)
	c := pb.NewGreeterClient(cc)
	if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "x"}); err != nil {
		t.Fatalf("SayHello: %v", err)
	}
	if got := sh.count(); got != "1 unary" {
		t.Errorf("stats handler saw %s begun, want 1 unary", got)
	}
	for name, req := range map[string]string{"request": strings.Repeat("r", 2000), "reply": "long"} {
		if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: req}); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("SayHello with a %s above 1000 bytes = %v, want ResourceExhausted", name, err)
		}
	}

	done := make(chan error, 1)
	go func() { _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "block"}); done <- err }()
	<-g.started
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := c.SayHello(short, &pb.HelloRequest{Name: "y"}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a second call beside one that blocks, with MaxConcurrentStreams(1) = %v, want DeadlineExceeded waiting for a stream", err)
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Errorf("the blocking call: %v", err)
	}
}

// blockingGreeter answers SayHello; "block" waits for release, "long"
// gets a reply of 2000 bytes.
type blockingGreeter struct {
	pb.UnimplementedGreeterServer
	started, release chan struct{}
}

func (g *blockingGreeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	switch in.GetName() {
	case "block":
		close(g.started)
		<-g.release
	case "long":
		return &pb.HelloReply{Message: strings.Repeat("l", 2000)}, nil
	}
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// beginCounter is a stats handler that counts the calls begun, by kind.
type beginCounter struct {
	mu            sync.Mutex
	unary, stream int
}

func (b *beginCounter) count() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := fmt.Sprintf("%d unary", b.unary)
	if b.stream > 0 {
		s += fmt.Sprintf(", %d streaming", b.stream)
	}
	return s
}

func (b *beginCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if begin, ok := s.(*stats.Begin); ok {
		b.mu.Lock()
		defer b.mu.Unlock()
		if begin.IsClientStream || begin.IsServerStream {
			b.stream++
		} else {
			b.unary++
		}
	}
}

func (b *beginCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (b *beginCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (b *beginCounter) HandleConn(context.Context, stats.ConnStats)                       {}
