package notnets_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
)

// TestNewClientBeforeTheServer creates a client before any server exists,
// even before the pool directory does (the first Listen makes it), as
// services that start in any order do: NewClient returns at once, a call
// fails fast with Unavailable, a call that waits for ready succeeds once a
// server in another process starts.
func TestNewClientBeforeTheServer(t *testing.T) {
	dir := filepath.Join(testPool(t), "not-yet")
	cc, err := notnets.NewClient("dns:///"+listenName+":50051", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := semanticsClient(cc)
	ctx := context.Background()
	if _, err := c.UnaryCall(withMode(ctx, "echo", "early"), &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("call with no server: %v, want Unavailable", err)
	}
	done := make(chan error, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err := c.UnaryCall(withMode(wctx, "echo", "waiting"), &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		done <- err
	}()
	startServerIn(t, dir)
	cc.ResetConnectBackoff() // as a user would after starting the server; the backoff alone gets there too
	if err := <-done; err != nil {
		t.Fatalf("call waiting for ready after the server started: %v", err)
	}
	if got := cc.Target(); got != "dns:///"+listenName+":50051" {
		t.Errorf("Target() = %q", got)
	}
}

// TestNewClientBadTarget checks that a target naming no listener is
// InvalidArgument.
func TestNewClientBadTarget(t *testing.T) {
	if _, err := notnets.NewClient("unix:///tmp/x.sock"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("NewClient(unix:///...) = %v, want InvalidArgument", err)
	}
}
