package notnets

// The outcomes stats handlers, OnFinish and per-RPC credentials see, which
// must match grpc-go v1.85's (each case was checked against grpc-go over
// TCP). These tests reach inside the package; stats_test.go has the event
// sequences seen from outside.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/transport"
)

// r2Stats records every RPC event with its error (for End) and headers
// (for OutHeader).
type r2Stats struct {
	mu     sync.Mutex
	events []string
	ends   []error
	outHdr []metadata.MD
}

func (r *r2Stats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (r *r2Stats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (r *r2Stats) HandleConn(context.Context, stats.ConnStats) {}
func (r *r2Stats) HandleRPC(_ context.Context, s stats.RPCStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, strings.TrimPrefix(fmt.Sprintf("%T", s), "*stats."))
	switch s := s.(type) {
	case *stats.End:
		r.ends = append(r.ends, s.Error)
	case *stats.OutHeader:
		r.outHdr = append(r.outHdr, s.Header)
	}
}

func (r *r2Stats) count(ev string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e == ev {
			n++
		}
	}
	return n
}

func (r *r2Stats) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, " ")
}

// mdGreeter answers with the values of the request's "authorization"
// metadata, in the order the server got them.
type mdGreeter struct{ pb.UnimplementedGreeterServer }

func (mdGreeter) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &pb.HelloReply{Message: strings.Join(md.Get("authorization"), ",")}, nil
}

// serveInProcess serves g under name in a new pool until the test ends.
func serveInProcess(t *testing.T, name string, g pb.GreeterServer, sopts ...ServerOption) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	lis, err := Listen(name, WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(sopts...)
	pb.RegisterGreeterServer(srv, g)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return srv, dir
}

func dialInProcess(t *testing.T, name, dir string, opts ...DialOption) *ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := Dial(ctx, name, append([]DialOption{WithPool(dir)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// staticCreds adds md, or fails with err.
type staticCreds struct {
	md  map[string]string
	err error
}

func (c staticCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return c.md, c.err
}
func (staticCreds) RequireTransportSecurity() bool { return false }

// TestUnaryEndReportsLocalFailure: the server answers OK, but the
// client cannot take the reply (larger than MaxCallRecvMsgSize). The call
// fails with ResourceExhausted; grpc-go's End (and OnFinish) carry that
// error (RecvMsg -> cs.finish(err)). notnets reports the server's OK:
// recvUnary returns m.err, and its deferred done() reports s.st.
func TestUnaryEndReportsLocalFailure(t *testing.T) {
	_, dir := serveInProcess(t, "r2end", echoGreeter{})
	rec := &r2Stats{}
	cc := dialInProcess(t, "r2end", dir, WithStatsHandler(rec))
	var finished error = errors.New("OnFinish not called")
	_, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{Name: "a long enough name"},
		grpc.MaxCallRecvMsgSize(4), grpc.OnFinish(func(err error) { finished = err }))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call: %v, want ResourceExhausted", err)
	}
	rec.mu.Lock()
	ends := rec.ends
	rec.mu.Unlock()
	if len(ends) != 1 || status.Code(ends[0]) != codes.ResourceExhausted {
		t.Errorf("stats End errors %v, want one ResourceExhausted (events: %s)", ends, rec)
	}
	if status.Code(finished) != codes.ResourceExhausted {
		t.Errorf("OnFinish got %v, want ResourceExhausted", finished)
	}
}

// TestUnaryRequestTooLargeGetsBeginEnd: a unary request over
// MaxCallSendMsgSize. grpc-go reports Begin, OutHeader, End(err) and calls
// OnFinish (invoke: newClientStream, then SendMsg fails -> cs.finish).
// notnets's invoke fails in prepareMsg before start: no event at all.
func TestUnaryRequestTooLargeGetsBeginEnd(t *testing.T) {
	_, dir := serveInProcess(t, "r2big", echoGreeter{})
	rec := &r2Stats{}
	cc := dialInProcess(t, "r2big", dir, WithStatsHandler(rec))
	called := false
	_, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{Name: "a long enough name"},
		grpc.MaxCallSendMsgSize(4), grpc.OnFinish(func(error) { called = true }))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call: %v, want ResourceExhausted", err)
	}
	if rec.count("Begin") != 1 || rec.count("End") != 1 {
		t.Errorf("events %q, want a Begin and an End as grpc-go reports", rec.String())
	}
	if !called {
		t.Errorf("OnFinish not called")
	}
}

