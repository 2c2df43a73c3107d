package notnets_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/grpc"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	channelzsvc "google.golang.org/grpc/channelz/service"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/orca"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/gatewaytest"
)

// The drop-in tier's tests: a grpc-go client (grpc.NewClient with
// notnets.ContextDialer) calls a plain grpc.Server that a server process
// serves on notnets.ListenConn, beside its notnets Server on Listen, under
// the same service name.
//
// dropInEnv makes the server process serve the drop-in grpc.Server
// (serveDropIn), as grpcAddrFileEnv makes it ServeGRPC; with
// dropInKeepaliveEnv (a duration) that server pings idle clients that
// often (grpc.KeepaliveParams), with a timeout of as long.
const (
	dropInEnv          = "NOTNETS_TEST_DROPIN"
	dropInKeepaliveEnv = "NOTNETS_TEST_DROPIN_KEEPALIVE"
)

// serveDropIn serves a grpc.Server on ListenConn(listenName): Greeter, the
// interop TestService as grpc-go's interop server sets it up (ORCA call
// metrics and the ORCA service, and ServerId filled in for
// pick_first_unary), the semantics service, channelz, health,
// reflection and gatewaytest's Items (gateway_test.go). It returns the
// server's Stop.
func serveDropIn(lopts []notnets.ListenOption) func() {
	lis, err := notnets.ListenConn(listenName, lopts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server: ListenConn:", err)
		os.Exit(2)
	}
	opts := []grpc.ServerOption{orca.CallMetricsServerOption(nil)}
	if d, err := time.ParseDuration(os.Getenv(dropInKeepaliveEnv)); err == nil {
		opts = append(opts, grpc.KeepaliveParams(keepalive.ServerParameters{Time: d, Timeout: d}))
	}
	gs := grpc.NewServer(opts...)
	metrics := orca.NewServerMetricsRecorder()
	sopts := orca.ServiceOptions{MinReportingInterval: time.Second, ServerMetricsProvider: metrics}
	allowShortORCAInterval(&sopts)
	if err := orca.Register(gs, sopts); err != nil {
		fmt.Fprintln(os.Stderr, "server: orca.Register:", err)
		os.Exit(2)
	}
	pb.RegisterGreeterServer(gs, greeter{})
	testgrpc.RegisterTestServiceServer(gs, serverIDTestServer{interop.NewTestServer(interop.NewTestServerOptions{MetricsRecorder: metrics})})
	desc := testgrpc.TestService_ServiceDesc
	desc.ServiceName = semanticsService
	gs.RegisterService(&desc, newSemantics())
	channelzsvc.RegisterChannelzServiceToServer(gs)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	reflection.Register(gs)
	gatewaytest.RegisterItemsServer(gs, newItems()) // gateway_test.go
	go gs.Serve(lis)
	return gs.Stop
}

// allowShortORCAInterval lets the ORCA service report every second, as
// grpc-go's interop server does through a hook internal to grpc-go
// (internal.ORCAAllowAnyMinReportingInterval), which sets this unexported
// field: without it the service reports at most every 30 s, and orca_oob,
// which waits for two reports, cannot pass in its 30 s.
func allowShortORCAInterval(o *orca.ServiceOptions) {
	f := reflect.ValueOf(o).Elem().FieldByName("allowAnyMinReportingInterval")
	if !f.IsValid() || f.Kind() != reflect.Bool {
		return // grpc-go changed: orca_oob will say so
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetBool(true)
}

// serverIDTestServer is the interop TestService with the ServerId filled
// in when asked, as xDS test servers do: pick_first_unary checks that
// every call reached the same server.
type serverIDTestServer struct{ testgrpc.TestServiceServer }

func (s serverIDTestServer) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	r, err := s.TestServiceServer.UnaryCall(ctx, in)
	if err == nil && in.GetFillServerId() {
		r.ServerId = strconv.Itoa(os.Getpid())
	}
	return r, err
}

