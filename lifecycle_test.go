package notnets

// Lifecycle tests: connections and calls that must end, never wait
// forever, when servers stop, clients close or connections fail. None uses a sleep to order
// events: they wait for conditions (with a deadline that only decides
// failure), or order events by holding a lock of the library.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"
)

// lifeServe serves echoGreeter (and extra services) in this process
// under name in a new pool. Serve's result goes to the returned channel.
func lifeServe(t *testing.T, name string, register func(*Server), lopts []ListenOption, sopts ...ServerOption) (*Server, *Listener, string, chan error) {
	t.Helper()
	dir := t.TempDir()
	lis, err := Listen(name, append([]ListenOption{WithPool(dir)}, lopts...)...)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(sopts...)
	pb.RegisterGreeterServer(srv, echoGreeter{})
	if register != nil {
		register(srv)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	return srv, lis, dir, served
}

// waitUntil polls cond (no sleeping) until it holds, failing the test
// after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, d)
		}
		runtime.Gosched()
	}
}

// stacks returns every goroutine's stack.
func stacks() []string {
	buf := make([]byte, 4<<20)
	return strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
}

func anyStack(all ...string) bool {
	for _, g := range stacks() {
		ok := true
		for _, s := range all {
			ok = ok && strings.Contains(g, s)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestServeReleasesConnAcceptedWhileStopping: a connection that
// Serve accepts after Stop or GracefulStop began is failed at once
// (server.go, Serve: sc.t.Conn().Fail(errServerStopping); continue). Its readRole
// never ran, so nothing calls endReader: release blocks on readerDone
// forever, and the segment stays mapped (and its shared memory allocated)
// for the life of the process.
//
// Interleaving forced here: Serve has passed its first stopped/draining
// check and waits in accept; draining is set (as GracefulStop does before
// it closes the listeners); a client knocks; accept returns it; Serve sees
// draining and fails the connection.
func TestServeReleasesConnAcceptedWhileStopping(t *testing.T) {
	// Cross-host: the segment is a file of the pool, whose mapping the
	// end of the test looks for.
	srv, lis, dir, served := lifeServe(t, "leak", nil, []ListenOption{WithCrossHost()})
	defer srv.Stop()
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "Serve registers the listener", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.lis[lis]
	})
	srv.draining.Store(true) // GracefulStop's first step
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cc, err := Dial(ctx, "leak", WithPool(dir)); err == nil {
		cc.Close()
	}
	lis.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Serve has returned: the failed connection's fail() has run. Once the
	// client's side is released too, no segment of this pool may stay mapped.
	mapped := func() []string {
		b, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Skip("no /proc/self/maps")
		}
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, realDir) {
				out = append(out, l)
			}
		}
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(mapped()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a connection Serve accepted and failed while draining is never released (readerDone never closed):\n%s",
				strings.Join(mapped(), "\n"))
		}
		runtime.Gosched()
	}
}

// doneProbe is a context that reports the first call of Done: in Invoke,
// that is the select in ClientConn.transport that waits for a connection.
type doneProbe struct {
	context.Context
	once    sync.Once
	reached chan struct{}
}

func (p *doneProbe) Done() <-chan struct{} {
	p.once.Do(func() { close(p.reached) })
	return p.Context.Done()
}

