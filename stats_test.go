package notnets_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	notnets "github.com/notnets/notnets"
)

type statsKey struct{}

// statsRecorder is a stats handler that writes down what it sees, one word
// per event, and what was wrong with it: an event without the tag its
// TagRPC or TagConn put in the context, or with the wrong Client flag. On
// the client, TagRPC also adds outgoing metadata, as a tracing handler
// adds its trace context; the server's InHeader must carry it.
type statsRecorder struct {
	client bool
	mu     sync.Mutex
	cond   *sync.Cond
	events []string
}

func newStatsRecorder(client bool) *statsRecorder {
	r := &statsRecorder{client: client}
	r.cond = sync.NewCond(&r.mu)
	return r
}

func (r *statsRecorder) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	ctx = context.WithValue(ctx, statsKey{}, "rpc "+info.FullMethodName)
	if r.client {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-echo-trace", "t1")
	}
	return ctx
}

func (r *statsRecorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, statsKey{}, "conn")
}

func (r *statsRecorder) HandleConn(ctx context.Context, s stats.ConnStats) {
	ev := strings.TrimPrefix(fmt.Sprintf("%T", s), "*stats.")
	if ctx.Value(statsKey{}) != "conn" {
		ev += "!untagged"
	}
	if s.IsClient() != r.client {
		ev += "!client"
	}
	r.add(ev)
}

func (r *statsRecorder) HandleRPC(ctx context.Context, s stats.RPCStats) {
	ev := strings.TrimPrefix(fmt.Sprintf("%T", s), "*stats.")
	switch s := s.(type) {
	case *stats.Begin:
		ev = fmt.Sprintf("Begin(%v,%v)", s.IsClientStream, s.IsServerStream)
	case *stats.InPayload:
		ev = fmt.Sprintf("InPayload(%d)", s.Length)
	case *stats.OutPayload:
		ev = fmt.Sprintf("OutPayload(%d)", s.Length)
	case *stats.InHeader:
		if !r.client && (len(s.Header.Get("x-echo-trace")) != 1 || s.FullMethod == "") {
			ev += "!notrace"
		}
	case *stats.End:
		ev = fmt.Sprintf("End(%v)", status.Code(s.Error))
		if s.EndTime.Before(s.BeginTime) || s.BeginTime.IsZero() {
			ev += "!times"
		}
	}
	if tag, _ := ctx.Value(statsKey{}).(string); !strings.HasPrefix(tag, "rpc /") {
		ev += "!untagged"
	}
	if s.IsClient() != r.client {
		ev += "!client"
	}
	r.add(ev)
}

func (r *statsRecorder) add(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	r.cond.Broadcast()
}

// take returns the events so far, once there are at least n (or after
// 10 s), and forgets them. Events of a call may come after the other side
// has seen it end, so tests wait for as many as they expect.
func (r *statsRecorder) take(n int) string {
	timer := time.AfterFunc(10*time.Second, r.cond.Broadcast)
	defer timer.Stop()
	deadline := time.Now().Add(10 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.events) < n && time.Now().Before(deadline) {
		r.cond.Wait()
	}
	s := strings.Join(r.events, " ")
	r.events = nil
	return s
}

// serverStats records the server process's events when the test server
// runs with NOTNETS_TEST_STATS.
var serverStats = newStatsRecorder(false)

