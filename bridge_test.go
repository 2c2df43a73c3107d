package notnets_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// rawCodec leaves messages undecoded (*notnets.Bytes): what a proxy's
// server is given with ForceServerCodecV2.
var rawCodec = encoding.GetCodecV2(notnets.BytesCodecName)

// serveProxy serves a notnets server made with opts, which has no service
// registered, on the listener name in a pool of its own, and returns a
// client of it.
func serveProxy(t *testing.T, name string, opts ...notnets.ServerOption) *notnets.ClientConn {
	t.Helper()
	dir := testPool(t)
	lis, err := notnets.Listen(name, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := notnets.NewServer(opts...)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := notnets.Dial(ctx, name, notnets.WithPool(dir))
	if err != nil {
		t.Fatalf("Dial %s: %v", name, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// checkForwarded checks what a call through a proxy or bridge must keep:
// the answers of every kind of call (answerChecks: messages, headers,
// trailers, status details, the size limit, an unknown method), the
// deadline as the server sees it, cancellation of a unary and a server
// streaming call reaching the server's handler, and health.
func checkForwarded(t *testing.T, path string, cc grpc.ClientConnInterface) {
	t.Helper()
	ctx := testCtx(t)
	checkAnswers(t, ctx, path, cc)
	c := semanticsClient(cc)

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	r, err := c.UnaryCall(withMode(dctx, "deadline", "dl"), &testpb.SimpleRequest{})
	cancel()
	if err != nil {
		t.Errorf("deadline over %s: %v", path, err)
	} else if left, err := time.ParseDuration(string(r.GetPayload().GetBody())); err != nil || left <= 3*time.Second || left > 5*time.Second {
		t.Errorf("over %s the server saw %q left of a 5s deadline, want 3s to 5s (%v)", path, r.GetPayload().GetBody(), err)
	}

	// Unary: cancelled once the server's handler runs.
	id := path + "-unary"
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(withMode(cctx, "block", id), &testpb.SimpleRequest{})
		done <- err
	}()
	if _, err := c.UnaryCall(withMode(ctx, "started", id), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("over %s: waiting for the blocking call: %v", path, err)
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Errorf("cancelled unary call over %s = %v, want Canceled", path, err)
	}
	if got := report(t, c, id); !strings.HasPrefix(got, "context canceled") {
		t.Errorf("over %s the server's context ended with %q, want context canceled", path, got)
	}

	// Server streaming: cancelled after its first message.
	id = path + "-stream"
	cctx, cancel = context.WithCancel(ctx)
	defer cancel()
	stream, err := c.StreamingOutputCall(withMode(cctx, "block", id), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("over %s: first message of the blocking stream: %v", path, err)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("Recv after cancel over %s = %v, want Canceled", path, err)
	}
	if got := report(t, c, id); !strings.HasPrefix(got, "context canceled") {
		t.Errorf("over %s the server's stream context ended with %q, want context canceled", path, got)
	}

	hc, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check over %s: %v, %v; want SERVING", path, hc.GetStatus(), err)
	}
	checkLarge(t, ctx, path, c)
}

// checkLarge echoes messages above ArenaThreshold, which cross notnets
// connections as views of a heap: a unary call of 1 MiB, and three
// messages of 100 KiB on one bidirectional stream, each of its own bytes,
// so that a view handed back (Free) while still being forwarded would
// show as wrong bytes (or, with WithViewChecks, a fault).
func checkLarge(t *testing.T, ctx context.Context, path string, c testgrpc.TestServiceClient) {
	t.Helper()
	pattern := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	big := pattern(1<<20, 1)
	ectx := metadata.AppendToOutgoingContext(withMode(ctx, "echo", "large"), "x-len", strconv.Itoa(len(big)))
	r, err := c.UnaryCall(ectx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: big}})
	if err != nil || !bytes.Equal(r.GetPayload().GetBody(), big) {
		t.Errorf("1 MiB echo over %s: %d bytes back, equal %v, %v", path, len(r.GetPayload().GetBody()), bytes.Equal(r.GetPayload().GetBody(), big), err)
	}
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatalf("FullDuplexCall over %s: %v", path, err)
	}
	var sent [][]byte
	for i := range 3 {
		b := pattern(100<<10, byte(10*i))
		sent = append(sent, b)
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: b}}); err != nil {
			t.Fatalf("send 100 KiB #%d over %s: %v", i, path, err)
		}
	}
	stream.CloseSend()
	for i, want := range sent {
		r, err := stream.Recv()
		if err != nil || !bytes.Equal(r.GetPayload().GetBody(), want) {
			t.Fatalf("100 KiB echo #%d over %s: equal %v, %v", i, path, bytes.Equal(r.GetPayload().GetBody(), want), err)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("large bidi over %s ended with %v, want io.EOF", path, err)
	}
}