// TestWaitForReadyCallEndsAtClose: a call with WaitForReady(true)
// that waits for a new connection (ClientConn.transport) selects on
// cc.ready and ctx.Done only. Close sets closed and closes quit, but never
// closes ready, and reconnectLoop returns without closing it: the call
// waits until its context ends, forever without a deadline. grpc-go fails
// such calls with ErrClientConnClosing.
func TestWaitForReadyCallEndsAtClose(t *testing.T) {
	srv, _, dir, _ := lifeServe(t, "wfr", nil, nil)
	cc, err := Dial(context.Background(), "wfr", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop() // the connection fails; reconnecting fails (no listener)
	waitUntil(t, 10*time.Second, "the client loses its connection", func() bool { return cc.conn() == nil })

	base, cancel := context.WithCancel(context.Background())
	defer cancel() // unblocks the call if the test fails
	ctx := &doneProbe{Context: base, reached: make(chan struct{})}
	result := make(chan error, 1)
	go func() {
		result <- cc.Invoke(ctx, "/helloworld.Greeter/SayHello", &pb.HelloRequest{Name: "x"}, new(pb.HelloReply), grpc.WaitForReady(true))
	}()
	select {
	case <-ctx.reached: // the call has checked closed and waits in the select
	case err := <-result:
		t.Fatalf("call returned before waiting for a connection: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the call never waited for a connection")
	}
	cc.Close()
	select {
	case err := <-result:
		if status.Code(err) != codes.Canceled {
			t.Fatalf("call ended with %v, want ErrClientConnClosing", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a WaitForReady call waiting for a connection still blocks 10 s after Close (cc.ready is never closed)")
	}
}

// TestReconnectSurvivesEarlyFailure: when a new transport fails
// before reconnectLoop (or Dial) installs it as cc.cur, its reader calls
// cc.lost(t), which returns at once because cc.cur != t (it is nil). Then
// reconnectLoop installs the dead transport and clears cc.reconnect: the
// failure notice was dropped, nobody reconnects, and every later call fails
// with the dead connection's error for the life of the ClientConn, even
// with a healthy server listening.
//
// Interleaving forced here by holding the liveness lock, which connect
// takes (watch) after starting the new transport's reader and before
// returning it: the server fails the new connection right after accepting
// it (as Stop or GracefulStop racing an accept does), the client's reader
// sees it and calls lost, and only then connect returns.
func TestReconnectSurvivesEarlyFailure(t *testing.T) {
	srv, _, dir, _ := lifeServe(t, "recon", nil, nil)
	defer srv.Stop()
	cc, err := Dial(context.Background(), "recon", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	greeter := pb.NewGreeterClient(cc)
	if _, err := greeter.SayHello(context.Background(), &pb.HelloRequest{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	first := map[*serverConn]bool{}
	srv.mu.Lock()
	for sc := range srv.conns {
		first[sc] = true
	}
	srv.mu.Unlock()

	transport.LockLiveness()
	locked := true
	defer func() {
		if locked {
			transport.UnlockLiveness()
		}
	}()
	cc.conn().Fail(status.Error(codes.Unavailable, "review: first connection cut")) // lost -> reconnectLoop
	waitUntil(t, 10*time.Second, "connectLoop's connect has the new transport's reader running and waits in watch", func() bool {
		return anyStack("transport.watch(", "connectLoop")
	})
	var second *serverConn
	waitUntil(t, 10*time.Second, "the server holds the new connection", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for sc := range srv.conns {
			if !first[sc] {
				second = sc
			}
		}
		return second != nil
	})
	second.t.Conn().Fail(status.Error(codes.Unavailable, "review: new connection cut at once"))
	waitUntil(t, 10*time.Second, "the new transport's reader sees the failure (and calls lost) and exits", func() bool {
		return !anyStack("(*Client).readLoop")
	})
	transport.UnlockLiveness()
	locked = false

	// The server is healthy: the client must get a working connection again.
	deadline := time.Now().Add(10 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, last = greeter.SayHello(ctx, &pb.HelloRequest{Name: "x"}, grpc.WaitForReady(true))
		cancel()
		if last == nil {
			return
		}
		runtime.Gosched()
	}
	cc.mu.Lock()
	reconnecting, cur := cc.anyAttempting(), cc.current()
	cc.mu.Unlock()
	t.Fatalf("calls still fail 10 s after the failure with a healthy server: %v (reconnecting=%v, current transport closed: %v)",
		last, reconnecting, cur != nil && transport.ConnOf(cur).CloseErr() != nil)
}

// blockDesc is a unary service whose handler ignores its context and
// waits on the channel in blockImpl.
var blockDesc = grpc.ServiceDesc{
	ServiceName: "review.Block",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Wait",
		Handler: func(impl any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(pb.HelloRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			b := impl.(*blockImpl)
			close(b.entered)
			<-b.release
			return &pb.HelloReply{}, nil
		},
	}},
}

type blockImpl struct{ entered, release chan struct{} }

// TestStopDoesNotWaitForInlineHandler: a unary handler that runs
// inline on the reading goroutine holds the reading role until the
// monitor hands it off (rescueInline, which only looks at s.conns). Stop
// (and any close: onClose deletes the connection from s.conns) takes the
// connection out of s.conns first, so a handler that started less than a
// monitor tick before -- or while Stop held s.mu closing the listeners,
// which blocks rescueInline -- keeps the reading role; endReader then waits
// for the handler to return, and Stop waits in waitReleased. A handler
// that ignores cancellation (waits for something released after Stop
// returns) hangs Stop for good; the same handler on a worker does not.
//
// The monitor's first tick is kept from happening by marking it running
// (s.monitoring), as if it had not ticked yet.
func TestStopDoesNotWaitForInlineHandler(t *testing.T) {
	b := &blockImpl{entered: make(chan struct{}), release: make(chan struct{})}
	srv, _, dir, _ := lifeServe(t, "inline", func(s *Server) { s.RegisterService(&blockDesc, b) }, nil)
	srv.workers.HoldMonitor() // no monitor: as before its first tick
	released := false
	release := func() {
		if !released {
			released = true
			close(b.release)
		}
	}
	defer release()
	cc, err := Dial(context.Background(), "inline", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	go cc.Invoke(context.Background(), "/review.Block/Wait", &pb.HelloRequest{}, new(pb.HelloReply))
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("handler never ran")
	}
	stopped := make(chan struct{})
	go func() { srv.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		release()
		<-stopped
		t.Fatal("Stop waited for a handler that ran inline and ignores cancellation (it kept the reading role, so readerDone stayed open)")
	}
}

// sinkDesc is a client-streaming service that reads every message, counts
// those it cannot decode and goes on, and answers with the count.
var sinkDesc = grpc.ServiceDesc{
	ServiceName: "review.Sink",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Drain",
		ClientStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			bad := 0
			for {
				err := stream.RecvMsg(new(pb.HelloRequest))
				if err == io.EOF {
					return stream.SendMsg(&pb.HelloReply{Message: fmt.Sprint(bad)})
				}
				if status.Code(err) == codes.Internal {
					bad++ // undecodable: skip it, as grpc-go lets a handler do
					continue
				}
				if err != nil {
					return err
				}
			}
		},
	}},
}

// TestUndecodableMessagesReturnWindow: serverStream.RecvMsg returns
// a decode error (and a ResourceExhausted inMsg) before consumed, so the
// bytes of a message the handler could not decode are never returned to
// the client's window. A handler that goes on reading after such an error
// (grpc-go returns the window as the bytes are read, so it works there)
// gets nothing more once a window's worth has failed: the client's SendMsg
// waits in takeQuota for an update that never comes.
func TestUndecodableMessagesReturnWindow(t *testing.T) {
	_, _, dir, _ := lifeServe(t, "sink", func(s *Server) { s.RegisterService(&sinkDesc, struct{}{}) }, nil)
	cc, err := Dial(context.Background(), "sink", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := cc.NewStream(ctx, &sinkDesc.Streams[0], "/review.Sink/Drain")
	if err != nil {
		t.Fatal(err)
	}
	// Field 1 as bytes that are not UTF-8: HelloRequest.name (a proto3
	// string) fails to decode.
	bad := &wrapperspb.BytesValue{Value: bytes.Repeat([]byte{0xff}, 64<<10)}
	const n = 2 * defaultWindow / (64 << 10) // twice the window
	for i := 0; i < n; i++ {
		if err := stream.SendMsg(bad); err != nil {
			t.Fatalf("SendMsg %d of %d (%d KiB sent, window %d KiB): %v", i+1, n, i*64, defaultWindow>>10, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var reply pb.HelloReply
	if err := stream.RecvMsg(&reply); err != nil {
		t.Fatal(err)
	}
	if reply.Message != fmt.Sprint(n) {
		t.Fatalf("handler counted %s undecodable messages, want %d", reply.Message, n)
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

// TestGracefulStopKeepsListenerWhileDraining: while GracefulStop waits for
// a call in flight, the instance's listener file stays in the pool,
// closed and marked draining with its call counted, and no new client
// connects to it; once the call ends, GracefulStop removes the file.
func TestGracefulStopKeepsListenerWhileDraining(t *testing.T) {
	dir := t.TempDir()
	lis, err := Listen("drain", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	base := lis.Addr().(*Addr).Instance
	g := blockGreeter{started: make(chan struct{}, 1), release: make(chan struct{})}
	srv := NewServer()
	pb.RegisterGreeterServer(srv, g)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer srv.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := Dial(ctx, "drain", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	called := make(chan error, 1)
	go func() {
		_, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "x"})
		called <- err
	}()
	<-g.started
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()

	var info pool.ListenerInfo
	waitUntil(t, 10*time.Second, "the listener reads closed and draining", func() bool {
		info, err = pool.ReadListener(dir, base, pool.OwnerOnly)
		return err == nil && info.State == pool.StateClosed && info.Draining == 1
	})
	if info.InFlight != 1 {
		t.Errorf("draining listener counts %d calls in flight, want 1", info.InFlight)
	}
	if _, err := os.Lstat(filepath.Join(dir, pool.SockFile(base))); !os.IsNotExist(err) {
		t.Errorf("the draining instance's socket is still there: %v", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	if cc2, err := Dial(dctx, "drain", WithPool(dir)); status.Code(err) != codes.Unavailable {
		t.Errorf("Dial of a service whose one instance drains = %v, want Unavailable", err)
		if err == nil {
			cc2.Close()
		}
	}
	dcancel()
	select {
	case <-stopped:
		t.Fatal("GracefulStop returned with a call in flight")
	default:
	}
	// Still there, for as long as the call runs.
	if info, err := pool.ReadListener(dir, base, pool.OwnerOnly); err != nil || info.Draining != 1 || info.InFlight != 1 {
		t.Errorf("the listener during GracefulStop, a call in flight: %+v, %v; want it draining with the call", info, err)
	}
	close(g.release)
	if err := <-called; err != nil {
		t.Errorf("the call in flight: %v", err)
	}
	<-stopped
	if err := <-served; err != nil {
		t.Errorf("Serve after GracefulStop: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, pool.ListenerFile(base))); !os.IsNotExist(err) {
		t.Errorf("the listener file outlives GracefulStop: %v", err)
	}
}
