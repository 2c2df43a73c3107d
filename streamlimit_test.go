package notnets_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestMaxConcurrentStreams runs calls against a server in another process
// that allows two open streams per connection: a third call waits for one
// of them to end, and many callers that cancel and time out never make the
// client open more than the server counts (which would cost the
// connection).
func TestMaxConcurrentStreams(t *testing.T) {
	srv := startServer(t, "NOTNETS_TEST_MAXSTREAMS=2")
	cc := srv.dial(t)
	c := semanticsClient(cc)
	ctx := context.Background()

	// Two calls that block until cancelled hold both places.
	var cancels []context.CancelFunc
	var blocked sync.WaitGroup
	for i := range 2 {
		cctx, cancel := context.WithCancel(withMode(ctx, "block", fmt.Sprint("hold", i)))
		cancels = append(cancels, cancel)
		blocked.Add(1)
		go func() {
			defer blocked.Done()
			c.UnaryCall(cctx, &testpb.SimpleRequest{})
		}()
	}
	// Asked on another connection, which has places of its own.
	other := semanticsClient(srv.dial(t))
	for i := range 2 {
		if _, err := other.UnaryCall(withMode(ctx, "started", fmt.Sprint("hold", i)), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("blocking call %d did not start: %v", i, err)
		}
	}
	// A third waits for a place until its deadline.
	dctx, dcancel := context.WithTimeout(withMode(ctx, "echo", "w"), 100*time.Millisecond)
	_, err := c.UnaryCall(dctx, &testpb.SimpleRequest{})
	dcancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("third call while two are open: %v, want DeadlineExceeded", err)
	}
	// Another one goes as soon as a place is free.
	third := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(withMode(ctx, "echo", "t"), &testpb.SimpleRequest{})
		third <- err
	}()
	cancels[0]()
	if err := <-third; err != nil {
		t.Fatalf("third call after a place was freed: %v", err)
	}
	cancels[1]()
	blocked.Wait()

	// Many callers, half of whose calls are cancelled by a deadline
	// (CANCEL frames) while others wait for their places.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				if i%2 == 0 {
					cctx, cancel := context.WithTimeout(withMode(ctx, "block", fmt.Sprint(g, "-", i)), time.Millisecond)
					_, err := c.UnaryCall(cctx, &testpb.SimpleRequest{})
					cancel()
					if status.Code(err) != codes.DeadlineExceeded {
						errs <- fmt.Errorf("blocked call: %v", err)
						return
					}
					continue
				}
				if _, err := c.UnaryCall(withMode(ctx, "echo", fmt.Sprint(g, "-", i)), &testpb.SimpleRequest{}); err != nil {
					errs <- fmt.Errorf("echo call: %v", err)
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
