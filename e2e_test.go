package notnets_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// Every test here runs the server in a child process (startServer) with a
// pool of its own, and talks to it only through that pool.

func TestUnaryConcurrentCallsGetTheirOwnReplies(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	c := pb.NewGreeterClient(cc)
	const callers, calls = 16, 300
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				name := fmt.Sprintf("caller %d call %d", g, i)
				r, err := c.SayHello(context.Background(), &pb.HelloRequest{Name: name})
				if err != nil {
					errs <- err
					return
				}
				if want := "Hello " + name; r.GetMessage() != want {
					errs <- fmt.Errorf("got reply %q, want %q", r.GetMessage(), want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestMetadataHeadersAndTrailers(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	bin := []byte{0, 1, 2, 0xff, '\n', 0x80}
	ctx := metadata.AppendToOutgoingContext(withMode(context.Background(), "echo", "md"),
		"x-echo-text", "hello", "x-echo-text", "world", "x-echo-bin", string(bin))
	var header, trailer metadata.MD
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	for name, md := range map[string]metadata.MD{"header": header, "trailer": trailer} {
		if got := md.Get("x-echo-text"); len(got) != 2 || got[0] != "hello" || got[1] != "world" {
			t.Errorf("%s x-echo-text = %q, want [hello world]", name, got)
		}
		if got := md.Get("x-echo-bin"); len(got) != 1 || got[0] != string(bin) {
			t.Errorf("%s x-echo-bin = %q, want %q", name, got, bin)
		}
	}
	if got := header.Get("x-sent"); len(got) != 1 || got[0] != "yes" {
		t.Errorf("header x-sent = %q, want [yes] (from grpc.SendHeader)", got)
	}
	// Server interceptors ran in order, outermost first.
	if got := trailer.Get("x-interceptors"); strings.Join(got, ",") != "s1,s2" {
		t.Errorf("trailer x-interceptors = %q, want [s1 s2]", got)
	}
}

func TestStreamHeaderAndTrailer(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	stream, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 20}},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, err := stream.Header()
	if err != nil || h.Get("x-stream")[0] != "header" {
		t.Fatalf("Header() = %v, %v; want x-stream: header", h, err)
	}
	for _, want := range []int{10, 20} {
		r, err := stream.Recv()
		if err != nil || len(r.GetPayload().GetBody()) != want {
			t.Fatalf("Recv() = %d bytes, %v; want %d bytes", len(r.GetPayload().GetBody()), err, want)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv() after the last = %v, want io.EOF", err)
	}
	tr := stream.Trailer()
	if got := tr.Get("x-stream"); len(got) != 1 || got[0] != "trailer" {
		t.Errorf("trailer x-stream = %q, want [trailer]", got)
	}
	if got := tr.Get("x-interceptors"); strings.Join(got, ",") != "s1,s2" {
		t.Errorf("trailer x-interceptors = %q, want [s1 s2]", got)
	}
}

func TestStatusCodesMessagesAndDetails(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	req := &testpb.SimpleRequest{ResponseSize: 42, FillUsername: true}
	_, err := c.UnaryCall(withMode(context.Background(), "details", "d"), req)
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != "with details" {
		t.Fatalf("status = %v, want FailedPrecondition: with details", st)
	}
	details := st.Details()
	if len(details) != 1 {
		t.Fatalf("got %d details, want 1: %v", len(details), details)
	}
	if got, ok := details[0].(*testpb.SimpleRequest); !ok || !proto.Equal(got, req) {
		t.Errorf("detail = %v, want %v", details[0], req)
	}

	_, err = c.UnaryCall(withMode(context.Background(), "error", "e"), req)
	if st := status.Convert(err); st.Code() != codes.Unknown || st.Message() != "a plain error" {
		t.Errorf("plain error came back as %v, want Unknown: a plain error", st)
	}
}

func TestUnimplemented(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	for _, tc := range []struct{ method, msg string }{
		{"/no.such.Service/Method", "unknown service no.such.Service"},
		{"/" + semanticsService + "/NoSuchMethod", "unknown method NoSuchMethod for service " + semanticsService},
		{"no-slash", `malformed method name: "no-slash"`},
	} {
		err := cc.Invoke(context.Background(), tc.method, &testpb.Empty{}, &testpb.Empty{})
		if st := status.Convert(err); st.Code() != codes.Unimplemented || st.Message() != tc.msg {
			t.Errorf("Invoke(%s) = %v, want Unimplemented: %s", tc.method, st, tc.msg)
		}
	}
}

func TestDeadlineReachesTheServer(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.UnaryCall(withMode(ctx, "deadline", "dl"), &testpb.SimpleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	left, err := time.ParseDuration(string(r.GetPayload().GetBody()))
	if err != nil || left <= 4*time.Second || left > 5*time.Second {
		t.Errorf("server saw %q left of a 5s deadline, want 4s to 5s (%v)", r.GetPayload().GetBody(), err)
	}
	r, err = c.UnaryCall(withMode(context.Background(), "deadline", "none"), &testpb.SimpleRequest{})
	if err != nil || string(r.GetPayload().GetBody()) != "none" {
		t.Errorf("without a deadline the server saw %q, %v; want none", r.GetPayload().GetBody(), err)
	}
}

// report asks the server how the blocking call id ended.
func report(t *testing.T, c testpb.TestServiceClient, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.UnaryCall(withMode(ctx, "report", id), &testpb.SimpleRequest{})
	if err != nil {
		t.Fatalf("report %s: %v", id, err)
	}
	return string(r.GetPayload().GetBody())
}

func TestDeadlineExceeded(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.UnaryCall(withMode(ctx, "block", "late"), &testpb.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call past its deadline = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("DeadlineExceeded after %v for a 50ms deadline", d)
	}
	if got := report(t, c, "late"); !strings.HasPrefix(got, "context deadline exceeded") {
		t.Errorf("server context ended with %q, want deadline exceeded", got)
	}
	// An expired deadline fails before anything is sent.
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call with an expired context = %v, want DeadlineExceeded", err)
	}
}

func TestCancelReachesTheServer(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))

	t.Run("unary", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := c.UnaryCall(withMode(ctx, "block", "u"), &testpb.SimpleRequest{})
			done <- err
		}()
		if _, err := c.UnaryCall(withMode(context.Background(), "started", "u"), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled call = %v, want Canceled", err)
		}
		if got := report(t, c, "u"); !strings.HasPrefix(got, "context canceled") {
			t.Errorf("server context ended with %q, want context canceled", got)
		}
	})

	t.Run("stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := c.StreamingOutputCall(withMode(ctx, "block", "s"), &testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: 1}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
			t.Fatalf("Recv after cancel = %v, want Canceled", err)
		}
		if got := report(t, c, "s"); !strings.HasPrefix(got, "context canceled") {
			t.Errorf("server context ended with %q, want context canceled", got)
		}
	})
}