// TestOutHeaderWithoutCredentials: grpc-go's client OutHeader
// carries the outgoing context's metadata (plus user-agent), never the
// per-RPC credentials' tokens (those are added to the HPACK fields only).
// notnets reports hdr.MD after withCredentials, so a logging or tracing
// stats handler sees (and may export) bearer tokens.
func TestOutHeaderWithoutCredentials(t *testing.T) {
	_, dir := serveInProcess(t, "r2hdr", echoGreeter{})
	rec := &r2Stats{}
	cc := dialInProcess(t, "r2hdr", dir, WithStatsHandler(rec),
		WithPerRPCCredentials(staticCreds{md: map[string]string{"authorization": "Bearer secret"}}))
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.outHdr) != 1 {
		t.Fatalf("%d OutHeader events", len(rec.outHdr))
	}
	if v := rec.outHdr[0].Get("authorization"); len(v) != 0 {
		t.Errorf("OutHeader.Header carries the credentials' token %q; grpc-go's does not", v)
	}
}

// TestCallCredentialsPlainError: grpc-go turns a non-status error
// from call credentials (grpc.PerRPCCredentials) into Internal
// (http2_client.go getCallAuthData), and only the dial option's into
// Unauthenticated (getTrAuthData). creds.go uses Unauthenticated for both.
func TestCallCredentialsPlainError(t *testing.T) {
	_, dir := serveInProcess(t, "r2cerr", echoGreeter{})
	cc := dialInProcess(t, "r2cerr", dir)
	_, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{},
		grpc.PerRPCCredentials(staticCreds{err: errors.New("no token")}))
	if status.Code(err) != codes.Internal {
		t.Errorf("call credentials failing with a plain error: %v, want Internal as grpc-go", err)
	}
}

// TestCredentialsBeforeContextMetadata: grpc-go writes the
// credentials' fields before the outgoing context's metadata
// (createHeaderFields), so a server reading md.Get("authorization")[0]
// gets the credentials' token. notnets appends the credentials after.
func TestCredentialsBeforeContextMetadata(t *testing.T) {
	_, dir := serveInProcess(t, "r2order", mdGreeter{})
	cc := dialInProcess(t, "r2order", dir, WithPerRPCCredentials(staticCreds{md: map[string]string{"authorization": "creds"}}))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "ctx")
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.GetMessage(); got != "creds,ctx" {
		t.Errorf("server saw authorization %q, want %q as with grpc-go", got, "creds,ctx")
	}
}

// TestServerEndForUnaryCancelledEarly: a unary method's stream is
// opened (HEADERS only, as through NewStream, or a request still being
// written) and cancelled before the request is whole. The server's stats
// handler got TagRPC and InHeader (serverConn.open) but never Begin or
// End: run never runs (onFrame CANCEL: !st.started -> remove). grpc-go
// runs the handler at HEADERS: InHeader, Begin, End(Canceled). A tracing
// handler's span started in TagRPC is never ended.
func TestServerEndForUnaryCancelledEarly(t *testing.T) {
	rec := &r2Stats{}
	srv, dir := serveInProcess(t, "r2srv", echoGreeter{}, StatsHandler(rec))
	cc := dialInProcess(t, "r2srv", dir)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := cc.NewStream(ctx, &grpc.StreamDesc{}, "/helloworld.Greeter/SayHello"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "server sees the stream", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for sc := range srv.conns {
			if sc.t.Active() == 1 {
				return true
			}
		}
		return false
	})
	cancel()
	waitUntil(t, 10*time.Second, "server drops the stream", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for sc := range srv.conns {
			if sc.t.Active() != 0 {
				return false
			}
		}
		return true
	})
	// A second call, on the same connection, ends after the CANCEL was read.
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "second call's End", func() bool { return rec.count("End") >= 2 })
	if rec.count("InHeader") != 2 || rec.count("Begin") != 2 || rec.count("End") != 2 {
		t.Errorf("server events %q: every stream with InHeader (and a TagRPC) for a known method should get Begin and End", rec.String())
	}
}

