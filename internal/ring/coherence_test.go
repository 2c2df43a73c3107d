package ring

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/notnets/notnets/internal/coherence"
)

// simRing is a ring in memory without coherence: both counters and the
// data in one shared buffer, each side working on its own simulated copy.
type simRing struct {
	p *Producer
	c *Consumer
}

func newSimRing(t *testing.T, capacity int, pc, cc func(*coherence.Sim) coherence.Coherence) simRing {
	t.Helper()
	shared := make([]byte, 4096+capacity) // tail at 0, head at 64, data from 4096
	side := func(wrap func(*coherence.Sim) coherence.Coherence) (coherence.Coherence, *atomic.Uint64, *atomic.Uint64, []byte) {
		s, err := coherence.NewSim(shared)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		tail := (*atomic.Uint64)(unsafe.Pointer(&s.View[0]))
		head := (*atomic.Uint64)(unsafe.Pointer(&s.View[64]))
		if wrap == nil {
			return s, tail, head, s.View[4096:]
		}
		return wrap(s), tail, head, s.View[4096:]
	}
	pcoh, ptail, phead, pdata := side(pc)
	ccoh, ctail, chead, cdata := side(cc)
	r := simRing{p: NewProducerAt(pdata, ptail, phead, 0), c: NewConsumerAt(cdata, ctail, chead, 0)}
	r.p.SetCoherence(pcoh)
	r.c.SetCoherence(ccoh)
	return r
}

// TestRingOverSimulatedMemory sends 20,000 records of random sizes through
// a ring whose sides share memory only through the simulator's flushes
// and invalidates (PROTOCOL.md 18.2): every record arrives whole and in
// order, and the producer sees the space the consumer frees.
func TestRingOverSimulatedMemory(t *testing.T) {
	r := newSimRing(t, 8192, nil, nil)
	const n = 20000
	done := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < n; i++ {
			size := rng.IntN(r.p.MaxPayload() / 4)
			var rec []byte
			for rec == nil {
				rec = r.p.Reserve(size, 2)
			}
			fill(rec[HeaderSize:], i)
			r.p.Publish()
		}
		done <- nil
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < n; {
		rec, err := r.c.Next()
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if rec == nil {
			continue
		}
		size := rng.IntN(r.p.MaxPayload() / 4)
		want := make([]byte, size)
		fill(want, i)
		if !bytes.Equal(rec[HeaderSize:], want) {
			t.Fatalf("record %d: %d bytes, not what was sent (%d bytes)", i, len(rec)-HeaderSize, size)
		}
		r.c.Release()
		i++
	}
	<-done
}

func fill(b []byte, seed int) {
	for k := range b {
		b[k] = byte(seed*7 + k)
	}
}

// dropFlushes is a side that forgets some of its flushes.
type dropFlushes struct {
	*coherence.Sim
	drop func(b []byte) bool
}

func (d dropFlushes) Flush(b []byte) {
	if !d.drop(b) {
		d.Sim.Flush(b)
	}
}

// TestSimCatchesARemovedFlush removes one flush of the ring's protocol at
// a time and checks that the simulator shows it: without the records'
// flush the consumer reads stale bytes (a record of kind 0, a broken
// ring); without the tail's, it never sees a record (a hang, here a
// bounded number of polls).
func TestSimCatchesARemovedFlush(t *testing.T) {
	noRecords := func(s *coherence.Sim) coherence.Coherence {
		return dropFlushes{s, func(b []byte) bool { return len(b) != 8 }}
	}
	r := newSimRing(t, 8192, noRecords, nil)
	fill(r.p.Reserve(100, 2)[HeaderSize:], 1)
	r.p.Publish()
	if rec, err := r.c.Next(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("without the records' flush: Next = %d bytes, %v; want the stale (zero) record refused as corrupt", len(rec), err)
	}

	noTail := func(s *coherence.Sim) coherence.Coherence {
		return dropFlushes{s, func(b []byte) bool { return len(b) == 8 }}
	}
	r = newSimRing(t, 8192, noTail, nil)
	fill(r.p.Reserve(100, 2)[HeaderSize:], 1)
	r.p.Publish()
	for i := 0; i < 100000; i++ {
		if rec, err := r.c.Next(); rec != nil || err != nil {
			t.Fatalf("without the tail's flush the consumer got a record (%d bytes, %v): the simulator shares more than it should", len(rec), err)
		}
	}

	// And with every flush, the same record arrives.
	r = newSimRing(t, 8192, nil, nil)
	fill(r.p.Reserve(100, 2)[HeaderSize:], 1)
	r.p.Publish()
	if rec, err := r.c.Next(); err != nil || len(rec) != HeaderSize+100 {
		t.Fatalf("with every flush: Next = %d bytes, %v; want the record", len(rec), err)
	}
}
