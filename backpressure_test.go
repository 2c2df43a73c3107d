package notnets_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
)

// TestSlowReaderLosesNothing has the server stream 4 MiB in 64 KiB messages
// at a client that reads slowly (it yields between reads), through 64 KiB
// rings and 1 MiB windows: every message arrives, in order, whole.
func TestSlowReaderLosesNothing(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t, notnets.WithRingSize(64<<10)))
	var params []*testpb.ResponseParameters
	for i := 0; i < 64; i++ {
		params = append(params, &testpb.ResponseParameters{Size: int32(64<<10 - i)})
	}
	stream, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{ResponseParameters: params})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		r, err := stream.Recv()
		if err == io.EOF {
			if i != len(params) {
				t.Fatalf("stream ended after %d messages, want %d", i, len(params))
			}
			break
		}
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got := len(r.GetPayload().GetBody()); got != 64<<10-i {
			t.Fatalf("message %d has %d bytes, want %d (lost or reordered)", i, got, 64<<10-i)
		}
		for j := 0; j < 1000; j++ { // a slow reader: let the server get ahead
			_ = fmt.Sprint(j)
		}
	}
}

// TestBlockedWriterHonoursItsContext sends on a client stream whose server
// handler never reads: once the window is full, Send blocks, and the call's
// deadline (or cancellation) ends it.
func TestBlockedWriterHonoursItsContext(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	for _, tc := range []struct {
		name string
		code codes.Code
	}{{"deadline", codes.DeadlineExceeded}, {"cancel", codes.Canceled}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			if tc.name == "cancel" {
				// Cancelled while the sends are blocked on the window (or
				// before they block: the outcome must be the same).
				ctx, cancel = context.WithCancel(context.Background())
				time.AfterFunc(300*time.Millisecond, cancel)
			}
			defer cancel()
			id := "bp-" + tc.name
			stream, err := c.StreamingInputCall(withMode(ctx, "block", id))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.UnaryCall(withMode(context.Background(), "started", id), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
			msg := &testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 256<<10)}}
			start := time.Now()
			sent := 0
			var sendErr error
			for ; sent < 100; sent++ { // 25 MiB: far beyond the 1 MiB window
				if sendErr = stream.Send(msg); sendErr != nil {
					break
				}
			}
			if sent == 100 {
				t.Fatal("100 sends of 256 KiB went through to a handler that reads nothing")
			}
			// As in grpc-go: the blocked Send returns io.EOF, the status
			// comes from the receive.
			if sendErr != io.EOF {
				t.Errorf("blocked Send ended with %v, want io.EOF", sendErr)
			}
			if _, err := stream.CloseAndRecv(); status.Code(err) != tc.code {
				t.Errorf("CloseAndRecv after the blocked send = %v, want %v", err, tc.code)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("the blocked send ended %v after it started", d)
			}
			if got := report(t, c, id); !strings.HasPrefix(got, "context") {
				t.Errorf("server handler ended with %q", got)
			}
		})
	}
}