// TestNoBeginForCancelledContext: grpc-go starts no attempt (no
// TagRPC, Begin or End) for a call whose context is already over
// (newAttemptLocked). notnets reports Begin and End(Canceled).
func TestNoBeginForCancelledContext(t *testing.T) {
	_, dir := serveInProcess(t, "r2ctx", echoGreeter{})
	rec := &r2Stats{}
	cc := dialInProcess(t, "r2ctx", dir, WithStatsHandler(rec))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{}); status.Code(err) != codes.Canceled {
		t.Fatalf("call: %v", err)
	}
	if ev := rec.String(); ev != "" {
		t.Errorf("events %q for a call whose context was already cancelled; grpc-go reports none", ev)
	}
}

// TestUnaryEndAfterEarlyTrailers: the server ends a unary call
// (TRAILERS, as for a refused or unknown method) while the client is
// still writing a request larger than the ring, and the caller then
// gives up (ctx cancelled). start's write error path calls s.cancel,
// whose finish returns false (the stream already has the server's
// status), so cancel returns early: done() never runs. OnFinish and the
// stats End never fire for this call, and no CANCEL goes out. The same
// happens when the connection closes during the write (onClose finishes
// the stream first). grpc-go calls OnFinish and End once for every call.
func TestUnaryEndAfterEarlyTrailers(t *testing.T) {
	srv, dir := serveInProcess(t, "r2early", echoGreeter{})
	rec := &r2Stats{}
	cc := dialInProcess(t, "r2early", dir, WithRingSize(4096), WithArenaSize(0), WithStatsHandler(rec))
	// The server's reader stops reading: holding its poll lock.
	var sc *serverConn
	waitUntil(t, 10*time.Second, "the server has the connection", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for c := range srv.conns {
			sc = c
		}
		return sc != nil
	})
	sc.t.Conn().PollMu().Lock()
	defer sc.t.Conn().PollMu().Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	finished := 0
	callErr := make(chan error, 1)
	go func() {
		_, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: strings.Repeat("x", 64<<10)},
			grpc.OnFinish(func(error) { mu.Lock(); finished++; mu.Unlock() }))
		callErr <- err
	}()
	waitUntil(t, 10*time.Second, "the request's write waits for ring space", func() bool {
		return anyStack("(*conn).reserve", "(*conn).writeData")
	})
	// The server ends the call (status only), as it does for a call it
	// refuses at once.
	if err := sc.t.Conn().Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	fs := frame.Status{Code: uint32(codes.PermissionDenied), Message: "refused"}
	if err := sc.t.Conn().WriteFrame(context.Background(), frame.TypeTrailers, 0, 1, 0, &fs); err != nil {
		t.Fatal(err)
	}
	sc.t.Conn().Unlock()
	waitUntil(t, 10*time.Second, "the client records the status", func() bool {
		tr := cc.current()
		return tr != nil && !transport.OpenStreamsOf(tr)
	})
	cancel()
	if err := <-callErr; err == nil {
		t.Fatal("call succeeded")
	}
	mu.Lock()
	n := finished
	mu.Unlock()
	if n != 1 {
		t.Errorf("OnFinish ran %d times, want 1", n)
	}
	if rec.count("End") != 1 {
		t.Errorf("client stats events %q: want one End", rec.String())
	}
}

// slowOutHeader is a stats handler that takes its time over the client's
// OutHeader: it returns once ordered has seen InTrailer, or after 300 ms.
type slowOutHeader struct{ ordered *r2Stats }

