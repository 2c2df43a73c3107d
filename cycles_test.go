package notnets_test

import (
	"flag"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/pool"
)

var cycles = flag.Int("cycles", 1000, "connect-then-kill cycles in TestConnectKillCycles (100 under -short or -race)")

// TestConnectKillCycles serves in this process while client processes
// connect, start a call that blocks, and are killed with SIGKILL, over and
// over. Afterwards the server holds no connection, the pool holds only the
// listener's file, no goroutine is left behind (goleak), and the heap has
// not grown.
func TestConnectKillCycles(t *testing.T) {
	n := *cycles
	if (testing.Short() || raceEnabled) && n > 100 {
		n = 100
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		// Idle workers wait up to 10 s for more work before they exit.
		goleak.IgnoreTopFunction("github.com/notnets/notnets/internal/transport.(*Workers).work"),
		goleak.IgnoreAnyFunction("github.com/notnets/notnets/internal/transport.(*Workers).work"))
	dir := testPool(t)
	lis, err := notnets.Listen(listenName, notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := notnets.NewServer(notnets.WithLivenessTimeout(time.Second))
	desc := testgrpc.TestService_ServiceDesc
	desc.ServiceName = semanticsService
	srv.RegisterService(&desc, newSemantics())
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	defer func() { srv.Stop(); <-served }()

	cycle := func() {
		cmd := startBlockingClient(t, dir)
		cmd.Process.Kill()
		cmd.Wait()
	}
	warm := min(50, n)
	for i := 0; i < warm; i++ {
		cycle()
	}
	heap0 := heapInUse()
	for i := warm; i < n; i++ {
		cycle()
	}
	// The server notices each death within a few heartbeats; wait for the
	// last ones, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for srv.ConnCount() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := srv.ConnCount(); got != 0 {
		t.Errorf("server holds %d connections after %d clients were killed", got, n)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	base := lis.Addr().(*notnets.Addr).Instance
	want := []string{base + ".listener", base + ".sock", "registry"}
	if _, ok := testCoherence(t); ok {
		// A cross-host pool: its marker, and no socket.
		want = []string{base + ".listener", pool.HostsFile, "registry"}
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("pool holds %v after %d cycles, want only %v", names, n, want)
	}
	if grew := heapInUse() - heap0; grew > 4<<20 {
		t.Errorf("heap grew by %d bytes over %d cycles", grew, n-warm)
	}
	t.Logf("%d cycles; heap %d -> %d bytes; goroutines %d", n, heap0, heapInUse(), runtime.NumGoroutine())
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