func TestPeerAndMethodOnTheServer(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	r, err := c.UnaryCall(withMode(context.Background(), "peer", "p"), &testpb.SimpleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s/%s#%d /%s/UnaryCall", srv.pool, listenName, os.Getpid(), semanticsService)
	if got := string(r.GetPayload().GetBody()); got != want {
		t.Errorf("server saw peer and method %q, want %q", got, want)
	}
}

func TestMessageSizes(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t, notnets.WithRingSize(64<<10)) // small rings: big messages are fragmented
	c := semanticsClient(cc)
	for _, n := range []int{0, 1, 1000, 32<<10 - 16, 32 << 10, 100 << 10, 3 << 20} {
		payload := bytes.Repeat([]byte{byte(n), 0x5a, byte(n >> 8)}, n/3+1)[:n]
		r, err := c.UnaryCall(withMode(context.Background(), "echo", "size"), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: payload}})
		if err != nil {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
		if !bytes.Equal(r.GetPayload().GetBody(), payload) {
			t.Fatalf("echo of %d bytes came back different (%d bytes)", n, len(r.GetPayload().GetBody()))
		}
	}
}

func TestMessageTooLarge(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	big := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 5<<20)}}
	ctx := withMode(context.Background(), "echo", "big")
	tests := []struct {
		name string
		call func() error
		msg  string
	}{
		{"request over the server's 4 MiB limit", func() error {
			_, err := c.UnaryCall(ctx, big)
			return err
		}, "grpc: received message larger than max"},
		{"response over the client's 4 MiB limit", func() error {
			_, err := c.UnaryCall(withMode(context.Background(), "size", "r"), &testpb.SimpleRequest{ResponseSize: 5 << 20})
			return err
		}, "grpc: received message larger than max"},
		{"request over the call's send limit", func() error {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 2000)}}, grpc.MaxCallSendMsgSize(1000))
			return err
		}, "grpc: trying to send message larger than max"},
		{"response over the call's receive limit", func() error {
			_, err := c.UnaryCall(withMode(context.Background(), "size", "r"), &testpb.SimpleRequest{ResponseSize: 2000}, grpc.MaxCallRecvMsgSize(1000))
			return err
		}, "grpc: received message larger than max"},
	}
	for _, tc := range tests {
		err := tc.call()
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.HasPrefix(st.Message(), tc.msg) {
			t.Errorf("%s: %v, want ResourceExhausted: %s", tc.name, err, tc.msg)
		}
	}
	// The connection still works after every refusal.
	if _, err := c.UnaryCall(withMode(context.Background(), "echo", "ok"), &testpb.SimpleRequest{}); err != nil {
		t.Errorf("call after the refusals: %v", err)
	}
}