// dropInClient returns a grpc-go client of the drop-in instance of
// listenName in pool, closed at the end of the test.
func dropInClient(t testing.TB, pool string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+listenName, append([]grpc.DialOption{
		grpc.WithContextDialer(notnets.ContextDialer(notnets.WithPool(pool))),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestDropInCallKinds: grpc-go's client calls a grpc.Server in another
// process over the drop-in tier, all four kinds of call, with metadata
// both ways and a status with a message; peer.Addr is a notnets Addr
// naming the server process and its instance. The notnets instance of
// the same name in the same process serves notnets clients beside it:
// each kind of client uses only the instance of its kind (PROTOCOL.md
// F11).
func TestDropInCallKinds(t *testing.T) {
	srv := startServer(t, dropInEnv+"=1")
	cc := dropInClient(t, srv.pool)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Unary, with the peer.
	var p peer.Peer
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "drop-in"}, grpc.Peer(&p))
	if err != nil || r.GetMessage() != "Hello drop-in" {
		t.Fatalf("SayHello: %q, %v", r.GetMessage(), err)
	}
	a, ok := p.Addr.(*notnets.Addr)
	if !ok || a.Network() != "notnets" || a.Name != listenName || a.Pool != srv.pool || a.PID != srv.cmd.Process.Pid || !strings.HasPrefix(a.Instance, listenName+"+") {
		t.Fatalf("peer.Addr = %#v, want the notnets Addr of %s in %s, process %d", p.Addr, listenName, srv.pool, srv.cmd.Process.Pid)
	}

	tc := semanticsClient(cc)
	// Server streaming, with headers and trailers.
	ss, err := tc.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 100 << 10}, {Size: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for {
		m, err := ss.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("server streaming: %v", err)
		}
		sizes = append(sizes, len(m.GetPayload().GetBody()))
	}
	if fmt.Sprint(sizes) != "[1 102400 3]" {
		t.Fatalf("server streaming sizes %v", sizes)
	}
	if h, _ := ss.Header(); fmt.Sprint(h.Get("x-stream")) != "[header]" || fmt.Sprint(ss.Trailer().Get("x-stream")) != "[trailer]" {
		t.Fatalf("server streaming header %v, trailer %v", h, ss.Trailer())
	}

	// Client streaming: 1 MiB in all, larger than a ring's record.
	cs, err := tc.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 16 {
		if err := cs.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 64<<10)}}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := cs.CloseAndRecv(); err != nil || res.GetAggregatedPayloadSize() != 1<<20 {
		t.Fatalf("client streaming: %v, %v", res, err)
	}

	// Bidirectional.
	bs, err := tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		body := []byte(strconv.Itoa(i))
		if err := bs.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			t.Fatal(err)
		}
		m, err := bs.Recv()
		if err != nil || string(m.GetPayload().GetBody()) != string(body) {
			t.Fatalf("bidi echo %d: %q, %v", i, m.GetPayload().GetBody(), err)
		}
	}
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v, want io.EOF", err)
	}

	// A status with a message crosses.
	_, err = testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.AlreadyExists), Message: "taken"}})
	if status.Code(err) != codes.AlreadyExists || status.Convert(err).Message() != "taken" {
		t.Fatalf("status: %v", err)
	}

	// The notnets instance of the same name serves notnets clients.
	ncc := srv.dial(t)
	if _, err := pb.NewGreeterClient(ncc).SayHello(ctx, &pb.HelloRequest{Name: "native"}, grpc.Peer(&p)); err != nil {
		t.Fatalf("notnets call beside the drop-in instance: %v", err)
	}
	if na := p.Addr.(*notnets.Addr); na.Instance == a.Instance {
		t.Fatalf("the notnets client used the drop-in instance %s", na.Instance)
	}
}

// TestDropInNoInstance: where a service has only a notnets instance (no
// ListenConn), a drop-in client's calls fail at once with Unavailable
// saying so, rather than reaching the notnets Server with HTTP/2; and a
// bad target fails the dial with InvalidArgument.
func TestDropInNoInstance(t *testing.T) {
	srv := startServer(t) // Listen only
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := pb.NewGreeterClient(dropInClient(t, srv.pool)).SayHello(ctx, &pb.HelloRequest{Name: "x"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "serves byte streams") {
		t.Fatalf("drop-in call with no ListenConn instance: %v, want Unavailable naming the missing kind", err)
	}
	_, err = notnets.ContextDialer(notnets.WithPool(srv.pool))(ctx, "10.0.0.1:80")
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("dial of an IP address: %v, want InvalidArgument", err)
	}
}