// streamRecord is what the proxy's stream interceptor saw of a call.
type streamRecord struct {
	method         string // StreamServerInfo.FullMethod
	ctxMethod      string // grpc.Method of the stream's context
	contentType    string // in the incoming metadata
	srvNil, client bool   // srv was nil; IsClientStream
	server         bool   // IsServerStream
}

// TestUnknownServiceHandlerProxy builds a generic proxy on
// UnknownServiceHandler: a notnets server with no service registered,
// the notnets-bytes codec forced, and Forward to a client of the server
// process. Every kind of call to services the proxy does not know goes
// through it, raw, with metadata, deadlines, cancellation, status details
// and trailers; its stream interceptor runs around each call as grpc-go
// runs it (full method, a bidirectional stream, nil srv), and its unary
// interceptor never runs.
func TestUnknownServiceHandlerProxy(t *testing.T) {
	backend := startServer(t)
	var mu sync.Mutex
	var seen []streamRecord
	record := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		m, _ := grpc.Method(ss.Context())
		md, _ := metadata.FromIncomingContext(ss.Context())
		mu.Lock()
		seen = append(seen, streamRecord{info.FullMethod, m, strings.Join(md.Get("content-type"), ","), srv == nil, info.IsClientStream, info.IsServerStream})
		mu.Unlock()
		return h(srv, ss)
	}
	unaryRan := false
	never := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		mu.Lock()
		unaryRan = true
		mu.Unlock()
		return h(ctx, req)
	}
	cc := serveProxy(t, "proxy",
		notnets.UnknownServiceHandler(notnets.Forward(backend.dial(t, notnets.WithViewChecks()))),
		notnets.WithViewChecks(),
		notnets.ForceServerCodecV2(rawCodec),
		notnets.ChainStreamInterceptor(record),
		notnets.ChainUnaryInterceptor(never))
	checkForwarded(t, "proxy", cc)

	// A codec other than protobuf crosses as the caller chose it: the
	// tagged codec's marker byte is checked by the server process.
	ctx := testCtx(t)
	var reply pb.HelloReply
	if err := cc.Invoke(ctx, "/helloworld.Greeter/SayHello", &pb.HelloRequest{Name: "t"}, &reply, grpc.CallContentSubtype("tagged")); err != nil || reply.GetMessage() != "Hello t" {
		t.Errorf("SayHello with the tagged codec through the proxy = %q, %v", reply.GetMessage(), err)
	}

	mu.Lock()
	defer mu.Unlock()
	if unaryRan {
		t.Error("the proxy's unary interceptor ran for a call to its unknown-service handler")
	}
	got := map[string]bool{} // method and content-type
	for _, r := range seen {
		got[r.method+" "+r.contentType] = true
		if r.ctxMethod != r.method || !r.srvNil || !r.client || !r.server {
			t.Errorf("the interceptor saw %+v: want grpc.Method = FullMethod, a nil srv, and a bidirectional stream", r)
		}
	}
	for _, want := range []string{
		"/helloworld.Greeter/SayHello application/grpc",
		"/helloworld.Greeter/SayHello application/grpc+tagged",
		"/" + semanticsService + "/UnaryCall application/grpc",
		"/" + semanticsService + "/StreamingOutputCall application/grpc",
		"/" + semanticsService + "/StreamingInputCall application/grpc",
		"/" + semanticsService + "/FullDuplexCall application/grpc",
		"/no.such.Service/Method application/grpc",
		"/grpc.health.v1.Health/Check application/grpc",
	} {
		if !got[want] {
			t.Errorf("the proxy's stream interceptor never saw %s (method and content-type); saw %v", want, got)
		}
	}
}