// TestMetadataLargerThanTheRing: header blocks larger than a ring
// record cross in fragments (PROTOCOL.md 9.9); serverbits_test.go has
// the limits.
func TestMetadataLargerThanTheRing(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t, notnets.WithRingSize(64<<10))) // frames of at most 32 KiB
	big := strings.Repeat("m", 40<<10)
	ctx := metadata.AppendToOutgoingContext(withMode(context.Background(), "echo", "big"), "x-echo-big", big)
	var header, trailer metadata.MD
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil || strings.Join(header["x-echo-big"], "") != big || strings.Join(trailer["x-echo-big"], "") != big {
		t.Errorf("request with 40 KiB of metadata, echoed in headers and trailers = %v, header %d bytes, trailer %d", err, len(strings.Join(header["x-echo-big"], "")), len(strings.Join(trailer["x-echo-big"], "")))
	}
	for _, mode := range []string{"big-header", "big-trailer"} {
		if _, err := c.UnaryCall(withMode(context.Background(), mode, mode), &testpb.SimpleRequest{ResponseSize: 40 << 10}); err != nil {
			t.Errorf("%s of 40 KiB = %v", mode, err)
		}
	}
	// The connection goes on.
	if _, err := c.UnaryCall(withMode(context.Background(), "echo", "ok"), &testpb.SimpleRequest{}); err != nil {
		t.Errorf("call after the refusals: %v", err)
	}
}

func TestStreamingKinds(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t, notnets.WithRingSize(64<<10)))
	ctx := context.Background()

	t.Run("client streaming", func(t *testing.T) {
		stream, err := c.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for i := 0; i < 100; i++ {
			total += i * 100
			if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, i*100)}}); err != nil {
				t.Fatal(err)
			}
		}
		r, err := stream.CloseAndRecv()
		if err != nil || int(r.GetAggregatedPayloadSize()) != total {
			t.Fatalf("CloseAndRecv = %v, %v; want %d", r, err, total)
		}
	})

	t.Run("bidirectional, many streams at once", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for s := 0; s < 8; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- pingPong(ctx, c, s, 200)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("server streaming beyond the flow-control window", func(t *testing.T) {
		var params []*testpb.ResponseParameters
		for i := 0; i < 64; i++ {
			params = append(params, &testpb.ResponseParameters{Size: 64 << 10})
		}
		stream, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(r.GetPayload().GetBody()) != 64<<10 {
				t.Fatalf("message %d has %d bytes", n, len(r.GetPayload().GetBody()))
			}
			n++
		}
		if n != len(params) {
			t.Fatalf("got %d messages, want %d", n, len(params))
		}
	})
}

