package notnets_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
)

// TestServerKilled kills the server process with SIGKILL while a unary call
// and a server stream wait on it, and checks that both end with
// Unavailable in time: within a few heartbeats when the client may check the
// server's pid (one host), and after the liveness timeout when it may not
// (a cross-host pool: heartbeats alone). TestCrossHostServerKilled does
// the same with the server in namespaces of its own.
func TestServerKilled(t *testing.T) {
	const timeout = time.Second
	for _, tc := range []struct {
		name      string
		crossHost bool
		min, max  time.Duration
	}{
		{"pid check", false, 0, 500 * time.Millisecond},
		{"heartbeat only", true, timeout - 200*time.Millisecond, timeout + 500*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.crossHost {
				oneHostOnly(t, "the pid check of liveness")
			}
			dir := testPool(t)
			if tc.crossHost {
				dir = crossHostPool(t)
			}
			srv := startServerIn(t, dir)
			c := semanticsClient(srv.dial(t, notnets.WithLivenessTimeout(timeout)))
			unary, streamErr := blockedCalls(t, c)

			killed := time.Now()
			if err := srv.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			for name, ch := range map[string]chan error{"unary call": unary, "stream": streamErr} {
				select {
				case err := <-ch:
					after := time.Since(killed)
					if status.Code(err) != codes.Unavailable {
						t.Errorf("%s after the kill = %v, want Unavailable", name, err)
					}
					if after < tc.min || after > tc.max {
						t.Errorf("%s ended %v after the kill, want %v to %v (liveness timeout %v)", name, after, tc.min, tc.max, timeout)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s still waiting 10 s after the server was killed", name)
				}
			}
			// New calls on the dead connection fail fast.
			start := time.Now()
			if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable || time.Since(start) > time.Second {
				t.Errorf("call on the dead connection = %v after %v, want Unavailable at once", err, time.Since(start))
			}
		})
	}
}

// startBlockingClient starts a client process on the pool dir whose call
// blocks in the server, and returns once the call has started.
func startBlockingClient(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=blocking-client", "NOTNETS_POOL="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "blocked\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("client process: %q, %v", line, err)
	}
	return cmd
}

// blockingID names the blocking call of the client process pid.
func blockingID(pid int) string { return fmt.Sprintf("k-%d", pid) }

// runBlockingClient is a client process that starts a call that blocks on
// the server, says so on stdout, and waits to be killed.
func runBlockingClient() {
	ctx := context.Background()
	cc, err := notnets.Dial(ctx, listenName)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	c := semanticsClient(cc)
	id := blockingID(os.Getpid())
	go c.UnaryCall(withMode(ctx, "block", id), &testpb.SimpleRequest{})
	if _, err := c.UnaryCall(withMode(ctx, "started", id), &testpb.SimpleRequest{}); err != nil {
		fmt.Fprintln(os.Stderr, "started:", err)
		os.Exit(1)
	}
	fmt.Println("blocked")
	select {}
}

// TestClientKilled serves in this process and kills a client process with
// SIGKILL while its call blocks in a handler: the handler's context is
// cancelled within a few heartbeats, and another connection is untouched.
func TestClientKilled(t *testing.T) {
	oneHostOnly(t, "the pid check of liveness (a handler cancelled within 500 ms)")
	dir := testPool(t)
	lis, err := notnets.Listen(listenName, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := notnets.NewServer(notnets.WithLivenessTimeout(time.Second))
	sem := newSemantics()
	desc := testgrpc.TestService_ServiceDesc
	desc.ServiceName = semanticsService
	srv.RegisterService(&desc, sem)
	go srv.Serve(lis)
	defer srv.Stop()

	other, err := notnets.Dial(context.Background(), listenName, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	cmd := startBlockingClient(t, dir)
	defer cmd.Wait()
	killed := time.Now()
	cmd.Process.Kill()
	_, ended := sem.chans(blockingID(cmd.Process.Pid))
	select {
	case how := <-ended:
		if after := time.Since(killed); !strings.HasPrefix(how, "context canceled") || after > 500*time.Millisecond {
			t.Errorf("handler of the killed client ended %q, %v after the kill; want context canceled within 500 ms", how, after)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler of the killed client still running 10 s after the kill")
	}
	if _, err := semanticsClient(other).UnaryCall(withMode(context.Background(), "echo", "o"), &testpb.SimpleRequest{}); err != nil {
		t.Errorf("another connection after the kill: %v", err)
	}
}

// TestReconnectAfterServerRestart kills the server, checks that calls fail
// fast while no server listens, starts a new server on the same pool and
// name, and checks that the same ClientConn reaches it: at once for a call
// that waits for ready, and for every call once connected.
func TestReconnectAfterServerRestart(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	c := semanticsClient(cc)
	ctx := context.Background()
	if _, err := c.UnaryCall(withMode(ctx, "echo", "1"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Kill()
	srv.cmd.Wait()
	// Until the loss is noticed, calls fail with Unavailable anyway; after,
	// they fail fast.
	for {
		start := time.Now()
		_, err := c.UnaryCall(withMode(ctx, "echo", "2"), &testpb.SimpleRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call with the server dead = %v, want Unavailable", err)
		}
		if time.Since(start) < 100*time.Millisecond {
			break // failed fast: no connection
		}
	}
	startServerIn(t, srv.pool)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := c.UnaryCall(withMode(wctx, "echo", "3"), &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("call waiting for the new server: %v", err)
	}
	t.Logf("reconnected %v after the new server started", time.Since(start))
	if _, err := c.UnaryCall(withMode(ctx, "echo", "4"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call on the new connection: %v", err)
	}
}

// TestConnectivityState follows a ClientConn's state through the loss of
// its server process, a new server and Close, with WaitForStateChange.
func TestConnectivityState(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	if s := cc.GetState(); s != connectivity.Ready {
		t.Fatalf("state after Dial = %v, want READY", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.cmd.Process.Kill()
	srv.cmd.Wait()
	if !cc.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("still READY 10 s after the server was killed")
	}
	if s := cc.GetState(); s != connectivity.TransientFailure && s != connectivity.Connecting {
		t.Errorf("state without a server = %v, want TRANSIENT_FAILURE or CONNECTING", s)
	}
	startServerIn(t, srv.pool)
	cc.ResetConnectBackoff()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatalf("not READY 10 s after a new server started (state %v)", s)
		}
	}
	if _, err := semanticsClient(cc).UnaryCall(withMode(ctx, "echo", "1"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call once READY again: %v", err)
	}
	cc.Close()
	if s := cc.GetState(); s != connectivity.Shutdown {
		t.Errorf("state after Close = %v, want SHUTDOWN", s)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if cc.WaitForStateChange(done, connectivity.Shutdown) {
		t.Error("WaitForStateChange from SHUTDOWN reported a change")
	}
}

// blockedCalls starts a unary call and a server stream that block in the
// server until their contexts end, waits until both have reached it, and
// returns the channels their errors arrive on.
func blockedCalls(t *testing.T, c testgrpc.TestServiceClient) (unary, stream chan error) {
	t.Helper()
	ctx := context.Background()
	unary, stream = make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(withMode(ctx, "block", "u"), &testpb.SimpleRequest{})
		unary <- err
	}()
	if _, err := c.UnaryCall(withMode(ctx, "started", "u"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	s, err := c.StreamingOutputCall(withMode(ctx, "block", "s"), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := s.Recv()
		stream <- err
	}()
	return unary, stream
}
