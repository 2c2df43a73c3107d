package notnets_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/connectivity"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/notnets/notnets"
)

// procThreads returns the number of OS threads of this process, and how
// many of them are blocked in a futex wait on a shared word (what a
// connection's reader waiting directly on its doorbell holds; the Go
// runtime parks its idle threads on private futexes) or in futex_waitv
// (the doorbell hubs). Go never gives a thread back, so the total is the
// peak; the blocked ones are what connections hold now.
func procThreads() (total, sharedWaits, hubWaits int) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return -1, -1, -1
	}
	for _, task := range tasks {
		total++
		data, err := os.ReadFile("/proc/self/task/" + task.Name() + "/syscall")
		if err != nil {
			continue
		}
		f := strings.Fields(string(data))
		if len(f) < 3 {
			continue
		}
		nr, _ := strconv.Atoi(f[0])
		op, _ := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 64)
		switch {
		case nr == unix.SYS_FUTEX && op&128 == 0 && op&127 == 0: // FUTEX_WAIT, not private
			sharedWaits++
		case nr == 449: // futex_waitv
			hubWaits++
		}
	}
	return total, sharedWaits, hubWaits
}

// serverThreads asks the server process for its threads (procThreads),
// goroutines and open connections.
func serverThreads(t *testing.T, srv *serverProc) (threads, waits, hubs, goroutines, conns int) {
	t.Helper()
	line := srv.command(t, "threads")
	if _, err := fmt.Sscan(line, &threads, &waits, &hubs, &goroutines, &conns); err != nil {
		t.Fatalf("server threads answer %q: %v", line, err)
	}
	return threads, waits, hubs, goroutines, conns
}

// TestIdleConnectionsHoldNoThreads opens 1,000 connections to a server in
// another process, makes one call on each and leaves them idle: once idle
// (after doorbell.MaxBlock) their readers wait in the doorbell hubs, so
// neither process holds a thread per connection (both held about 1,000
// when each reader blocked in its own futex wait). Then every connection
// closes, and the server's goroutines go back to what they were.
func TestIdleConnectionsHoldNoThreads(t *testing.T) {
	const n = 1000
	srv := startServer(t)
	_, _, _, goroutines0, _ := serverThreads(t, srv)
	ctx := context.Background()
	ccs := make([]*notnets.ClientConn, 0, n)
	defer func() {
		for _, cc := range ccs {
			cc.Close()
		}
	}()
	start := time.Now()
	for i := range n {
		cc, err := notnets.Dial(ctx, listenName, notnets.WithPool(srv.pool), notnets.WithRingSize(64<<10), notnets.WithArenaSize(0))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		ccs = append(ccs, cc)
		if _, err := semanticsClient(cc).UnaryCall(withMode(ctx, "echo", "idle"), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call on connection %d: %v", i, err)
		}
	}
	t.Logf("%d connections dialled and called in %v", n, time.Since(start).Round(time.Millisecond))
	// Once the connections are idle, neither side has a thread blocked
	// for one: a hub thread waits for up to 127 of them (futex_waitv takes
	// 128 words, one is the hub's own).
	limit := runtime.GOMAXPROCS(0) + (n+126)/127 + 2
	var threads, waits, hubs, conns, cThreads, cWaits, cHubs int
	for deadline := time.Now().Add(20 * time.Second); ; {
		threads, waits, hubs, _, conns = serverThreads(t, srv)
		cThreads, cWaits, cHubs = procThreads()
		if waits+hubs <= limit && cWaits+cHubs <= limit || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling the condition
	}
	t.Logf("%d idle connections: server %d threads (%d in futex waits, %d in hubs), client %d threads (%d, %d)",
		conns, threads, waits, hubs, cThreads, cWaits, cHubs)
	if conns != n {
		t.Errorf("server has %d connections open, want %d", conns, n)
	}
	if waits+hubs > limit || cWaits+cHubs > limit {
		t.Errorf("with %d idle connections the server has %d threads waiting and the client %d, want at most %d each", n, waits+hubs, cWaits+cHubs, limit)
	}
	start = time.Now()
	for _, cc := range ccs {
		cc.Close()
	}
	ccs = nil
	t.Logf("closed in %v", time.Since(start).Round(time.Millisecond))
	var goroutines int
	for deadline := time.Now().Add(20 * time.Second); ; {
		_, _, _, goroutines, conns = serverThreads(t, srv)
		if conns == 0 && goroutines <= goroutines0+10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("server: %d connections, %d goroutines %v after the closes", conns, goroutines, time.Since(start).Round(time.Millisecond))
	if conns != 0 || goroutines > goroutines0+10 {
		t.Errorf("after closing every connection the server has %d open and %d goroutines (%d before)", conns, goroutines, goroutines0)
	}
}

// TestIdleConnectionSeesItsServerStop leaves a connection idle until both
// readers wait in the doorbell hubs, then stops the server: the client
// notices at once (the server's GOAWAY and last ring reach the hub), not
// after its liveness timeout, which is set to a minute here. (A close
// that could not write its GOAWAY changes only its state word, which the
// hub looks at: doorbell's TestHubSeesEveryPeerClose.)
func TestIdleConnectionSeesItsServerStop(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t, notnets.WithLivenessTimeout(time.Minute))
	c := semanticsClient(cc)
	ctx := context.Background()
	if _, err := c.UnaryCall(withMode(ctx, "echo", "idle"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond) // the idle period under test, not a synchronization
	if got := srv.command(t, "stop"); !strings.HasPrefix(got, "stopped") {
		t.Fatalf("server: %q", got)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for s := cc.GetState(); s == connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(wctx, s) {
			t.Fatal("the client did not notice the server's stop within 10 s")
		}
	}
}