// pingPong sends n messages on a full-duplex stream, each checked when it
// comes back.
func pingPong(ctx context.Context, c testpb.TestServiceClient, id, n int) error {
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		body := []byte(fmt.Sprintf("stream %d message %d %s", id, i, strings.Repeat("x", i*10)))
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			return fmt.Errorf("stream %d send %d: %w", id, i, err)
		}
		r, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("stream %d recv %d: %w", id, i, err)
		}
		if !bytes.Equal(r.GetPayload().GetBody(), body) {
			return fmt.Errorf("stream %d message %d came back as %q", id, i, r.GetPayload().GetBody())
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return fmt.Errorf("stream %d: Recv after CloseSend = %v, want io.EOF", id, err)
	}
	return nil
}

func TestClientInterceptorsAndCodec(t *testing.T) {
	srv := startServer(t)
	var order []string
	tag := func(name string) grpc.UnaryClientInterceptor {
		return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			order = append(order, name)
			return invoke(ctx, method, req, reply, cc, opts...)
		}
	}
	var streamOrder []string
	stag := func(name string) grpc.StreamClientInterceptor {
		return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			streamOrder = append(streamOrder, name)
			return streamer(ctx, desc, cc, method, opts...)
		}
	}
	cc := srv.dial(t,
		notnets.WithUnaryInterceptor(tag("first")), notnets.WithChainUnaryInterceptor(tag("second"), tag("third")),
		notnets.WithChainStreamInterceptor(stag("a"), stag("b")),
	)
	c := semanticsClient(cc)
	payload := &testpb.Payload{Body: []byte("through the tagged codec")}
	r, err := c.UnaryCall(withMode(context.Background(), "echo", "codec"), &testpb.SimpleRequest{Payload: payload}, grpc.CallContentSubtype("tagged"))
	if err != nil {
		t.Fatalf("call with content subtype tagged: %v", err)
	}
	if !proto.Equal(r.GetPayload(), payload) {
		t.Errorf("echo through the tagged codec = %v", r.GetPayload())
	}
	if got := strings.Join(order, ","); got != "first,second,third" {
		t.Errorf("unary interceptors ran as %s, want first,second,third", got)
	}
	if err := pingPong(context.Background(), c, 0, 1); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(streamOrder, ","); got != "a,b" {
		t.Errorf("stream interceptors ran as %s, want a,b", got)
	}
	_, err = c.UnaryCall(withMode(context.Background(), "echo", "codec"), &testpb.SimpleRequest{}, grpc.CallContentSubtype("no-such-codec"))
	if status.Code(err) != codes.Internal {
		t.Errorf("call with an unknown codec = %v, want Internal", err)
	}
}

func TestManyConnectionsAndClose(t *testing.T) {
	srv := startServer(t)
	conns := make([]*notnets.ClientConn, 4)
	for i := range conns {
		conns[i] = srv.dial(t)
	}
	for i, cc := range conns {
		if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{Name: "x"}); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	conns[0].Close()
	if _, err := pb.NewGreeterClient(conns[0]).SayHello(context.Background(), &pb.HelloRequest{}); status.Code(err) != codes.Canceled {
		t.Errorf("call on a closed connection = %v, want Canceled", err)
	}
	for i, cc := range conns[1:] {
		if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{Name: "x"}); err != nil {
			t.Errorf("connection %d after another closed: %v", i+1, err)
		}
	}
	if got := srv.command(t, "services"); got != "7" {
		t.Errorf("server has %s services, want 7 (Greeter, TestService, semantics, raw echo, reflection v1 and v1alpha, health)", got)
	}
}