// TestStatsHandlers runs calls of each kind against a server in another
// process, with a stats handler on both sides, and checks the events each
// side reported, in order.
func TestStatsHandlers(t *testing.T) {
	srv := startServer(t, "NOTNETS_TEST_STATS=1")
	rec := newStatsRecorder(true)
	cc := srv.dial(t, notnets.WithStatsHandler(rec))
	c := semanticsClient(cc)
	if got := rec.take(1); got != "ConnBegin" {
		t.Errorf("client connection events %q, want ConnBegin", got)
	}
	if got := srv.command(t, "stats 1"); got != "ConnBegin" {
		t.Errorf("server connection events %q, want ConnBegin", got)
	}
	body := &testpb.Payload{Body: make([]byte, 10)}
	tests := []struct {
		name         string
		call         func() error
		client, serv string
	}{
		{"unary", func() error {
			_, err := c.UnaryCall(withMode(context.Background(), "echo", "1"), &testpb.SimpleRequest{Payload: body})
			return err
		},
			// A unary call waits for the status, then decodes the reply.
			"Begin(false,false) OutHeader OutPayload(14) InHeader InTrailer InPayload(14) End(OK)",
			"InHeader Begin(false,false) InPayload(14) OutHeader OutPayload(14) OutTrailer End(OK)"},
		{"unary error", func() error {
			_, err := c.UnaryCall(withMode(context.Background(), "error", "2"), &testpb.SimpleRequest{})
			if status.Code(err) != codes.Unknown {
				return fmt.Errorf("got %v, want Unknown", err)
			}
			return nil
		},
			"Begin(false,false) OutHeader OutPayload(0) InTrailer End(Unknown)",
			"InHeader Begin(false,false) InPayload(0) OutTrailer End(Unknown)"},
		{"bidi", func() error {
			stream, err := c.FullDuplexCall(context.Background())
			if err != nil {
				return err
			}
			for i := 0; i < 2; i++ {
				if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: body}); err != nil {
					return err
				}
				if _, err := stream.Recv(); err != nil {
					return err
				}
			}
			stream.CloseSend()
			if _, err := stream.Recv(); err != io.EOF {
				return fmt.Errorf("end of stream: %v", err)
			}
			return nil
		},
			"Begin(true,true) OutHeader OutPayload(14) InHeader InPayload(14) OutPayload(14) InPayload(14) InTrailer End(OK)",
			"InHeader Begin(true,true) InPayload(14) OutHeader OutPayload(14) InPayload(14) OutPayload(14) OutTrailer End(OK)"},
		{"unknown method", func() error {
			err := cc.Invoke(context.Background(), "/no.Such/Method", &testpb.Empty{}, &testpb.Empty{})
			if status.Code(err) != codes.Unimplemented {
				return fmt.Errorf("got %v, want Unimplemented", err)
			}
			return nil
		},
			// No method runs, so no Begin or End on the server, as in grpc-go.
			"Begin(false,false) OutHeader OutPayload(0) InTrailer End(Unimplemented)",
			"InHeader OutTrailer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != nil {
				t.Fatal(err)
			}
			if got := rec.take(len(strings.Fields(tc.client))); got != tc.client {
				t.Errorf("client events:\n got %s\nwant %s", got, tc.client)
			}
			if got := srv.command(t, fmt.Sprintf("stats %d", len(strings.Fields(tc.serv)))); got != tc.serv {
				t.Errorf("server events:\n got %s\nwant %s", got, tc.serv)
			}
		})
	}
	cc.Close()
	if got := rec.take(1); got != "ConnEnd" {
		t.Errorf("client events at close %q, want ConnEnd", got)
	}
	if got := srv.command(t, "stats 1"); got != "ConnEnd" {
		t.Errorf("server events at close %q, want ConnEnd", got)
	}
}

// TestCloseEndsOpenStreams closes a ClientConn with a stream open that
// nobody reads: as in grpc-go, its OnFinish and stats End run at Close.
func TestCloseEndsOpenStreams(t *testing.T) {
	srv := startServer(t)
	rec := newStatsRecorder(true)
	cc := srv.dial(t, notnets.WithStatsHandler(rec))
	var finished error
	stream, err := semanticsClient(cc).FullDuplexCall(context.Background(), grpc.OnFinish(func(err error) { finished = err }))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
		t.Fatal(err)
	}
	cc.Close()
	if got := rec.take(6); !strings.HasSuffix(got, "End(Canceled) ConnEnd") && !strings.HasSuffix(got, "ConnEnd End(Canceled)") {
		t.Errorf("events %q, want the stream's End(Canceled) at Close", got)
	}
	if status.Code(finished) != codes.Canceled {
		t.Errorf("OnFinish got %v, want Canceled", finished)
	}
}