// dropInInteropCases are grpc-go's interop client's test cases
// (google.golang.org/grpc/interop/client), every one that needs no cloud
// credentials, run with grpc-go's own helpers on a *grpc.ClientConn over
// the drop-in tier. The soak cases run with the interop client's default
// flags (10 iterations of 271,828-byte requests and 314,159-byte
// responses, 1 s per iteration at most); channel_soak makes a new
// grpc.ClientConn per iteration.
var dropInInteropCases = map[string]dropInCase{
	"empty_unary":                 withTC(interop.DoEmptyUnaryCall),
	"large_unary":                 withTC(interop.DoLargeUnaryCall),
	"client_streaming":            withTC(interop.DoClientStreaming),
	"server_streaming":            withTC(interop.DoServerStreaming),
	"ping_pong":                   withTC(interop.DoPingPong),
	"empty_stream":                withTC(interop.DoEmptyStream),
	"timeout_on_sleeping_server":  withTC(interop.DoTimeoutOnSleepingServer),
	"cancel_after_begin":          withTC(interop.DoCancelAfterBegin),
	"cancel_after_first_response": withTC(interop.DoCancelAfterFirstResponse),
	"status_code_and_message":     withTC(interop.DoStatusCodeAndMessage),
	"special_status_message":      withTC(interop.DoSpecialStatusMessage),
	"custom_metadata":             withTC(interop.DoCustomMetadata),
	"pick_first_unary":            withTC2(interop.DoPickFirstUnary),
	"orca_per_rpc":                withTC2(interop.DoORCAPerRPCTest),
	"orca_oob":                    withTC2(interop.DoORCAOOBTest),
	// grpc-go's helper takes a *grpc.ClientConn.
	"unimplemented_method": func(ctx context.Context, cc *grpc.ClientConn, _ []grpc.DialOption) {
		interop.DoUnimplementedMethod(ctx, cc)
	},
	"unimplemented_service": func(ctx context.Context, cc *grpc.ClientConn, _ []grpc.DialOption) {
		interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(cc))
	},
	"rpc_soak": func(ctx context.Context, cc *grpc.ClientConn, _ []grpc.DialOption) {
		c := soakConfig()
		c.ChannelForTest = func() (*grpc.ClientConn, func()) { return cc, func() {} }
		interop.DoSoakTest(ctx, c)
	},
	"channel_soak": func(ctx context.Context, _ *grpc.ClientConn, opts []grpc.DialOption) {
		c := soakConfig()
		c.ChannelForTest = func() (*grpc.ClientConn, func()) {
			cc, err := grpc.NewClient(c.ServerAddr, opts...)
			if err != nil {
				fmt.Fprintln(os.Stderr, "channel_soak: NewClient:", err)
				os.Exit(1)
			}
			return cc, func() { cc.Close() }
		}
		interop.DoSoakTest(ctx, c)
	},
}

// dropInCase runs one interop case on cc, a client dialled with opts.
type dropInCase func(ctx context.Context, cc *grpc.ClientConn, opts []grpc.DialOption)

// withTC is the case of an interop helper that takes a TestService client
// and call options.
func withTC(do func(context.Context, testgrpc.TestServiceClient, ...grpc.CallOption)) dropInCase {
	return func(ctx context.Context, cc *grpc.ClientConn, _ []grpc.DialOption) {
		do(ctx, testgrpc.NewTestServiceClient(cc))
	}
}

// withTC2 is the case of an interop helper that takes a TestService client.
func withTC2(do func(context.Context, testgrpc.TestServiceClient)) dropInCase {
	return func(ctx context.Context, cc *grpc.ClientConn, _ []grpc.DialOption) {
		do(ctx, testgrpc.NewTestServiceClient(cc))
	}
}

// soakConfig is the interop client's soak configuration with its default
// flags.
func soakConfig() interop.SoakTestConfig {
	return interop.SoakTestConfig{
		RequestSize:                      271828,
		ResponseSize:                     314159,
		PerIterationMaxAcceptableLatency: time.Second,
		OverallTimeout:                   10 * time.Second,
		ServerAddr:                       "passthrough:///" + listenName,
		NumWorkers:                       1,
		Iterations:                       10,
	}
}

