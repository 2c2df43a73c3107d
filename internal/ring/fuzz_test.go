package ring

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
)

// Fuzz input layout for the consumer targets:
//
//	0  8  tail control (little-endian), see fuzzCounters
//	8  8  head
//	16 -  ring contents, repeated to fill the data region starting at
//	      head's position and wrapping around its end (repeating keeps
//	      inputs short: the minimizer is quadratic in the input length)
const (
	fuzzCap    = 4096
	fuzzRounds = 8     // times the fake producer re-publishes
	fuzzIters  = 10000 // bound on Next/Release calls per input
)

// fuzzCounters derives the initial head and tail, and the stride by which
// the fake producer advances tail whenever the consumer has caught up.
//
// The top two bits of the tail control pick a mode: 0 puts tail up to 16383
// bytes ahead of head, 1 up to 16383 bytes behind it, 2 and 3 take the
// control word itself as tail. The stride is bits 16-28 (mode 0 only).
func fuzzCounters(in []byte, alignHead bool) (head, tail, stride uint64) {
	var b [16]byte
	copy(b[:], in)
	ctl := binary.LittleEndian.Uint64(b[0:8])
	head = binary.LittleEndian.Uint64(b[8:16])
	if alignHead {
		// The consumer trusts the initial head, which it wrote itself;
		// see bug_test.go for what an unaligned one does.
		head &^= Align - 1
	}
	delta := ctl & 0x3fff
	switch ctl >> 62 {
	case 0:
		tail = head + delta
		stride = (ctl >> 16) & 0x1fff
	case 1:
		tail = head - delta
	default:
		tail = ctl
	}
	return head, tail, stride
}

// runFuzzConsumer drives a consumer over a ring built from in and checks
// that it never hands out a record outside the data region or beyond what
// was published, and fails only with ErrCorrupt.
func runFuzzConsumer(t *testing.T, in []byte, alignHead bool) {
	head0, tail0, stride := fuzzCounters(in, alignHead)
	data := make([]byte, fuzzCap)
	if len(in) > 16 {
		body := in[16:]
		pos := int(head0 & (fuzzCap - 1))
		for i := 0; i < fuzzCap; i++ {
			data[(pos+i)&(fuzzCap-1)] = body[i%len(body)]
		}
	}
	var tail, head atomic.Uint64
	tail.Store(tail0)
	head.Store(head0)
	c := NewConsumer(data, &tail, &head)
	if c.Position() != head0 {
		t.Fatalf("Position() = %d, want head %d", c.Position(), head0)
	}

	rounds, records := 0, 0
	for iter := 0; ; iter++ {
		if iter == fuzzIters {
			// Each iteration either returns a record (at least 16 of
			// the at most fuzzCap*(fuzzRounds+1) bytes published), or
			// re-publishes, or stops: the bound is never reached.
			t.Fatalf("no end after %d iterations (%d records, %d rounds)", iter, records, rounds)
		}
		before := c.Position()
		rec, err := c.Next()
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next error %q does not wrap ErrCorrupt", err)
			}
			if rec != nil {
				t.Fatalf("Next returned %d bytes with error %v", len(rec), err)
			}
			return // a broken ring is not used again
		}
		after := c.Position()
		published := tail.Load() - before
		if rec == nil {
			if after-before > published {
				t.Fatalf("Next skipped %d bytes with only %d published", after-before, published)
			}
			if after != tail.Load() {
				t.Fatalf("Next returned nothing at position %d with tail %d", after, tail.Load())
			}
			c.Release()
			if head.Load() != after {
				t.Fatalf("Release stored head %d, want %d", head.Load(), after)
			}
			if rounds == fuzzRounds || stride == 0 {
				return
			}
			rounds++
			tail.Add(stride) // the same bytes, published again further on
			continue
		}
		records++
		checkFuzzRecord(t, data, rec, before, after, published)
		if records%3 == 0 {
			c.Release()
		}
	}
}

func checkFuzzRecord(t *testing.T, data, rec []byte, before, after, published uint64) {
	if len(rec) < HeaderSize {
		t.Fatalf("record of %d bytes is shorter than a header", len(rec))
	}
	off := len(data) - cap(rec)
	if off < 0 || off+len(rec) > len(data) || &data[off] != &rec[0] {
		t.Fatalf("record of %d bytes (cap %d) lies outside the data region", len(rec), cap(rec))
	}
	n := len(rec) - HeaderSize
	if off+RecordSize(n) > len(data) {
		t.Fatalf("record of %d bytes at offset %d wraps around the end of the region", len(rec), off)
	}
	if got := binary.LittleEndian.Uint32(rec[0:4]); int(got) != n {
		t.Fatalf("record length field %d, record holds %d bytes", got, n)
	}
	if rec[4] == KindInvalid || rec[4] == KindPad {
		t.Fatalf("Next returned a record of kind %d", rec[4])
	}
	if uint64(off) != (after-uint64(RecordSize(n)))&uint64(len(data)-1) {
		t.Fatalf("record at offset %d does not end at position %d", off, after)
	}
	if used := after - before; used < uint64(RecordSize(n)) || used > published {
		t.Fatalf("Next moved %d bytes for a %d-byte record with %d bytes published", used, RecordSize(n), published)
	}
}

// FuzzConsumer feeds a consumer a ring filled with arbitrary bytes and
// arbitrary counters, as a hostile producer could leave it.
func FuzzConsumer(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		runFuzzConsumer(t, in, true)
	})
}
