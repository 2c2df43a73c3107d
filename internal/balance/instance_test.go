//go:build linux

package balance

import (
	"os"
	"sync/atomic"
	"testing"

	"github.com/notnets/notnets/internal/pool"
)

// published is an instance's listener as its server sees it, and the
// client's view of it.
type published struct {
	lay *pool.ListenerLayout // the server's mapping: it writes the load here
	in  *Instance            // the client's, read by Pick
}

// publishInstances makes n instances of one service in a fresh pool, each
// with a real listener segment (as transport.Listen makes it: created,
// initialized, open, with 2 workers), and opens each as a client does.
func publishInstances(tb testing.TB, n int) []published {
	tb.Helper()
	dir := tb.TempDir()
	if err := pool.Prepare(dir, pool.OwnerOnly); err != nil {
		tb.Fatal(err)
	}
	ps := make([]published, n)
	for i := range ps {
		base, err := pool.NewInstance("svc")
		if err != nil {
			tb.Fatal(err)
		}
		seg, err := pool.CreateIn(dir, pool.ListenerFile(base), pool.ListenerSize, pool.OwnerOnly)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { seg.Close() })
		pool.InitListener(seg.Mem, os.Getpid(), 0)
		lay, err := pool.MapListener(seg.Mem)
		if err != nil {
			tb.Fatal(err)
		}
		lay.Load.Workers.Store(2)
		lay.Server.State.Store(pool.StateOpen)
		in, err := OpenInstance(dir, base, pool.OwnerOnly, pool.CoherenceHardware)
		if err != nil {
			tb.Fatal(err)
		}
		ps[i] = published{lay: lay, in: in}
	}
	return ps
}

// candidate is an Instance with a connection's Usable: as the client's
// pick entry, which asks its transport whether it is closed or going
// away, it reads one word.
type candidate struct {
	in     *Instance
	closed atomic.Bool
}

func (c *candidate) Usable() bool { return !c.closed.Load() }

func (c *candidate) Load() (uint32, uint32, bool) { return c.in.Load() }

func candidates(ps []published) []*candidate {
	cs := make([]*candidate, len(ps))
	for i, p := range ps {
		cs[i] = &candidate{in: p.in}
	}
	return cs
}

// BenchmarkPick3 measures a pick among 3 instances whose loads Pick reads
// from their listener pages, with each policy.
func BenchmarkPick3(b *testing.B) {
	ps := publishInstances(b, 3)
	for i, p := range ps {
		p.lay.Load.InFlight.Store(uint32(3 - i))
		p.lay.Load.Queued.Store(uint32(i))
	}
	cs := candidates(ps)
	for _, policy := range []Policy{LeastLoad, RoundRobin, PickFirst} {
		b.Run(policy.String(), func(b *testing.B) {
			b.ReportAllocs()
			p := Picker{Policy: policy}
			sum := 0
			for b.Loop() {
				sum += Pick(&p, cs)
			}
			if sum < 0 {
				b.Fatal("no instance picked")
			}
		})
	}
}

// Pick follows what the instances publish in their pages: their load as
// it changes, a draining flag, a listener closed.
func TestPickReadsListenerPages(t *testing.T) {
	ps := publishInstances(t, 3)
	cs := candidates(ps)
	var p Picker
	only := func(want int, why string) {
		t.Helper()
		for range 1000 {
			if got := Pick(&p, cs); got != want {
				t.Fatalf("%s: picked %d, want %d", why, got, want)
			}
		}
	}
	ps[0].lay.Load.InFlight.Store(4)
	ps[1].lay.Load.Queued.Store(4)
	ps[0].lay.Load.Draining.Store(1)
	ps[1].lay.Server.State.Store(pool.StateClosed)
	only(2, "the busier two draining and closed")
	ps[0].lay.Load.Draining.Store(0)
	ps[1].lay.Server.State.Store(pool.StateOpen)
	cs[0].closed.Store(true)
	cs[2].closed.Store(true)
	only(1, "the other two's connections closed")
	cs[0].closed.Store(false)
	cs[2].closed.Store(false)
	// Of three, the most loaded per worker is never picked.
	ps[0].lay.Load.InFlight.Store(0)
	ps[1].lay.Load.Queued.Store(5)
	ps[2].lay.Load.InFlight.Store(9)
	never := func(loaded int, why string) {
		t.Helper()
		for range 1000 {
			if got := Pick(&p, cs); got == loaded || got < 0 {
				t.Fatalf("%s: picked %d", why, got)
			}
		}
	}
	never(2, "loads 0, 5, 9")
	ps[0].lay.Load.Queued.Store(20)
	never(0, "20 calls queued on the first")
	ps[0].lay.Load.Queued.Store(0)
	ps[1].lay.Load.Workers.Store(1) // 5 on 1 worker against 9 on 2
	never(1, "the second's workers down to 1")
}

// Pick over real listener pages allocates nothing.
func TestPickInstancesAllocatesNothing(t *testing.T) {
	cs := candidates(publishInstances(t, 3))
	for _, policy := range []Policy{LeastLoad, RoundRobin, PickFirst} {
		p := Picker{Policy: policy}
		if n := testing.AllocsPerRun(1000, func() { Pick(&p, cs) }); n != 0 {
			t.Errorf("%s: %v allocations per Pick, want 0", policy, n)
		}
	}
}
