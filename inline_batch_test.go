package notnets_test

import (
	"context"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/frame"
)

// TestCallsQueuedBehindASlowInlineHandler publishes two unary calls in one
// batch to a server in another process whose handlers have been fast (so
// it runs a batch inline, one call after the other): the first blocks.
// After a millisecond the monitor hands the reading role to another
// goroutine, which must run the second at once, though no further frame
// arrives on the connection to wake it.
func TestCallsQueuedBehindASlowInlineHandler(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	other := semanticsClient(srv.dial(t))
	ctx := context.Background()
	// Fast calls first: the server then runs batches inline.
	for range 3 {
		if _, err := semanticsClient(cc).UnaryCall(withMode(ctx, "echo", "fast"), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	cn := notnets.ConnOf(cc)
	if err := cn.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"queued-first", "queued-second"} {
		rh := frame.RequestHeaders{Method: "/" + semanticsService + "/UnaryCall", Timeout: 20 * time.Second,
			MD: metadata.Pairs("x-mode", "block", "x-id", id)}
		sid := uint32(1001 + 2*i) // above the ids of the client's own calls
		rec := cn.Out().Reserve(rh.Size(), byte(frame.TypeHeaders))
		frame.Put(rec, 0, sid, 0)
		rh.Append(rec[frame.HeaderSize:frame.HeaderSize])
		rec = cn.Out().Reserve(0, byte(frame.TypeMessage))
		frame.Put(rec, frame.FlagEndStream, sid, 0)
	}
	cn.Unlock() // one publish: both calls in one batch
	// Asked on the other connection, which the first's reader never sees.
	for _, id := range []string{"queued-first", "queued-second"} {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := other.UnaryCall(withMode(sctx, "started", id), &testpb.SimpleRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %s did not start: %v", id, err)
		}
	}
	cc.Close() // before the blocked handlers answer streams the client never opened
}