// TestUnknownServiceHandlerMalformed: with an unknown-service handler, a
// malformed method name is still Unimplemented, and a registered service
// is still served by its own handler.
func TestUnknownServiceHandlerMalformed(t *testing.T) {
	var calls []string
	var mu sync.Mutex
	h := func(_ any, ss grpc.ServerStream) error {
		m, _ := grpc.MethodFromServerStream(ss)
		mu.Lock()
		calls = append(calls, m)
		mu.Unlock()
		return status.Error(codes.NotFound, "unknown: "+m)
	}
	dir := testPool(t)
	lis, err := notnets.Listen("u", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := notnets.NewServer(notnets.UnknownServiceHandler(h))
	pb.RegisterGreeterServer(srv, greeter{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	ctx := testCtx(t)
	cc, err := notnets.Dial(ctx, "u", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if got, err := greeterAnswer(ctx, cc); err != nil || got != "Hello x" {
		t.Errorf("SayHello, registered = %q, %v", got, err)
	}
	err = cc.Invoke(ctx, "/helloworld.Greeter/NoSuchMethod", &pb.HelloRequest{}, &pb.HelloReply{})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "unknown: /helloworld.Greeter/NoSuchMethod" {
		t.Errorf("unknown method of a known service = %v, want the handler's NotFound", err)
	}
	err = cc.Invoke(ctx, "no-slash", &pb.HelloRequest{}, &pb.HelloReply{})
	if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "malformed method name") {
		t.Errorf("malformed method = %v, want Unimplemented", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(calls, []string{"/helloworld.Greeter/NoSuchMethod"}) {
		t.Errorf("the unknown-service handler got %q, want the unknown method alone", calls)
	}
}

// serveBridge serves b on a Unix socket in a directory of t's and returns
// a grpc-go client of it.
func serveBridge(t *testing.T, b *notnets.Bridge) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bridge.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(lis) }()
	t.Cleanup(func() {
		b.Stop()
		if err := <-served; err != nil {
			t.Errorf("Bridge.Serve after Stop = %v, want nil", err)
		}
	})
	return grpcClient(t, "unix://"+sock, insecure.NewCredentials())
}

// TestBridge reaches the server process's notnets services through a
// Bridge, with grpc-go clients over a Unix socket: every kind of call
// with its metadata, trailers and status, deadline and cancellation; the
// health service's Check and Watch (Watch sees the server process change
// its status); server reflection.
func TestBridge(t *testing.T) {
	backend := startServer(t)
	// WithViewChecks: a heap view the bridge read after handing it back
	// would fault.
	b, err := notnets.NewBridge(notnets.BridgeConfig{To: listenName, DialOptions: []notnets.DialOption{notnets.WithPool(backend.pool), notnets.WithViewChecks()}})
	if err != nil {
		t.Fatal(err)
	}
	cc := serveBridge(t, b)
	checkForwarded(t, "bridge", cc)
	ctx := testCtx(t)

	watch, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		command string
		want    healthpb.HealthCheckResponse_ServingStatus
	}{
		{"", healthpb.HealthCheckResponse_SERVING},
		{"health-not-serving", healthpb.HealthCheckResponse_NOT_SERVING},
		{"health-serving", healthpb.HealthCheckResponse_SERVING},
	} {
		if step.command != "" {
			if got := backend.command(t, step.command); got != "ok" {
				t.Fatalf("server process: %s: %q", step.command, got)
			}
		}
		r, err := watch.Recv()
		if err != nil || r.GetStatus() != step.want {
			t.Fatalf("health Watch over the bridge, after %q: %v, %v; want %v", step.command, r.GetStatus(), err, step.want)
		}
	}

	stream, err := rpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection over the bridge: %v", err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"helloworld.Greeter", semanticsService, "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection over the bridge lists %v, without %s", names, want)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("reflection stream after CloseSend: %v, want io.EOF", err)
	}
}

// hiGreeter answers "Hi", to tell it from the server process's Greeter.
type hiGreeter struct{ pb.UnimplementedGreeterServer }

func (hiGreeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hi " + in.GetName()}, nil
}

// TestBridgeRoutes puts two pool services behind one bridge, also on TCP
// loopback: helloworld.Greeter goes where its route says (a server of this
// process that says Hi), everything else to the default service (the
// server process); a bridge without a default answers Unimplemented for
// the services no route names, saying so.
func TestBridgeRoutes(t *testing.T) {
	backend := startServer(t)
	lis, err := notnets.Listen("hi", notnets.WithPool(backend.pool))
	if err != nil {
		t.Fatal(err)
	}
	hi := notnets.NewServer()
	pb.RegisterGreeterServer(hi, hiGreeter{})
	healthpb.RegisterHealthServer(hi, health.NewServer())
	go hi.Serve(lis)
	t.Cleanup(hi.Stop)
	dial := []notnets.DialOption{notnets.WithPool(backend.pool)}
	ctx := testCtx(t)

	b, err := notnets.NewBridge(notnets.BridgeConfig{To: listenName, Routes: map[string]string{"helloworld.Greeter": "hi"}, DialOptions: dial})
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go b.Serve(tcp)
	cc := serveBridge(t, b) // Stop at cleanup ends both
	for name, c := range map[string]*grpc.ClientConn{"unix": cc, "tcp": grpcClient(t, tcp.Addr().String(), insecure.NewCredentials())} {
		if got, err := greeterAnswer(ctx, c); err != nil || got != "Hi x" {
			t.Errorf("SayHello over %s, routed to hi = %q, %v; want Hi x", name, got, err)
		}
		if got, err := bidiAnswer(ctx, c); err != nil || got != "echoes=[a bb ccc] trailer=[s1 s2]" {
			t.Errorf("FullDuplexCall over %s, to the default = %q, %v", name, got, err)
		}
	}

	only, err := notnets.NewBridge(notnets.BridgeConfig{Routes: map[string]string{"helloworld.Greeter": "hi"}, DialOptions: dial})
	if err != nil {
		t.Fatal(err)
	}
	oc := serveBridge(t, only)
	if got, err := greeterAnswer(ctx, oc); err != nil || got != "Hi x" {
		t.Errorf("SayHello through a bridge of routes only = %q, %v", got, err)
	}
	_, err = healthpb.NewHealthClient(oc).Check(ctx, &healthpb.HealthCheckRequest{})
	if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "no pool service for method /grpc.health.v1.Health/Check") {
		t.Errorf("an unrouted call through a bridge without a default = %v, want Unimplemented naming the method", err)
	}

	for _, bad := range []notnets.BridgeConfig{{}, {Routes: map[string]string{"/helloworld.Greeter/": "hi"}}, {To: "bad/name"}} {
		if _, err := notnets.NewBridge(bad); err == nil {
			t.Errorf("NewBridge(%+v) succeeded, want an error", bad)
		}
	}
}

