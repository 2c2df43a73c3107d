package notnets_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/notnets/notnets"
)

// idleEnv names the idle strategy the test server and srv.dial use:
// busy-spin or park-only; adaptive (the default) when unset.
const idleEnv = "NOTNETS_TEST_IDLE"

// idleFromEnv returns the option for $NOTNETS_TEST_IDLE, if set.
func idleFromEnv() []notnets.WaitOption {
	for _, s := range []notnets.IdleStrategy{notnets.IdleBusySpin, notnets.IdleParkOnly, notnets.IdleAdaptive} {
		if os.Getenv(idleEnv) == s.String() {
			return []notnets.WaitOption{notnets.WithIdleStrategy(s)}
		}
	}
	return nil
}

// strategySuite is the part of the suite every idle strategy must pass:
// the interop cases, the end-to-end semantics, flow control, and the
// tests of waking and of many callers below.
const strategySuite = "^(TestInterop|TestUnaryConcurrentCallsGetTheirOwnReplies|TestMetadataHeadersAndTrailers|" +
	"TestStreamHeaderAndTrailer|TestStatusCodesMessagesAndDetails|TestDeadlineExceeded|TestCancelReachesTheServer|" +
	"TestMessageSizes|TestStreamingKinds|TestSlowReaderLosesNothing|TestBlockedWriterHonoursItsContext|" +
	"TestMaxConcurrentStreams|TestCallAfterLongIdle|TestManyCallersWithGaps)$"

// TestIdleStrategies runs the strategy suite again, in a child process,
// with both sides busy-spinning, then both parking only (the default,
// adaptive, runs it as part of the whole suite).
func TestIdleStrategies(t *testing.T) {
	if os.Getenv(idleEnv) != "" {
		t.Skip("skipped: already running under one strategy")
	}
	for _, s := range []notnets.IdleStrategy{notnets.IdleBusySpin, notnets.IdleParkOnly} {
		t.Run(s.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", strategySuite, "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), idleEnv+"="+s.String())
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "\nPASS") || strings.Contains(string(out), "--- FAIL") {
				t.Fatalf("suite with %s: %v\n%s", s, err, out)
			}
			if n := strings.Count(string(out), "--- PASS: Test"); n < 14 {
				t.Fatalf("suite with %s passed only %d tests, want all 14:\n%s", s, n, out)
			}
		})
	}
}

// TestCallAfterLongIdle leaves a connection idle for longer than the
// doorbell's bounded waits, so that both sides' readers have moved to the
// doorbell hubs, and checks that the next calls wake them.
func TestCallAfterLongIdle(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := c.UnaryCall(withMode(ctx, "echo", "idle"), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		cancel()
		if i < 2 {
			time.Sleep(1200 * time.Millisecond) // the idle period under test, not a synchronization
		}
	}
}

// TestManyCallersWithGaps has 64 callers on 4 connections, each making
// calls with random gaps (busy or sleeping) between them and a payload of
// its own: every reply is the caller's own request.
func TestManyCallersWithGaps(t *testing.T) {
	srv := startServer(t)
	const conns, callers, calls = 4, 64, 40
	clients := make([]testpb.TestServiceClient, conns)
	for i := range clients {
		clients[i] = semanticsClient(srv.dial(t))
	}
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[g%conns]
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range calls {
				body := []byte(fmt.Sprintf("caller %d call %d %s", g, i, strings.Repeat("x", r.IntN(2048))))
				resp, err := c.UnaryCall(withMode(context.Background(), "echo", "gaps"), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
				if err != nil {
					errs <- fmt.Errorf("caller %d call %d: %v", g, i, err)
					return
				}
				if got := resp.GetPayload().GetBody(); string(got) != string(body) {
					errs <- fmt.Errorf("caller %d call %d got another reply (%d bytes)", g, i, len(got))
					return
				}
				switch gap := time.Duration(r.IntN(300)) * time.Microsecond; r.IntN(3) {
				case 0: // back to back
				case 1:
					for start := time.Now(); time.Since(start) < gap; {
					}
				case 2:
					time.Sleep(gap) // about 1 ms: longer than any spin
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
