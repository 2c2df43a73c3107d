package notnets

// Review 3 of MaxConcurrentStreams, the connectivity API and the stats
// changes. Tests named Test* fail on the code they describe;
// the others pass and guard what was found correct.

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/transport"
)

// modeService answers as the "test-mode" metadata says: "err" fails,
// "block" waits for the call's context; otherwise it answers at once.
type modeService struct {
	testgrpc.UnimplementedTestServiceServer
}

type modeGreeter struct{ pb.UnimplementedGreeterServer }

func (modeGreeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	if in.GetName() == "deadline" { // the time the handler has left
		dl, _ := ctx.Deadline()
		return &pb.HelloReply{Message: time.Until(dl).String()}, nil
	}
	return &pb.HelloReply{Message: in.GetName()}, nil
}

func callMode(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("test-mode"); len(v) > 0 {
		return v[0]
	}
	return ""
}

func modeWith(ctx context.Context, mode string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "test-mode", mode)
}

func (modeService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	switch callMode(ctx) {
	case "err":
		return nil, status.Error(codes.FailedPrecondition, "refused")
	case "block":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &testpb.SimpleResponse{}, nil
}

func (modeService) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	for range in.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
	if callMode(stream.Context()) == "block" {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	return nil
}

func (modeService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	if callMode(stream.Context()) == "err" {
		return status.Error(codes.Aborted, "no")
	}
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
}

func (modeService) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{})
		}
		if err != nil {
			return err
		}
	}
}

// modeServe serves modeService and a greeter under name in dir (a new pool
// if dir is "") until the test ends.
func modeServe(t *testing.T, name, dir string, sopts ...ServerOption) (*Server, string) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	lis, err := Listen(name, WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(sopts...)
	testgrpc.RegisterTestServiceServer(srv, modeService{})
	pb.RegisterGreeterServer(srv, modeGreeter{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return srv, dir
}

// TestStreamLimitStress runs every way a call can end, from many
// goroutines, against a server that allows one or two open streams: the client
// never trips T11 (the connection survives, every call gets the status
// its pattern should), and afterwards neither side counts a stream.
func TestStreamLimitStress(t *testing.T) {
	for _, limit := range []uint32{1, 2} {
		t.Run(fmt.Sprint("limit", limit), func(t *testing.T) { modeStress(t, limit) })
	}
}

func modeStress(t *testing.T, limit uint32) {
	srv, dir := modeServe(t, "limit", "", MaxConcurrentStreams(limit))
	cc := dialInProcess(t, "limit", dir)
	cn := cc.conn()
	c := testgrpc.NewTestServiceClient(cc)
	bg := context.Background()

	patterns := []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"unary ok", func(ctx context.Context) error {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		}},
		{"unary error", func(ctx context.Context) error {
			_, err := c.UnaryCall(modeWith(ctx, "err"), &testpb.SimpleRequest{})
			if status.Code(err) != codes.FailedPrecondition {
				return fmt.Errorf("got %v", err)
			}
			return nil
		}},
		{"unary deadline", func(ctx context.Context) error {
			dctx, cancel := context.WithTimeout(modeWith(ctx, "block"), time.Millisecond)
			defer cancel()
			_, err := c.UnaryCall(dctx, &testpb.SimpleRequest{})
			if status.Code(err) != codes.DeadlineExceeded {
				return fmt.Errorf("got %v", err)
			}
			return nil
		}},
		{"unknown method", func(ctx context.Context) error {
			err := cc.Invoke(ctx, "/nope.Nope/X", &testpb.SimpleRequest{}, new(testpb.SimpleResponse))
			if status.Code(err) != codes.Unimplemented {
				return fmt.Errorf("got %v", err)
			}
			return nil
		}},
		{"request too large", func(ctx context.Context) error {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 7}, grpc.MaxCallSendMsgSize(1))
			if status.Code(err) != codes.ResourceExhausted {
				return fmt.Errorf("got %v", err)
			}
			return nil
		}},
		{"server stream read all", func(ctx context.Context) error {
			s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: make([]*testpb.ResponseParameters, 3)})
			if err != nil {
				return err
			}
			for {
				if _, err := s.Recv(); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
			}
		}},
		{"server stream cancel after one", func(ctx context.Context) error {
			cctx, cancel := context.WithCancel(modeWith(ctx, "block"))
			s, err := c.StreamingOutputCall(cctx, &testpb.StreamingOutputCallRequest{ResponseParameters: make([]*testpb.ResponseParameters, 3)})
			if err != nil {
				cancel()
				return err
			}
			_, err = s.Recv()
			cancel()
			if err != nil {
				return err
			}
			for {
				if _, err := s.Recv(); status.Code(err) == codes.Canceled {
					return nil
				} else if err != nil {
					return fmt.Errorf("after cancel: %v", err)
				}
			}
		}},
		{"server stream ended, then cancelled unread", func(ctx context.Context) error {
			cctx, cancel := context.WithCancel(ctx)
			s, err := c.StreamingOutputCall(cctx, &testpb.StreamingOutputCallRequest{ResponseParameters: make([]*testpb.ResponseParameters, 2)})
			if err != nil {
				cancel()
				return err
			}
			s.Header()
			cancel()
			return nil
		}},
		{"bidi half-close", func(ctx context.Context) error {
			s, err := c.FullDuplexCall(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
				return err
			}
			if _, err := s.Recv(); err != nil {
				return err
			}
			s.CloseSend()
			if _, err := s.Recv(); err != io.EOF {
				return fmt.Errorf("after CloseSend: %v", err)
			}
			return nil
		}},
		{"bidi server error", func(ctx context.Context) error {
			s, err := c.FullDuplexCall(modeWith(ctx, "err"))
			if err != nil {
				return err
			}
			s.Send(&testpb.StreamingOutputCallRequest{}) // may be io.EOF
			if _, err := s.Recv(); status.Code(err) != codes.Aborted {
				return fmt.Errorf("got %v", err)
			}
			return nil
		}},
		{"client stream cancelled", func(ctx context.Context) error {
			cctx, cancel := context.WithCancel(ctx)
			s, err := c.StreamingInputCall(cctx)
			if err != nil {
				cancel()
				return err
			}
			s.Send(&testpb.StreamingInputCallRequest{})
			cancel()
			// The cancel is asynchronous (newStream's AfterFunc): the
			// half-close and the server's answer may beat it.
			if _, err := s.CloseAndRecv(); err != nil && status.Code(err) != codes.Canceled {
				return fmt.Errorf("got %v", err)
			}
			return nil
		}},
		{"client stream ok", func(ctx context.Context) error {
			s, err := c.StreamingInputCall(ctx)
			if err != nil {
				return err
			}
			s.Send(&testpb.StreamingInputCallRequest{})
			_, err = s.CloseAndRecv()
			return err
		}},
	}

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 60 {
				p := patterns[(g+i)%len(patterns)]
				ctx, cancel := context.WithTimeout(bg, 20*time.Second)
				err := p.run(ctx)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("%s: %v", p.name, err)
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
	if cur := cc.conn(); cur != cn || cn.CloseErr() != nil {
		t.Fatalf("the connection was replaced or closed: %v", cn.CloseErr())
	}
	tr := cc.current()
	used := transport.SlotsUsed(tr)
	if used != 0 {
		t.Errorf("client counts %d streams after every call ended", used)
	}
	waitUntil(t, 10*time.Second, "the server counts no open stream", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for sc := range srv.conns {
			if sc.t.OpenStreams() != 0 {
				return false
			}
		}
		return true
	})
}