func TestStop(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(withMode(ctx, "block", "stop"), &testpb.SimpleRequest{})
		done <- err
	}()
	if _, err := c.UnaryCall(withMode(ctx, "started", "stop"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := srv.command(t, "stop"); got != "stopped <nil>" {
		t.Errorf("Serve returned %q after Stop, want nil", got)
	}
	if err := <-done; status.Code(err) != codes.Unavailable {
		t.Errorf("call in flight at Stop = %v, want Unavailable", err)
	}
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("call after Stop = %v, want Unavailable", err)
	}
	if _, err := notnets.Dial(ctx, listenName, notnets.WithPool(srv.pool)); status.Code(err) != codes.Unavailable {
		t.Errorf("Dial after Stop = %v, want Unavailable", err)
	}
}

func TestGracefulStopWaitsForCallsInFlight(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	c := semanticsClient(cc)
	ctx := context.Background()
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("before")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan string, 1)
	go func() { stopped <- srv.command(t, "graceful") }()
	// New calls are refused once the server's GOAWAY has arrived; poll for it.
	for {
		_, err := c.UnaryCall(withMode(ctx, "echo", "g"), &testpb.SimpleRequest{})
		if status.Code(err) == codes.Unavailable {
			break
		}
		if err != nil {
			t.Fatalf("call while draining = %v, want success or Unavailable", err)
		}
	}
	// The stream in flight still works, and the stop waits for it.
	if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("during")}}); err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || string(r.GetPayload().GetBody()) != "during" {
		t.Fatalf("stream during GracefulStop: %v, %v", r, err)
	}
	select {
	case got := <-stopped:
		t.Fatalf("GracefulStop returned (%s) with a stream in flight", got)
	default:
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv after CloseSend = %v, want io.EOF", err)
	}
	if got := <-stopped; got != "stopped <nil>" {
		t.Errorf("Serve returned %q after GracefulStop, want nil", got)
	}
}

// TestHandshakes connects both ways, across processes: through the
// listener's socket with a sealed memfd (the default on one host), and
// through the listener's slots with a named segment (a cross-host pool).
// The server reports the caller's identity: verified through the socket,
// as claimed (unverified) in a cross-host pool, where no /proc is asked.
func TestHandshakes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		crossHost bool
	}{
		{"socket", false},
		{"slots", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.crossHost {
				oneHostOnly(t, "the socket handshake")
			}
			dir := testPool(t)
			if tc.crossHost {
				dir = crossHostPool(t)
			}
			srv := startServerIn(t, dir)
			cc := srv.dial(t)
			wantPath, verified := tc.crossHost, !tc.crossHost
			if path := notnets.SegmentPath(cc); (path != "") != wantPath {
				t.Errorf("segment path %q; want a named segment: %v", path, wantPath)
			}
			var p peer.Peer
			r, err := semanticsClient(cc).UnaryCall(withMode(context.Background(), "auth", ""), &testpb.SimpleRequest{}, grpc.Peer(&p))
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("%d %d %d %v", os.Geteuid(), os.Getegid(), os.Getpid(), verified); string(r.GetPayload().GetBody()) != want {
				t.Errorf("the server saw the client as %q, want %q", r.GetPayload().GetBody(), want)
			}
			a, ok := p.AuthInfo.(notnets.AuthInfo)
			if !ok || a.UID != uint32(os.Geteuid()) || a.PID == os.Getpid() || a.PID == 0 {
				t.Errorf("the client's view of the server: %#v", p.AuthInfo)
			}
			if a.PIDVerified != verified {
				t.Errorf("server pid verified %v, want %v (%s handshake)", a.PIDVerified, verified, tc.name)
			}
			entries, err := os.ReadDir(srv.pool)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), "conn-") {
					t.Errorf("a connection segment is still named in the pool: %s", e.Name())
				}
			}
		})
	}
}