// runDropInInteropCase is the client process of one interop case over the
// drop-in tier: grpc.NewClient with ContextDialer, as grpc-go's interop
// client would dial a server address, with the ORCA test balancer
// (registered by package interop) for the ORCA cases, as grpc-go's
// interop runs configure them.
func runDropInInteropCase(name string) int {
	do := dropInInteropCases[name]
	if do == nil {
		fmt.Fprintf(os.Stderr, "unknown interop case %q\n", name)
		return 2
	}
	opts := []grpc.DialOption{
		grpc.WithContextDialer(notnets.ContextDialer()), // the pool is $NOTNETS_POOL
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	if strings.HasPrefix(name, "orca_") {
		opts = append(opts, grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"test_backend_metrics_load_balancer": {}}]}`))
	}
	cc, err := grpc.NewClient("passthrough:///"+listenName, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "NewClient:", err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	do(ctx, cc, opts)
	return 0
}

// TestDropInInterop runs grpc-go's interop suite over the drop-in tier:
// every case of its client that needs no cloud credentials, each in a
// client process of its own (the helpers exit on failure) against a
// grpc.Server in the server process, talking only through the pool.
func TestDropInInterop(t *testing.T) {
	srv := startServer(t, dropInEnv+"=1")
	for name := range dropInInteropCases {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), roleEnv+"=dropin-interop-client", caseEnv+"="+name, "NOTNETS_POOL="+srv.pool)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("interop case %s over the drop-in tier failed: %v\n%s", name, err, out)
			}
		})
	}
}

// TestDropInKeepaliveAndChannelz: grpc-go's keepalive and channelz work
// over the drop-in tier. The server pings an idle client every second
// (the shortest grpc-go allows) and closes a connection whose ping is not
// answered within a second; channelz in the server process, asked over
// a second drop-in connection, lists the notnets listener and the idle
// client's socket, counts the pings sent on it, and shows the same
// socket, still serving, after them.
func TestDropInKeepaliveAndChannelz(t *testing.T) {
	srv := startServer(t, dropInEnv+"=1", dropInKeepaliveEnv+"=1s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	idle := dropInClient(t, srv.pool)
	greeter := pb.NewGreeterClient(idle)
	if _, err := greeter.SayHello(ctx, &pb.HelloRequest{Name: "before"}); err != nil {
		t.Fatal(err)
	}
	// Channelz is asked over another connection, so that the first stays
	// idle and is pinged.
	cz := channelzpb.NewChannelzClient(dropInClient(t, srv.pool))
	listener := fmt.Sprintf("%s/%s#%d", srv.pool, listenName, srv.cmd.Process.Pid)
	var server int64 = -1
	servers, err := cz.GetServers(ctx, &channelzpb.GetServersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers.GetServer() {
		for _, ls := range s.GetListenSocket() {
			if ls.GetName() == listener {
				server = s.GetRef().GetServerId()
			}
		}
	}
	if server < 0 {
		t.Fatalf("channelz lists no server with the listen socket %q: %v", listener, servers)
	}
	// The idle client's socket: the one that started one stream.
	idleSocket := func() *channelzpb.Socket {
		refs, err := cz.GetServerSockets(ctx, &channelzpb.GetServerSocketsRequest{ServerId: server})
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range refs.GetSocketRef() {
			s, err := cz.GetSocket(ctx, &channelzpb.GetSocketRequest{SocketId: ref.GetSocketId()})
			if err != nil {
				t.Fatal(err)
			}
			if s.GetSocket().GetData().GetStreamsStarted() == 1 {
				return s.GetSocket()
			}
		}
		return nil
	}
	var first *channelzpb.Socket
	for {
		s := idleSocket()
		if first == nil {
			first = s
		}
		if s == nil || s.GetRef().GetSocketId() != first.GetRef().GetSocketId() {
			t.Fatalf("the idle client's socket: %v, first %v", s, first)
		}
		if s.GetData().GetKeepAlivesSent() >= 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no two keepalive pings on the idle socket in 30 s: %v", s)
		}
		time.Sleep(100 * time.Millisecond) // polling channelz, not synchronizing
	}
	if _, err := greeter.SayHello(ctx, &pb.HelloRequest{Name: "after"}); err != nil {
		t.Fatalf("call after the keepalive pings: %v", err)
	}
	refs, err := cz.GetServerSockets(ctx, &channelzpb.GetServerSocketsRequest{ServerId: server})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs.GetSocketRef() {
		if ref.GetSocketId() == first.GetRef().GetSocketId() {
			s, err := cz.GetSocket(ctx, &channelzpb.GetSocketRequest{SocketId: ref.GetSocketId()})
			if err != nil || s.GetSocket().GetData().GetStreamsSucceeded() != 2 {
				t.Fatalf("the idle client's socket after a second call: %v, %v; want 2 streams succeeded", s, err)
			}
			return
		}
	}
	t.Fatalf("the idle client's socket %d is gone after the pings: the connection was replaced", first.GetRef().GetSocketId())
}

// TestDropInServerKilled: when the server process is killed, a call in
// progress over the drop-in tier fails with Unavailable (the liveness
// watch notices the process gone and fails the byte stream, and grpc-go
// its transport) well within the liveness timeout, and new calls fail
// with Unavailable at once: the dialer finds no live instance. Nothing
// hangs.
func TestDropInServerKilled(t *testing.T) {
	srv := startServer(t, dropInEnv+"=1")
	cc := dropInClient(t, srv.pool)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tc := semanticsClient(cc)
	if _, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	// A call that the server blocks until its context ends.
	stream, err := tc.StreamingOutputCall(withMode(ctx, "block", "killed"), &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := stream.Recv()
		ended <- err
	}()
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case err := <-ended:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call in progress when the server was killed: %v, want Unavailable", err)
		}
		t.Logf("call in progress failed %v after the kill: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(notnets.DefaultLivenessTimeout + 3*time.Second):
		t.Fatal("call in progress still waiting after the liveness timeout and 3 s")
	}
	callCtx, callCancel := context.WithTimeout(ctx, 10*time.Second)
	defer callCancel()
	_, err = pb.NewGreeterClient(cc).SayHello(callCtx, &pb.HelloRequest{Name: "after"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call after the server died: %v, want Unavailable", err)
	}
	if errors.Is(callCtx.Err(), context.DeadlineExceeded) {
		t.Fatal("the call after the server died waited for its deadline")
	}
}

// TestServeGRPCOnListenConn: a notnets Server serves one registration on
// both tiers under one name, Serve on Listen and ServeGRPC on ListenConn;
// a notnets client and a grpc-go client each reach the instance of their
// kind, and the handler sees a notnets Addr either way.
func TestServeGRPCOnListenConn(t *testing.T) {
	dir := testPool(t)
	srv := notnets.NewServer()
	defer srv.Stop()
	pb.RegisterGreeterServer(srv, peerGreeter{})
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	clis, err := notnets.ListenConn("greeter", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	go srv.ServeGRPC(clis)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ncc, err := notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer ncc.Close()
	gcc, err := grpc.NewClient("passthrough:///greeter", grpc.WithContextDialer(notnets.ContextDialer(notnets.WithPool(dir))),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer gcc.Close()
	want := map[string]string{
		"notnets": lis.Addr().(*notnets.Addr).Instance,
		"grpc":    clis.Addr().(*notnets.Addr).Instance,
	}
	for kind, cc := range map[string]grpc.ClientConnInterface{"notnets": ncc, "grpc": gcc} {
		var p peer.Peer
		r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: kind}, grpc.Peer(&p))
		if err != nil {
			t.Fatalf("%s client: %v", kind, err)
		}
		if a, ok := p.Addr.(*notnets.Addr); !ok || a.Instance != want[kind] {
			t.Errorf("%s client reached %v, want instance %s", kind, p.Addr, want[kind])
		}
		if r.GetMessage() != "notnets" {
			t.Errorf("%s client: the handler saw a peer of network %q, want notnets", kind, r.GetMessage())
		}
	}
}

// peerGreeter answers with the network of the caller's peer.Addr.
type peerGreeter struct{ pb.UnimplementedGreeterServer }

func (peerGreeter) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no peer")
	}
	return &pb.HelloReply{Message: p.Addr.Network()}, nil
}