func (h slowOutHeader) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (h slowOutHeader) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (h slowOutHeader) HandleConn(context.Context, stats.ConnStats) {}
func (h slowOutHeader) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutHeader); !ok {
		return
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	for h.ordered.count("InTrailer") == 0 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
}

// TestClientOutEventsBeforeInEvents: start publishes HEADERS and the
// request, unlocks, and only then reports OutHeader and OutPayload; the
// connection's reader may meanwhile read the reply and report InHeader and
// InTrailer. A stats handler then sees the reply before the request (the
// cause of TestStatsHandlers failing now and then under -race: "got
// Begin InTrailer OutHeader OutPayload(0) End"). grpc-go reports OutHeader
// in NewStream, before the request message is handed to the transport, so
// for a known method no reply event can precede it. Here a slow first
// handler (one that exports synchronously, say) makes it certain.
func TestClientOutEventsBeforeInEvents(t *testing.T) {
	_, dir := serveInProcess(t, "r2order2", echoGreeter{})
	rec := &r2Stats{}
	cc := dialInProcess(t, "r2order2", dir, WithStatsHandler(slowOutHeader{rec}), WithStatsHandler(rec))
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
		t.Fatal(err)
	}
	ev := strings.Fields(rec.String())
	if len(ev) < 3 || ev[1] != "OutHeader" {
		t.Errorf("client events %q: the reply's events come before OutHeader", ev)
	}
}

// peerSeen records, per client event, whether its context has the peer.
type peerSeen struct{ r2Stats }

func (h *peerSeen) HandleRPC(ctx context.Context, s stats.RPCStats) {
	_, ok := peer.FromContext(ctx)
	h.r2Stats.HandleRPC(ctx, s)
	h.mu.Lock()
	h.events[len(h.events)-1] += fmt.Sprintf("(peer=%v)", ok)
	h.mu.Unlock()
}

// TestClientStatsContextHasPeer: grpc-go's client events after
// Begin get the transport stream's context, which carries the peer
// (http2Client.NewStream: peer.NewContext); otelgrpc reads it on
// OutHeader for the server address attributes. notnets passes the
// TagRPC context, without the peer.
func TestClientStatsContextHasPeer(t *testing.T) {
	_, dir := serveInProcess(t, "r2peer", echoGreeter{})
	rec := &peerSeen{}
	cc := dialInProcess(t, "r2peer", dir, WithStatsHandler(rec))
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range strings.Fields(rec.String()) {
		if !strings.HasPrefix(ev, "Begin") && strings.HasSuffix(ev, "(peer=false)") {
			t.Errorf("client events %s: no peer in the context after Begin (grpc-go has it)", rec.String())
			break
		}
	}
}

// blockFirstTag is a server stats handler whose first TagRPC blocks until
// release is closed.
type blockFirstTag struct {
	r2Stats
	first   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blockFirstTag) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	if b.first.CompareAndSwap(false, true) {
		close(b.entered)
		<-b.release
	}
	return ctx
}

// TestSlowStatsHandlerHoldsUpOnlyItsCall: the server's stats handlers get
// a call's TagRPC and InHeader on the goroutine that runs it, as in
// grpc-go, so a slow one holds up that call only, not the connection's
// reader and the other calls on it.
func TestSlowStatsHandlerHoldsUpOnlyItsCall(t *testing.T) {
	blk := &blockFirstTag{entered: make(chan struct{}), release: make(chan struct{})}
	_, dir := serveInProcess(t, "r2slow", echoGreeter{}, StatsHandler(blk))
	cc := dialInProcess(t, "r2slow", dir)
	c := pb.NewGreeterClient(cc)
	first := make(chan error, 1)
	go func() {
		_, err := c.SayHello(context.Background(), &pb.HelloRequest{Name: "first"})
		first <- err
	}()
	<-blk.entered
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "second"}); err != nil {
		t.Errorf("a call while another's stats handler blocks: %v", err)
	}
	close(blk.release)
	if err := <-first; err != nil {
		t.Errorf("the held call: %v", err)
	}
}
