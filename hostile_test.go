package notnets

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/frame"
)

type echoGreeter struct{ pb.UnimplementedGreeterServer }

// serveGreeter serves echoGreeter under name in a new pool in this process
// until the test ends, and returns the pool.
func serveGreeter(t *testing.T, name string) string {
	_, dir := serveInProcess(t, name, echoGreeter{})
	return dir
}

func (echoGreeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// TestHostileClientFrames writes broken frames and ring counters into a
// live connection, as a buggy or hostile client could, and checks that the
// server closes only that connection, with a status that names the problem,
// and keeps serving the others. (The server runs in this process here so
// that the test can reach into the client's side of the segment; the
// end-to-end tests run it in another.)
func TestHostileClientFrames(t *testing.T) {
	dir := serveGreeter(t, "hostile")
	dial := func() *ClientConn {
		cc, err := Dial(context.Background(), "hostile", WithPool(dir))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	// frame writes one record of the given type and payload on stream.
	frameOf := func(typ frame.Type, flags frame.Flags, stream, aux uint32, payload []byte) func(*conn) {
		return func(c *conn) {
			rec := c.Out().Reserve(len(payload), byte(typ))
			frame.Put(rec, flags, stream, aux)
			copy(rec[frame.HeaderSize:], payload)
			c.Out().Publish()
		}
	}
	tests := []struct {
		name   string
		inject func(*conn)
		want   string // in the server's reason for closing
	}{
		{"unknown frame type", frameOf(42, 0, 1, 0, nil), "unknown frame type 42"},
		{"unknown flags", frameOf(frame.TypeHeaders, 0x80, 1, 0, nil), "unknown flags"},
		{"garbage request headers", frameOf(frame.TypeHeaders, 0, 1, 0, []byte{0xff, 0xff, 0xff}), "request headers"},
		{"message for a stream never opened", frameOf(frame.TypeMessage, 0, 7, 0, nil), "never opened"},
		{"fragment longer than its message", frameOf(frame.TypeMessage, 0, 1, 2, []byte("four")), ""},
		{"messages beyond the window", func(c *conn) {
			// Over the size limit, so that the server drops the bytes (and
			// the test need not send them), but charged to the window
			// all the same: the second message has no window left.
			big := uint32(DefaultMaxRecvMsgSize + 1)
			frameOf(frame.TypeMessage, frame.FlagMore, 1, big, nil)(c)
			frameOf(frame.TypeMessage, 0, 1, 0, nil)(c)
			frameOf(frame.TypeMessage, 0, 1, 1, []byte{0})(c)
		}, fmt.Sprintf("message sent beyond the flow-control window (%d bytes started, %d allowed)", DefaultMaxRecvMsgSize+1, defaultWindow)},
		{"unaligned tail", func(c *conn) { c.SelfCtl().Tail.Add(3) }, "ring corrupt: tail"},
		{"tail beyond the ring", func(c *conn) { c.SelfCtl().Tail.Add(1 << 30) }, "ring corrupt: tail"},
		{"record overruns the ring", func(c *conn) {
			rec := c.Out().Reserve(0, byte(frame.TypeHeaders))
			rec[0], rec[1], rec[2], rec[3] = 0xff, 0xff, 0xff, 0x7f
			c.Out().Publish()
		}, "overruns the ring"},
	}
	healthy := dial()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := dial()
			c := pb.NewGreeterClient(cc)
			if tc.name == "fragment longer than its message" || tc.name == "messages beyond the window" {
				// Open stream 1 first so that the message is not refused as
				// belonging to no stream.
				if _, err := cc.NewStream(context.Background(), unaryDesc, "/helloworld.Greeter/SayHello"); err != nil {
					t.Fatal(err)
				}
				if tc.name == "fragment longer than its message" {
					tc.want = "fragment of 4 bytes for a message of 2"
				}
			}
			cn := cc.conn()
			injectUntilClosed(t, cn, tc.inject)
			// The connection's calls end with the reason the server gave, in
			// its GOAWAY frame.
			st := status.Convert(cn.CloseErr())
			if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "protocol violation") || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("connection closed with %v, want Unavailable naming a protocol violation with %q", st, tc.want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := pb.NewGreeterClient(healthy).SayHello(ctx, &pb.HelloRequest{Name: "y"}); err != nil {
				t.Errorf("another connection after the injection: %v", err)
			}
			// The ClientConn connects again by itself.
			if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "x"}, grpc.WaitForReady(true)); err != nil {
				t.Errorf("call waiting for a new connection: %v", err)
			}
		})
	}
}

// injectUntilClosed runs inject on the client connection cn under its
// write lock, which it never releases, so that no later publish repairs
// what the injection broke; rings the server's doorbell; and waits until
// the connection closes, then lets it release its segment.
func injectUntilClosed(t *testing.T, cn *conn, inject func(*conn)) {
	t.Helper()
	if err := cn.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	inject(cn)
	cn.RingAlways()
	select {
	case <-cn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not close the connection within 10 s")
	}
	cn.UnlockNoPublish()
}

// TestStreamsBeyondTheLimit opens more streams than the server's
// MaxConcurrentStreams, as a client that ignores the limit it was told
// could: the server closes that connection, naming the limit.
func TestStreamsBeyondTheLimit(t *testing.T) {
	_, dir := serveInProcess(t, "limit", echoGreeter{}, MaxConcurrentStreams(1))
	cn := dialInProcess(t, "limit", dir).conn()
	injectUntilClosed(t, cn, func(c *conn) {
		// Two unary calls without their requests: both stay open.
		for id := uint32(1); id <= 3; id += 2 {
			rh := frame.RequestHeaders{Method: "/helloworld.Greeter/SayHello"}
			rec := c.Out().Reserve(rh.Size(), byte(frame.TypeHeaders))
			frame.Put(rec, 0, id, 0)
			rh.Append(rec[frame.HeaderSize:frame.HeaderSize])
		}
		c.Out().Publish()
	})
	st := status.Convert(cn.CloseErr())
	if want := "stream 3 opened beyond the limit of 1 concurrent streams"; st.Code() != codes.Unavailable || !strings.Contains(st.Message(), want) {
		t.Errorf("connection closed with %v, want Unavailable naming %q", st, want)
	}
}
