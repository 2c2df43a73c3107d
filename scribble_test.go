package notnets

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// TestScribbleOverLiveSegment writes random bytes at random places of a
// live connection segment (control blocks, ring counters, ring data, the
// header) while calls are in flight, as a broken or hostile peer could. Every
// call must end, by its deadline at the latest, with a reply or a status;
// nothing may panic; and another connection to the same server must keep
// working. Both sides run in this process so that the test reaches the
// segment; a panic on either side fails it.
func TestScribbleOverLiveSegment(t *testing.T) {
	dir := serveGreeter(t, "scribble")
	healthy, err := Dial(context.Background(), "scribble", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer healthy.Close()

	rng := rand.New(rand.NewPCG(1, 2))
	iterations := 60
	if testing.Short() {
		iterations = 15
	}
	scribbled := 0
	defer func() { t.Logf("%d of %d scribbled connections closed on what they read", scribbled, iterations) }()
	for it := 0; it < iterations; it++ {
		// No heaps, so that the layout is header, control pages, rings.
		cc, err := Dial(context.Background(), "scribble", WithPool(dir), WithRingSize(64<<10), WithArenaSize(0))
		if err != nil {
			t.Fatal(err)
		}
		c := pb.NewGreeterClient(cc)
		var wg sync.WaitGroup
		var finished atomic.Int64
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					start := time.Now()
					_, err := c.SayHello(ctx, &pb.HelloRequest{Name: "scribble"})
					cancel()
					finished.Add(1)
					if time.Since(start) > 4*time.Second {
						t.Errorf("a call took %v with a 2 s deadline", time.Since(start))
					}
					// Any status is a fair answer once the peer's bytes are
					// garbage (a scribbled method name is Unimplemented, a
					// scribbled length ResourceExhausted, a scribbled status
					// is whatever it now says); what matters is that the
					// call ends.
					if err != nil && status.Code(err) != codes.DeadlineExceeded {
						return
					}
				}
			}()
		}
		// Scribble while the calls run, after a random number of them has
		// finished: a few random bytes at a time, aimed at the words both
		// sides read (states, heartbeats, ring counters, sleeping flags), at
		// the records about to be read, or anywhere.
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		for at := int64(rng.IntN(100)); ; at += int64(rng.IntN(50)) {
			for finished.Load() < at && !closed(done) {
				runtime.Gosched()
			}
			if closed(done) {
				break
			}
			if c := cc.conn(); c != nil {
				scribble(c, rng, 1+rng.IntN(3))
			}
		}
		wg.Wait()
		scribbled += countFailed(cc)
		cc.Close()
		if _, err := pb.NewGreeterClient(healthy).SayHello(context.Background(), &pb.HelloRequest{Name: "ok"}); err != nil {
			t.Fatalf("iteration %d: the other connection failed: %v", it, err)
		}
	}
}

// scribble writes n runs of random bytes into the segment of c, the
// server's regions included (their page protection is lifted first: the
// client may have connected again since the last scribble).
func scribble(c *conn, rng *rand.Rand, n int) {
	c.MapMu().RLock() // keeps the segment mapped, as for the liveness watch
	defer c.MapMu().RUnlock()
	if c.Unmapped() {
		return
	}
	mem := c.Seg().Mem
	lay, err := pool.MapConn(mem, ring.CheckCap)
	if err != nil {
		return // the header itself was scribbled over: leave this one be
	}
	for _, r := range lay.PeerRegions(mem, true) {
		if unix.Mprotect(r, unix.PROT_READ|unix.PROT_WRITE) != nil {
			return
		}
	}
	const page = 4096
	ctl := []int{0, 8, 64, 128, 192}           // state, heartbeat, tail, head, sleeping
	ringOf := func(i int) (int, int, uint64) { // data offset, size, the reader's head
		size := (len(mem) - 3*page) / 2
		if i == 0 {
			return 3 * page, size, c.PeerCtl().Head.Load() // client to server
		}
		return 3*page + size, size, c.SelfCtl().Head.Load() // server to client
	}
	for k := 0; k < n; k++ {
		var off int
		switch rng.IntN(3) {
		case 0:
			off = page*(1+rng.IntN(2)) + ctl[rng.IntN(len(ctl))] + rng.IntN(8)
		case 1:
			base, size, pos := ringOf(rng.IntN(2))
			off = base + int(pos%uint64(size)) + rng.IntN(64)
		default:
			off = rng.IntN(len(mem))
		}
		for b := 0; b < 1+rng.IntN(8) && off+b < len(mem); b++ {
			mem[off+b] = byte(rng.Uint32())
		}
	}
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// countFailed reports 1 if the connection has closed.
func countFailed(cc *ClientConn) int {
	if c := cc.conn(); c == nil || c.CloseErr() != nil {
		return 1
	}
	return 0
}