// TestBridgeServiceAbsent: a call through the bridge to a pool service
// with no instance fails with Unavailable, as a health probe needs, and
// succeeds once the service is up.
func TestBridgeServiceAbsent(t *testing.T) {
	dir := testPool(t)
	b, err := notnets.NewBridge(notnets.BridgeConfig{To: listenName, DialOptions: []notnets.DialOption{notnets.WithPool(dir)}})
	if err != nil {
		t.Fatal(err)
	}
	cc := serveBridge(t, b)
	ctx := testCtx(t)
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("health check of an absent service through the bridge = %v, want Unavailable", err)
	}
	startServerIn(t, dir)
	// The bridge's client sees the instance within a wake-up of the
	// registry, and forwards calls fail-fast meanwhile.
	if err := notnets.WaitBridgeReady(ctx, b); err != nil {
		t.Fatalf("the bridge never connected to the service: %v", err)
	}
	r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check once the service is up: %v, %v", r.GetStatus(), err)
	}
}

// TestReverseBridge puts the server process's grpc-go server (HTTP/2 on
// TCP loopback, serving the semantics service, Greeter and health) in a
// pool through a ReverseBridge, and calls it with a notnets client: every
// kind of call, metadata, status, deadline and cancellation cross.
func TestReverseBridge(t *testing.T) {
	backend := startServer(t, grpcSemanticsEnv+"=1")
	rb, err := notnets.NewReverseBridge(notnets.ReverseBridgeConfig{Target: backend.tcpAddr, ServerOptions: []notnets.ServerOption{notnets.WithViewChecks()}})
	if err != nil {
		t.Fatal(err)
	}
	dir := testPool(t)
	lis, err := notnets.Listen("net", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- rb.Serve(lis) }()
	ctx := testCtx(t)
	cc, err := notnets.Dial(ctx, "net", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	checkForwarded(t, "reverse", cc)
	addr, err := peerAddr(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Errorf("the network server's handler saw the caller at %q, want the bridge's TCP loopback address", addr)
	}
	rb.GracefulStop()
	if err := <-served; err != nil {
		t.Errorf("ReverseBridge.Serve after GracefulStop = %v, want nil", err)
	}
	if _, err := notnets.NewReverseBridge(notnets.ReverseBridgeConfig{}); err == nil {
		t.Error("NewReverseBridge without a target succeeded")
	}
}

// TestUnknownServiceHandlerOverServeGRPC: the same server's calls over
// HTTP/2 (ServeGRPC) to services it does not know go to its
// unknown-service handler too, raw with the forced codec, with its stream
// interceptor run once per call.
func TestUnknownServiceHandlerOverServeGRPC(t *testing.T) {
	var mu sync.Mutex
	intercepted := 0
	count := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		mu.Lock()
		intercepted++
		mu.Unlock()
		return h(srv, ss)
	}
	echo := func(_ any, ss grpc.ServerStream) error {
		m := new(notnets.Bytes)
		if err := ss.RecvMsg(m); err != nil {
			return err
		}
		method, _ := grpc.Method(ss.Context())
		reply := notnets.NewBytes(append([]byte(method+" "), m.Data()...))
		m.Free()
		return ss.SendMsg(reply)
	}
	srv := notnets.NewServer(notnets.UnknownServiceHandler(echo), notnets.ForceServerCodecV2(rawCodec), notnets.ChainStreamInterceptor(count))
	cc, _ := serveGRPCInProcess(t, srv)
	var out notnets.Bytes
	err := cc.Invoke(testCtx(t), "/any.Service/Echo", notnets.NewBytes([]byte("hi")), &out, grpc.ForceCodecV2(rawCodec))
	if err != nil || string(out.Data()) != "/any.Service/Echo hi" {
		t.Fatalf("an unknown method over HTTP/2 = %q, %v; want the handler's echo", out.Data(), err)
	}
	out.Free()
	mu.Lock()
	defer mu.Unlock()
	if intercepted != 1 {
		t.Errorf("the stream interceptor ran %d times for one call over HTTP/2, want 1", intercepted)
	}
}