// modeStateProbe reports every call of Done: in WaitForStateChange, once
// per wait, after the state's channel was taken.
type modeStateProbe struct {
	context.Context
	waits chan struct{}
}

func (p *modeStateProbe) Done() <-chan struct{} {
	p.waits <- struct{}{}
	return p.Context.Done()
}

// TestSlotWaiterMovesOnAfterGoAway: a call waiting for a place
// under the server's limit (takeSlot) waits on the transport it took
// before the server said GOAWAY. takeSlot wakes only for a freed place,
// the call's context or the connection's close, so the call stays there
// while the ClientConn is READY on a new connection; when a place frees at
// last, register fails with the GOAWAY's Unavailable even though the call
// asked to wait for ready. grpc-go fails such waiters at GOAWAY
// (errStreamDrain) and retries them transparently on the new transport.
func TestSlotWaiterMovesOnAfterGoAway(t *testing.T) {
	srv1, dir := modeServe(t, "goaway", "", MaxConcurrentStreams(1))
	cc := dialInProcess(t, "goaway", dir, WithBackoff(backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1, MaxDelay: time.Millisecond}))

	// A holds the only place.
	actx, acancel := context.WithCancel(modeWith(context.Background(), "block"))
	defer acancel()
	if _, err := testgrpc.NewTestServiceClient(cc).FullDuplexCall(actx); err != nil {
		t.Fatal(err)
	}
	// B waits for it.
	bctx, bcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer bcancel()
	res := make(chan error, 1)
	go func() {
		_, err := pb.NewGreeterClient(cc).SayHello(bctx, &pb.HelloRequest{Name: "b"}, grpc.WaitForReady(true))
		res <- err
	}()
	waitUntil(t, 10*time.Second, "B waits for a place", func() bool { return anyStack("(*Client).TakeSlot") })

	stopped := make(chan struct{})
	go func() { srv1.GracefulStop(); close(stopped) }() // GOAWAY; waits for A
	waitUntil(t, 10*time.Second, "the client takes the GOAWAY", func() bool { return cc.GetState() != connectivity.Ready })
	modeServe(t, "goaway", dir) // a new server under the same name
	waitUntil(t, 10*time.Second, "the client is READY on the new server", func() bool { return cc.GetState() == connectivity.Ready })

	select {
	case err := <-res:
		if err != nil {
			t.Errorf("B on the new connection: %v", err)
		}
	case <-time.After(5 * time.Second):
		acancel() // A ends: B gets its place on the old connection
		err := <-res
		t.Errorf("B still waited for a place on the GOAWAY'd connection 5 s after the ClientConn was READY again; once A ended it got %v", err)
	}
	acancel()
	<-stopped
}

// TestEndWhenCancelledAfterTrailers: the server has ended a
// server-streaming call (its TRAILERS are in) and the caller, who never
// reads to the end, cancels the call's context. The AfterFunc in
// newStream calls cancel, whose finish finds a status already there and
// returns without done: OnFinish and the stats End never run (a tracing
// span is never ended). The same holds after the connection is lost
// (onClose finished the stream). grpc-go's watcher calls cs.finish at
// ctx.Done in both cases.
func TestEndWhenCancelledAfterTrailers(t *testing.T) {
	_, dir := modeServe(t, "end", "")
	cc := dialInProcess(t, "end", dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	finished := make(chan error, 1)
	s, err := testgrpc.NewTestServiceClient(cc).StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{},
		grpc.OnFinish(func(err error) { finished <- err }))
	if err != nil {
		t.Fatal(err)
	}
	// No headers, no messages: Header returns once the TRAILERS are in.
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-finished:
		if status.Code(err) != codes.Canceled && err != nil {
			t.Errorf("OnFinish got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("OnFinish never ran for a call whose context was cancelled after its trailers came")
	}
}

// modeNopStats is a stats handler that does nothing.
type modeNopStats struct{}

func (modeNopStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, modeNopStats{}, 1)
}
func (modeNopStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (modeNopStats) HandleConn(context.Context, stats.ConnStats)                       {}
func (modeNopStats) HandleRPC(context.Context, stats.RPCStats)                         {}

// TestServerStatsCloseRace (fails only under -race) opens
// streaming calls and closes their connection at once: the server's
// onClose calls neverRan, whose startStats (commit 76a2f72) wins the
// statsBegun CAS and writes st.ctx, while run, already submitted, loses
// the CAS and serves the handler, which reads st.ctx (Context) with no
// happens-before between them.
func TestServerStatsCloseRace(t *testing.T) {
	_, dir := modeServe(t, "ctxrace", "", StatsHandler(modeNopStats{}))
	for range 200 {
		cc := dialInProcess(t, "ctxrace", dir)
		for range 4 {
			testgrpc.NewTestServiceClient(cc).FullDuplexCall(context.Background())
		}
		cc.Close()
	}
}

// TestTimeoutMeasuredAfterSlotWait: start measures the
// HEADERS timeout (requestHeaders) before takeSlot waits for a place, so
// a call that waited sends the time it had before the wait. The server's
// handler then gets a deadline later than the client's by the whole wait,
// and a CANCEL(DeadlineExceeded) does not cancel its context (11.6 counts
// on the handler's own deadline ending it "at the same moment"): the
// handler runs on after the client gave up.
func TestTimeoutMeasuredAfterSlotWait(t *testing.T) {
	_, dir := modeServe(t, "timeout", "", MaxConcurrentStreams(1))
	cc := dialInProcess(t, "timeout", dir)
	actx, acancel := context.WithCancel(context.Background())
	defer acancel()
	if _, err := testgrpc.NewTestServiceClient(cc).FullDuplexCall(actx); err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer bcancel()
	type result struct {
		left string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		r, err := pb.NewGreeterClient(cc).SayHello(bctx, &pb.HelloRequest{Name: "deadline"})
		res <- result{r.GetMessage(), err}
	}()
	waitUntil(t, 10*time.Second, "B waits for a place", func() bool { return anyStack("(*Client).TakeSlot") })
	dl, _ := bctx.Deadline()
	// The wait under test: half of B's time passes while it waits.
	waitUntil(t, 10*time.Second, "half of B's time has passed", func() bool { return time.Until(dl) <= 2*time.Second })
	acancel()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	serverLeft, err := time.ParseDuration(r.left)
	if err != nil {
		t.Fatal(err)
	}
	if clientLeft := time.Until(dl); serverLeft > clientLeft+500*time.Millisecond {
		t.Errorf("the handler had %v left, the client %v: the timeout was measured before the wait for a place", serverLeft, clientLeft)
	}
}
