package ring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// testRing is a ring over a plain byte slice with its two counters.
type testRing struct {
	data       []byte
	tail, head atomic.Uint64
	p          *Producer
	c          *Consumer
}

// newTestRing returns a ring of capacity size whose counters both start at
// start, so that the first record goes to start&(size-1).
func newTestRing(t testing.TB, size int, start uint64) *testRing {
	t.Helper()
	if err := CheckCap(size); err != nil {
		t.Fatalf("CheckCap(%d): %v", size, err)
	}
	r := &testRing{data: make([]byte, size)}
	r.tail.Store(start)
	r.head.Store(start)
	r.p = NewProducer(r.data, &r.tail, &r.head)
	r.c = NewConsumer(r.data, &r.tail, &r.head)
	return r
}

// payloadFor returns n deterministic bytes that depend on seed.
func payloadFor(seed uint64, n int) []byte {
	b := make([]byte, n)
	x := seed*0x9e3779b97f4a7c15 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// put reserves, fills and (optionally) publishes one record; it reports
// whether the ring had room.
func (r *testRing) put(t testing.TB, payload []byte, kind byte, publish bool) bool {
	t.Helper()
	rec := r.p.Reserve(len(payload), kind)
	if rec == nil {
		return false
	}
	if len(rec) != HeaderSize+len(payload) {
		t.Fatalf("Reserve(%d) returned %d bytes, want %d", len(payload), len(rec), HeaderSize+len(payload))
	}
	if got := binary.LittleEndian.Uint32(rec[0:4]); got != uint32(len(payload)) {
		t.Fatalf("Reserve(%d) wrote length %d", len(payload), got)
	}
	if rec[4] != kind {
		t.Fatalf("Reserve wrote kind %d, want %d", rec[4], kind)
	}
	for i := 5; i < HeaderSize; i++ {
		if rec[i] != 0 {
			t.Fatalf("Reserve left header byte %d = %#x, want 0", i, rec[i])
		}
	}
	copy(rec[HeaderSize:], payload)
	if publish {
		r.p.Publish()
	}
	return true
}

// mustNext returns the next record and fails on errors.
func (r *testRing) mustNext(t testing.TB) []byte {
	t.Helper()
	rec, err := r.c.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return rec
}

// expectRecord checks that the next record has the given kind and payload.
func (r *testRing) expectRecord(t testing.TB, kind byte, payload []byte) {
	t.Helper()
	rec := r.mustNext(t)
	if rec == nil {
		t.Fatalf("Next returned no record, want %d-byte payload of kind %d", len(payload), kind)
	}
	checkRecord(t, r.data, rec, kind, payload)
}

// checkRecord checks a record returned by Next: it must lie in data, on a
// record boundary, and carry kind and payload.
func checkRecord(t testing.TB, data, rec []byte, kind byte, payload []byte) {
	t.Helper()
	off := recordOffset(t, data, rec)
	if off%Align != 0 {
		t.Errorf("record at offset %d is not aligned", off)
	}
	if off+RecordSize(len(rec)-HeaderSize) > len(data) {
		t.Errorf("record at offset %d of %d bytes wraps around the end of the region", off, len(rec))
	}
	if rec[4] != kind {
		t.Errorf("record kind %d, want %d", rec[4], kind)
	}
	if n := binary.LittleEndian.Uint32(rec[0:4]); int(n) != len(rec)-HeaderSize {
		t.Errorf("record length field %d, record holds %d payload bytes", n, len(rec)-HeaderSize)
	}
	if !bytes.Equal(rec[HeaderSize:], payload) {
		t.Errorf("record payload differs: got %d bytes %x..., want %d bytes %x...",
			len(rec)-HeaderSize, head8(rec[HeaderSize:]), len(payload), head8(payload))
	}
}

func head8(b []byte) []byte { return b[:min(len(b), 8)] }

// recordOffset returns where rec starts in data, failing if rec is not a
// sub-slice of data.
func recordOffset(t testing.TB, data, rec []byte) int {
	t.Helper()
	if len(rec) == 0 {
		t.Fatalf("empty record")
	}
	off := len(data) - cap(rec)
	if off < 0 || off+len(rec) > len(data) || &data[off] != &rec[0] {
		t.Fatalf("record of %d bytes (cap %d) does not lie inside the %d-byte data region", len(rec), cap(rec), len(data))
	}
	return off
}

func expectEmpty(t testing.TB, r *testRing) {
	t.Helper()
	rec, err := r.c.Next()
	if err != nil || rec != nil {
		t.Fatalf("Next on an empty ring = %d bytes, %v; want nil, nil", len(rec), err)
	}
}

func TestRecordSize(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 16}, {1, 32}, {15, 32}, {16, 32}, {17, 48}, {32, 48}, {33, 64},
		{2032, 2048}, {4064, 4080}, {4065, 4096},
	} {
		if got := RecordSize(tc.n); got != tc.want {
			t.Errorf("RecordSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestCheckCap(t *testing.T) {
	for _, tc := range []struct {
		c  int
		ok bool
	}{
		{-4096, false}, {-1, false}, {0, false}, {1, false}, {2, false},
		{16, false}, {2048, false}, {4095, false},
		{4096, true}, {4097, false}, {6144, false}, {8192, true},
		{12288, false}, {1 << 16, true}, {1<<20 + 4096, false},
		{1 << 29, true}, {1 << 30, true}, {1<<30 + 1, false}, {1 << 31, false},
		{1 << 40, false},
	} {
		err := CheckCap(tc.c)
		if (err == nil) != tc.ok {
			t.Errorf("CheckCap(%d) = %v, want ok=%v", tc.c, err, tc.ok)
		}
	}
}

func TestProducerCapAndMaxPayload(t *testing.T) {
	for _, size := range []int{4096, 8192, 1 << 16} {
		r := newTestRing(t, size, 0)
		if r.p.Cap() != size {
			t.Errorf("Cap() = %d, want %d", r.p.Cap(), size)
		}
		if want := size/2 - HeaderSize; r.p.MaxPayload() != want {
			t.Errorf("MaxPayload() = %d, want %d", r.p.MaxPayload(), want)
		}
		if RecordSize(r.p.MaxPayload()) != size/2 {
			t.Errorf("a MaxPayload record takes %d bytes, want half the ring (%d)", RecordSize(r.p.MaxPayload()), size/2)
		}
	}
}

func TestEmptyRing(t *testing.T) {
	for _, start := range []uint64{0, 16, 4080, 4096, 1 << 20, 1<<40 + 2048} {
		t.Run(fmt.Sprint(start), func(t *testing.T) {
			r := newTestRing(t, 4096, start)
			for range 3 {
				expectEmpty(t, r)
			}
			if r.c.Published() {
				t.Error("Published() on an empty ring")
			}
			if r.c.Position() != start {
				t.Errorf("Position() = %d, want %d", r.c.Position(), start)
			}
			if r.p.Unpublished() {
				t.Error("Unpublished() on a new ring")
			}
			if !r.p.Empty() {
				t.Error("Empty() false on a new ring")
			}
			r.c.Release()
			if r.head.Load() != start || r.tail.Load() != start {
				t.Errorf("counters moved on an empty ring: tail %d head %d", r.tail.Load(), r.head.Load())
			}
			r.p.Publish() // nothing reserved: must not move tail
			if r.tail.Load() != start {
				t.Errorf("Publish without Reserve moved tail to %d", r.tail.Load())
			}
			expectEmpty(t, r)
		})
	}
}

func TestSingleRecord(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start uint64
		kind  byte
		n     int
	}{
		{"empty payload", 0, 2, 0},
		{"one byte", 0, 3, 1},
		{"aligned payload", 64, 7, 16},
		{"unaligned payload", 1 << 33, 255, 100},
		{"kind 255", 4096 * 5, 255, 1000},
		{"large", 1024, 2, 2000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRing(t, 4096, tc.start)
			payload := payloadFor(uint64(tc.n), tc.n)
			if !r.put(t, payload, tc.kind, true) {
				t.Fatal("Reserve on an empty ring returned nil")
			}
			if got, want := r.tail.Load(), tc.start+uint64(RecordSize(tc.n)); got != want {
				t.Errorf("tail after Publish = %d, want %d", got, want)
			}
			if !r.c.Published() {
				t.Error("Published() false after Publish")
			}
			if r.p.Empty() {
				t.Error("Empty() true with a published record")
			}
			r.expectRecord(t, tc.kind, payload)
			if got, want := r.c.Position(), tc.start+uint64(RecordSize(tc.n)); got != want {
				t.Errorf("Position() = %d, want %d", got, want)
			}
			if r.c.Published() {
				t.Error("Published() true after reading everything")
			}
			expectEmpty(t, r)
			if r.head.Load() != tc.start {
				t.Error("head moved before Release")
			}
			if r.p.Empty() {
				t.Error("Empty() true before Release")
			}
			r.c.Release()
			if r.head.Load() != r.tail.Load() {
				t.Errorf("head %d != tail %d after Release", r.head.Load(), r.tail.Load())
			}
			if !r.p.Empty() {
				t.Error("Empty() false after Release")
			}
		})
	}
}

// TestPayloadSizes sends one record of each payload size 0..N through one
// ring, so that records land at every alignment and wrap many times.
func TestPayloadSizes(t *testing.T) {
	for _, size := range []int{4096, 8192} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			r := newTestRing(t, size, 0)
			for i := range r.data { // garbage must not leak into headers
				r.data[i] = 0xa5
			}
			maxN := r.p.MaxPayload()
			for n := 0; n <= maxN; n++ {
				payload := payloadFor(uint64(n), n)
				before := r.c.Position()
				pos := before & uint64(size-1)
				wantPad := 0
				if room := size - int(pos); room < RecordSize(n) {
					wantPad = room
				}
				if !r.put(t, payload, byte(2+n%254), true) {
					t.Fatalf("n=%d: Reserve on a drained ring returned nil", n)
				}
				rec := r.mustNext(t)
				if rec == nil {
					t.Fatalf("n=%d: no record", n)
				}
				checkRecord(t, r.data, rec, byte(2+n%254), payload)
				wantOff := int(pos)
				if wantPad > 0 {
					wantOff = 0
				}
				if off := recordOffset(t, r.data, rec); off != wantOff {
					t.Fatalf("n=%d: record at offset %d, want %d", n, off, wantOff)
				}
				if got, want := r.c.Position()-before, uint64(wantPad+RecordSize(n)); got != want {
					t.Fatalf("n=%d: Position advanced by %d, want %d", n, got, want)
				}
				expectEmpty(t, r)
				r.c.Release()
				if t.Failed() {
					return
				}
			}
		})
	}
}

func TestWrapAround(t *testing.T) {
	const size = 4096
	for _, tc := range []struct {
		name    string
		fromEnd int // bytes between the first record and the end of the region
		n       int
		wantPad int // 0: no pad record
	}{
		{"exact fit header only", 16, 0, 0},
		{"exact fit with payload", 32, 16, 0},
		{"one byte too many", 32, 17, 32},
		{"pad of a bare header", 16, 1, 16},
		{"pad of 48", 48, 100, 48},
		{"max payload at the last slot", 16, size/2 - HeaderSize, 16},
		{"max payload at the middle", size / 2, size/2 - HeaderSize, 0},
		{"max payload just past the middle", size/2 - 16, size/2 - HeaderSize, size/2 - 16},
	} {
		for _, base := range []uint64{0, 7 * size, 1 << 41} {
			t.Run(fmt.Sprintf("%s/base%d", tc.name, base), func(t *testing.T) {
				start := base + size - uint64(tc.fromEnd)
				r := newTestRing(t, size, start)
				for i := range r.data {
					r.data[i] = 0xee
				}
				payload := payloadFor(7, tc.n)
				rec := r.p.Reserve(tc.n, 9)
				if rec == nil {
					t.Fatal("Reserve returned nil on an empty ring")
				}
				copy(rec[HeaderSize:], payload)
				wantOff := size - tc.fromEnd
				if tc.wantPad > 0 {
					wantOff = 0
					pad := r.data[size-tc.fromEnd:]
					if got := binary.LittleEndian.Uint32(pad); int(got) != tc.wantPad-HeaderSize {
						t.Errorf("pad length %d, want %d", got, tc.wantPad-HeaderSize)
					}
					if pad[4] != KindPad {
						t.Errorf("pad kind %d, want %d", pad[4], KindPad)
					}
				}
				if &rec[0] != &r.data[wantOff] {
					t.Errorf("record reserved at offset %d, want %d", size-cap(rec), wantOff)
				}
				expectEmpty(t, r) // not published yet
				r.p.Publish()
				if got, want := r.tail.Load(), start+uint64(tc.wantPad+RecordSize(tc.n)); got != want {
					t.Errorf("tail = %d, want %d", got, want)
				}
				got := r.mustNext(t)
				if got == nil {
					t.Fatal("no record after Publish")
				}
				checkRecord(t, r.data, got, 9, payload)
				if off := recordOffset(t, r.data, got); off != wantOff {
					t.Errorf("consumer got record at %d, want %d", off, wantOff)
				}
				if r.c.Position() != r.tail.Load() {
					t.Errorf("Position %d != tail %d", r.c.Position(), r.tail.Load())
				}
				expectEmpty(t, r)
				r.c.Release()
				// The ring keeps working after the wrap.
				for i := range 10 {
					p := payloadFor(uint64(i), 50*i)
					if !r.put(t, p, 2, true) {
						t.Fatalf("record %d after wrap: no room", i)
					}
					r.expectRecord(t, 2, p)
					r.c.Release()
				}
			})
		}
	}
}

// TestWrapAroundBatch puts a record before the end of the region, a wrapped
// one after it, and publishes both at once.
func TestWrapAroundBatch(t *testing.T) {
	const size = 4096
	r := newTestRing(t, size, size-96)
	a, b, c := payloadFor(1, 40), payloadFor(2, 300), payloadFor(3, 0)
	r.put(t, a, 2, false) // 64 bytes: leaves 32 before the end
	r.put(t, b, 3, false) // needs 320: pad 32, then offset 0
	r.put(t, c, 4, false)
	expectEmpty(t, r)
	r.p.Publish()
	r.expectRecord(t, 2, a)
	r.expectRecord(t, 3, b)
	r.expectRecord(t, 4, c)
	expectEmpty(t, r)
	if want := uint64(size-96) + 64 + 32 + 320 + 16; r.c.Position() != want {
		t.Errorf("Position = %d, want %d", r.c.Position(), want)
	}
}

// TestWrapNeedsPadRoom checks that a record needing a pad is refused when
// the pad and the record do not fit together, and that nothing is written.
func TestWrapNeedsPadRoom(t *testing.T) {
	const size = 4096
	r := newTestRing(t, size, 0)
	// Occupy [0, 3072) and free only [0, 1024).
	for range 3 {
		r.put(t, payloadFor(0, 1024-HeaderSize), 2, true)
	}
	r.mustNext(t)
	r.c.Release()
	// Free space: [3072, 4096) and [0, 1024): 2048 bytes, but a 1040-byte
	// record does not fit in 1024 before the end and needs 1024+1040.
	if rec := r.p.Reserve(1040-HeaderSize, 2); rec != nil {
		t.Fatal("Reserve succeeded without room for pad and record")
	}
	if r.p.Unpublished() {
		t.Fatal("a refused Reserve left reserved bytes")
	}
	// A record that fits before the end still works.
	p := payloadFor(5, 1024-HeaderSize)
	if !r.put(t, p, 5, true) {
		t.Fatal("Reserve of a record that fits before the end failed")
	}
	// Free the two remaining older records: now pad-free room at 0.
	r.mustNext(t)
	r.mustNext(t)
	r.expectRecord(t, 5, p)
	r.c.Release()
	q := payloadFor(6, 1040-HeaderSize)
	if !r.put(t, q, 6, true) {
		t.Fatal("Reserve failed on a drained ring")
	}
	r.expectRecord(t, 6, q)
}

func TestFullRing(t *testing.T) {
	const size = 4096
	for _, n := range []int{0, 1, 100, 240, 1008, 2032} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := newTestRing(t, size, 0)
			rs := RecordSize(n)
			want := size / rs
			count := 0
			for r.put(t, payloadFor(uint64(count), n), 2, false) {
				count++
				if count > size/HeaderSize {
					t.Fatal("ring accepted more records than it can hold")
				}
			}
			if count != want {
				t.Fatalf("ring took %d records of %d bytes, want %d", count, rs, want)
			}
			if !r.p.Unpublished() {
				t.Error("Unpublished() false with reserved records")
			}
			r.p.Publish()
			if r.p.Reserve(n, 2) != nil {
				t.Fatal("Reserve succeeded on a full ring after Publish")
			}
			// Reading without releasing frees nothing.
			r.expectRecord(t, 2, payloadFor(0, n))
			if r.p.Reserve(n, 2) != nil {
				t.Fatal("Reserve succeeded before the consumer released")
			}
			r.c.Release()
			if !r.put(t, payloadFor(1000, n), 2, true) {
				t.Fatal("Reserve failed after the consumer released a record")
			}
			for i := 1; i < count; i++ {
				r.expectRecord(t, 2, payloadFor(uint64(i), n))
			}
			r.expectRecord(t, 2, payloadFor(1000, n))
			expectEmpty(t, r)
			r.c.Release()
			if !r.p.Empty() {
				t.Error("Empty() false after draining")
			}
		})
	}
}

func TestMaxPayloadEveryStart(t *testing.T) {
	for _, size := range []int{4096, 8192} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			for start := uint64(0); start < uint64(size); start += Align {
				for _, base := range []uint64{0, uint64(size) * 1000} {
					r := newTestRing(t, size, base+start)
					maxN := r.p.MaxPayload()
					p := payloadFor(start, maxN)
					if !r.put(t, p, 2, true) {
						t.Fatalf("start %d: Reserve(MaxPayload) returned nil on an empty ring", start)
					}
					r.expectRecord(t, 2, p)
					expectEmpty(t, r)
					r.c.Release()
					// And again right after it, wherever that lands.
					if !r.put(t, p, 3, true) {
						t.Fatalf("start %d: second Reserve(MaxPayload) returned nil on a drained ring", start)
					}
					r.expectRecord(t, 3, p)
					if t.Failed() {
						return
					}
				}
			}
		})
	}
}

func TestReservePanics(t *testing.T) {
	r := newTestRing(t, 4096, 0)
	for _, n := range []int{r.p.MaxPayload() + 1, r.p.MaxPayload() + 16, 4096, 1 << 31, -1, -16} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Reserve(%d) did not panic", n)
				}
			}()
			r.p.Reserve(n, 2)
		}()
		if r.p.Unpublished() {
			t.Fatalf("Reserve(%d) panicked after reserving bytes", n)
		}
	}
	// The ring still works.
	p := payloadFor(1, r.p.MaxPayload())
	if !r.put(t, p, 2, true) {
		t.Fatal("Reserve(MaxPayload) failed after the panics")
	}
	r.expectRecord(t, 2, p)
}

func TestBatching(t *testing.T) {
	for _, count := range []int{1, 2, 5, 20} {
		t.Run(fmt.Sprint(count), func(t *testing.T) {
			r := newTestRing(t, 8192, 4096-64)
			var payloads [][]byte
			for i := range count {
				p := payloadFor(uint64(i), (i*37)%300)
				payloads = append(payloads, p)
				if !r.put(t, p, byte(2+i), false) {
					t.Fatalf("record %d: no room", i)
				}
				if !r.p.Unpublished() {
					t.Fatal("Unpublished() false after Reserve")
				}
				if r.c.Published() {
					t.Fatal("Published() true before Publish")
				}
				expectEmpty(t, r)
				if r.tail.Load() != 4096-64 {
					t.Fatal("tail moved before Publish")
				}
			}
			r.p.Publish()
			if r.p.Unpublished() {
				t.Error("Unpublished() true after Publish")
			}
			if !r.c.Published() {
				t.Error("Published() false after Publish")
			}
			for i, p := range payloads {
				if !r.c.Published() {
					t.Errorf("Published() false with %d records left", count-i)
				}
				r.expectRecord(t, byte(2+i), p)
			}
			if r.c.Published() {
				t.Error("Published() true after reading everything")
			}
			expectEmpty(t, r)
			if r.c.Position() != r.tail.Load() {
				t.Errorf("Position() %d != tail %d", r.c.Position(), r.tail.Load())
			}
		})
	}
}

// TestPublishInterleaved publishes a second batch while the consumer is in
// the middle of the first.
func TestPublishInterleaved(t *testing.T) {
	r := newTestRing(t, 4096, 0)
	a, b, c := payloadFor(1, 10), payloadFor(2, 20), payloadFor(3, 30)
	r.put(t, a, 2, false)
	r.put(t, b, 2, true)
	r.expectRecord(t, 2, a)
	r.put(t, c, 2, true)
	r.expectRecord(t, 2, b)
	r.expectRecord(t, 2, c)
	expectEmpty(t, r)
}

func TestPositionAndPublished(t *testing.T) {
	const size = 4096
	start := uint64(size - 48)
	r := newTestRing(t, size, start)
	steps := []struct {
		op        string
		n         int
		wantPos   uint64
		published bool
	}{
		{"check", 0, start, false},
		{"put", 10, start, true},  // 32 bytes at 4048
		{"put", 100, start, true}, // needs 128: pad 16 at 4080, then 0
		{"next", 10, start + 32, true},
		{"next", 100, start + 32 + 16 + 128, false},
		{"empty", 0, start + 176, false},
		{"release", 0, start + 176, false},
		{"put", 0, start + 176, true},
		{"next", 0, start + 192, false},
	}
	var queue [][]byte
	for i, s := range steps {
		switch s.op {
		case "put":
			p := payloadFor(uint64(i), s.n)
			queue = append(queue, p)
			r.put(t, p, 2, true)
		case "next":
			r.expectRecord(t, 2, queue[0])
			queue = queue[1:]
		case "empty":
			expectEmpty(t, r)
		case "release":
			r.c.Release()
			if r.head.Load() != s.wantPos {
				t.Errorf("step %d: head = %d, want %d", i, r.head.Load(), s.wantPos)
			}
		}
		if got := r.c.Position(); got != s.wantPos {
			t.Errorf("step %d (%s): Position() = %d, want %d", i, s.op, got, s.wantPos)
		}
		if got := r.c.Published(); got != s.published {
			t.Errorf("step %d (%s): Published() = %v, want %v", i, s.op, got, s.published)
		}
	}
}

// TestNewEndsResume checks that producer and consumer created over counters
// that are already in use pick up where the old ends stopped.
func TestNewEndsResume(t *testing.T) {
	r := newTestRing(t, 4096, 0)
	a, b := payloadFor(1, 500), payloadFor(2, 700)
	r.put(t, a, 2, true)
	r.expectRecord(t, 2, a)
	r.c.Release()
	r.put(t, b, 3, true)
	p := NewProducer(r.data, &r.tail, &r.head)
	c := NewConsumer(r.data, &r.tail, &r.head)
	if c.Position() != r.head.Load() {
		t.Errorf("new consumer at %d, head %d", c.Position(), r.head.Load())
	}
	rec, err := c.Next()
	if err != nil || rec == nil {
		t.Fatalf("new consumer Next = %v, %v", rec, err)
	}
	checkRecord(t, r.data, rec, 3, b)
	c.Release()
	q := payloadFor(3, 3000/2)
	rec = p.Reserve(len(q), 4)
	if rec == nil {
		t.Fatal("new producer could not reserve")
	}
	copy(rec[HeaderSize:], q)
	p.Publish()
	rec, err = c.Next()
	if err != nil || rec == nil {
		t.Fatalf("Next = %v, %v", rec, err)
	}
	checkRecord(t, r.data, rec, 4, q)
}

func TestTailWord(t *testing.T) {
	var tail atomic.Uint64
	w := TailWord(&tail)
	for _, v := range []uint64{0, 16, 0xffff_fff0, 1 << 32, 0x1234_5678_9abc_def0} {
		tail.Store(v)
		if got := w.Load(); got != uint32(v) {
			t.Errorf("TailWord after Store(%#x) = %#x, want %#x", v, got, uint32(v))
		}
	}
	// The word changes with every publish, even across a 2^32 boundary.
	r := newTestRing(t, 4096, 1<<32-32)
	w = TailWord(&r.tail)
	prev := w.Load()
	for i := range 4 {
		r.put(t, nil, 2, true)
		if w.Load() == prev {
			t.Fatalf("publish %d did not change the tail word", i)
		}
		prev = w.Load()
		r.mustNext(t)
		r.c.Release()
	}
}

// corruptCase describes a consumer facing a hostile producer: setup writes
// records and counters by hand.
type corruptCase struct {
	name  string
	head  uint64
	setup func(data []byte, tail *atomic.Uint64)
	valid int // records Next returns before the error
}

// hdr writes a raw record header at off.
func hdr(data []byte, off int, n uint32, kind byte) {
	binary.LittleEndian.PutUint32(data[off:], n)
	data[off+4] = kind
}

func corruptCases() []corruptCase {
	const size = 4096
	return []corruptCase{
		{name: "tail not a multiple of 16", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0, 2)
			t.Store(8)
		}},
		{name: "tail odd", head: 1 << 20, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0, 2)
			t.Store(1<<20 + 17)
		}},
		{name: "tail a cap and 16 ahead", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0, 2)
			t.Store(size + 16)
		}},
		{name: "tail far ahead", head: 4096, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0, 2)
			t.Store(1 << 60)
		}},
		{name: "tail behind head", head: 8192, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0, 2)
			t.Store(8192 - 16)
		}},
		{name: "tail zero behind head", head: 1 << 40, setup: func(d []byte, t *atomic.Uint64) {
			t.Store(0)
		}},
		{name: "tail behind head by more than cap", head: 3 * size, setup: func(d []byte, t *atomic.Uint64) {
			t.Store(size)
		}},
		{name: "record overruns region end", head: size - 32, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, size-32, 32, 2) // needs 48 bytes, 32 left
			t.Store(size - 32 + 64)
		}},
		{name: "pad overruns region end", head: size - 32, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, size-32, 100, KindPad)
			t.Store(size - 32 + 256)
		}},
		{name: "record beyond published bytes", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 100, 2)
			t.Store(32)
		}},
		{name: "record one block beyond published", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 17, 2) // 48 bytes
			t.Store(32)
		}},
		{name: "pad beyond published bytes", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 64, KindPad)
			t.Store(64)
		}},
		{name: "length larger than the ring", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0xffff_ffff, 2)
			t.Store(size)
		}},
		{name: "length exactly the ring", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, size, 2)
			t.Store(size)
		}},
		{name: "kind 0", setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 5, KindInvalid)
			t.Store(32)
		}},
		{name: "zeroed memory", head: 1 << 30, setup: func(d []byte, t *atomic.Uint64) {
			t.Store(1<<30 + 16)
		}},
		{name: "kind 0 after a valid record", valid: 1, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 3, 2)
			hdr(d, 32, 0, KindInvalid)
			t.Store(48)
		}},
		{name: "kind 0 after a pad", head: size - 64, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, size-64, 64-HeaderSize, KindPad)
			hdr(d, 0, 0, KindInvalid)
			t.Store(size - 64 + 128)
		}},
		{name: "overrun after a valid record", valid: 2, setup: func(d []byte, t *atomic.Uint64) {
			hdr(d, 0, 0, 2)
			hdr(d, 16, 0, 3)
			hdr(d, 32, 200, 4)
			t.Store(64)
		}},
	}
}

// nextNoPanic calls Next, turning a panic into a test failure.
func nextNoPanic(t testing.TB, c *Consumer) (rec []byte, err error) {
	t.Helper()
	defer func() {
		if v := recover(); v != nil {
			t.Fatalf("Next panicked: %v", v)
		}
	}()
	return c.Next()
}

func TestConsumerCorrupt(t *testing.T) {
	const size = 4096
	for _, tc := range corruptCases() {
		t.Run(tc.name, func(t *testing.T) {
			data := make([]byte, size)
			var tail, head atomic.Uint64
			head.Store(tc.head)
			tail.Store(tc.head)
			c := NewConsumer(data, &tail, &head)
			tc.setup(data, &tail)
			for i := range tc.valid {
				rec, err := nextNoPanic(t, c)
				if err != nil || rec == nil {
					t.Fatalf("record %d: Next = %v, %v; want a valid record", i, rec, err)
				}
				recordOffset(t, data, rec)
			}
			rec, err := nextNoPanic(t, c)
			if err == nil {
				t.Fatalf("Next = %d bytes, nil error; want an error wrapping ErrCorrupt", len(rec))
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next error %q does not wrap ErrCorrupt", err)
			}
			if rec != nil {
				t.Errorf("Next returned %d bytes along with error %v", len(rec), err)
			}
		})
	}
}

// TestConsumerCorruptLater publishes good records, then a broken tail: the
// error shows up only once the consumer has read up to the old tail.
func TestConsumerCorruptLater(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(old uint64) uint64
	}{
		{"unaligned", func(old uint64) uint64 { return old + 8 }},
		{"backwards", func(old uint64) uint64 { return old - 16 }},
		{"too far", func(old uint64) uint64 { return old + 4096 + 16 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRing(t, 4096, 4096*3)
			a, b := payloadFor(1, 33), payloadFor(2, 0)
			r.put(t, a, 2, true)
			r.put(t, b, 2, true)
			r.expectRecord(t, 2, a)
			r.c.Release()
			r.tail.Store(tc.tail(r.tail.Load()))
			r.expectRecord(t, 2, b) // tail not reloaded yet
			_, err := nextNoPanic(t, r.c)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next error = %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestConsumerFullRingValid checks the boundary: tail exactly a capacity
// ahead of head is a full ring, not corruption.
func TestConsumerFullRingValid(t *testing.T) {
	const size = 4096
	for _, head := range []uint64{0, size / 2, 1<<40 + 64*5} { // records of 64 bytes tile the ring
		data := make([]byte, size)
		pos := int(head & (size - 1))
		for i := 0; i < size/64; i++ {
			hdr(data, (pos+64*i)&(size-1), 48, byte(2+i))
		}
		var tail, h atomic.Uint64
		h.Store(head)
		tail.Store(head + size)
		c := NewConsumer(data, &tail, &h)
		for i := 0; i < size/64; i++ {
			rec, err := nextNoPanic(t, c)
			if err != nil || rec == nil {
				t.Fatalf("head %d, record %d: Next = %v, %v", head, i, rec, err)
			}
			if rec[4] != byte(2+i) || len(rec) != 64 {
				t.Fatalf("head %d, record %d: kind %d len %d", head, i, rec[4], len(rec))
			}
		}
		if rec, err := c.Next(); rec != nil || err != nil {
			t.Fatalf("head %d: Next after the full ring = %v, %v", head, rec, err)
		}
	}
}

// TestConsumerPadOnly checks that a published stretch of only pad records
// yields nothing and moves the position over them.
func TestConsumerPadOnly(t *testing.T) {
	data := make([]byte, 4096)
	var tail, head atomic.Uint64
	hdr(data, 0, 0, KindPad)
	hdr(data, 16, 100, KindPad)
	hdr(data, 144, 4096-144-HeaderSize, KindPad)
	tail.Store(4096)
	c := NewConsumer(data, &tail, &head)
	rec, err := nextNoPanic(t, c)
	if rec != nil || err != nil {
		t.Fatalf("Next = %v, %v; want nil, nil", rec, err)
	}
	if c.Position() != 4096 {
		t.Errorf("Position = %d, want 4096", c.Position())
	}
	c.Release()
	if head.Load() != 4096 {
		t.Errorf("head = %d, want 4096", head.Load())
	}
}

// concurrentRecords is how many records TestConcurrent sends. 200k take
// about 1-3 s under -race on two cores; -short cuts that down.
func concurrentRecords() int {
	if testing.Short() {
		return 50_000
	}
	return 200_000
}

// recordShape returns the deterministic size, kind and content offset of
// record seq in TestConcurrent.
func recordShape(seq uint64, patLen int) (n int, kind byte, off int) {
	x := seq*0x9e3779b97f4a7c15 + 0x632be59bd9b4e019
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	switch x % 8 {
	case 0:
		n = 0
	case 1, 2:
		n = int(x>>8) % 32
	default:
		n = int(x>>8) % 3001
	}
	kind = byte(2 + (x>>40)%254)
	off = int(x>>20) % (patLen - n)
	return
}

// TestConcurrent runs a producer and a consumer in two goroutines through a
// small ring and checks every record for order and contents.
func TestConcurrent(t *testing.T) {
	const size = 8192
	total := concurrentRecords()
	pattern := payloadFor(42, 1<<16)
	r := newTestRing(t, size, 1<<32-size/2) // the tail word wraps on the way
	var failed atomic.Bool
	deadline := time.Now().Add(2 * time.Minute)
	stuck := func(spins *int) bool {
		*spins++
		if *spins%4096 == 0 && time.Now().After(deadline) {
			failed.Store(true)
			return true
		}
		return failed.Load()
	}
	var wg sync.WaitGroup
	wg.Add(2)
	var prodErr, consErr error
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		spins := 0
		for seq := uint64(0); seq < uint64(total); {
			n, kind, off := recordShape(seq, len(pattern))
			rec := r.p.Reserve(n, kind)
			if rec == nil {
				if r.p.Unpublished() {
					r.p.Publish()
				}
				if stuck(&spins) {
					prodErr = fmt.Errorf("producer stuck at record %d", seq)
					return
				}
				runtime.Gosched()
				continue
			}
			payload := rec[HeaderSize:]
			copy(payload, pattern[off:off+n])
			binary.LittleEndian.PutUint32(rec[8:12], uint32(seq))
			binary.LittleEndian.PutUint32(rec[12:16], crc32.ChecksumIEEE(payload))
			seq++
			if rng.IntN(4) == 0 || seq == uint64(total) {
				r.p.Publish()
			}
		}
	}()
	go func() {
		defer wg.Done()
		spins := 0
		for seq := uint64(0); seq < uint64(total); {
			rec, err := r.c.Next()
			if err != nil {
				consErr = fmt.Errorf("record %d: %v", seq, err)
				failed.Store(true)
				return
			}
			if rec == nil {
				r.c.Release()
				if stuck(&spins) {
					consErr = fmt.Errorf("consumer stuck at record %d", seq)
					return
				}
				runtime.Gosched()
				continue
			}
			n, kind, off := recordShape(seq, len(pattern))
			if err := verifyConcurrent(rec, seq, n, kind, pattern[off:off+n]); err != nil {
				consErr = err
				failed.Store(true)
				return
			}
			seq++
			if seq%5 == 0 {
				r.c.Release()
			}
		}
		r.c.Release()
	}()
	wg.Wait()
	if prodErr != nil {
		t.Error(prodErr)
	}
	if consErr != nil {
		t.Fatal(consErr)
	}
	if rec, err := r.c.Next(); rec != nil || err != nil {
		t.Fatalf("Next after the last record = %v, %v", rec, err)
	}
	if !r.p.Empty() {
		t.Error("ring not empty at the end")
	}
}

func verifyConcurrent(rec []byte, seq uint64, n int, kind byte, want []byte) error {
	if len(rec) != HeaderSize+n {
		return fmt.Errorf("record %d: %d bytes, want %d", seq, len(rec), HeaderSize+n)
	}
	if rec[4] != kind {
		return fmt.Errorf("record %d: kind %d, want %d", seq, rec[4], kind)
	}
	if rec[5] != 0 || rec[6] != 0 || rec[7] != 0 {
		return fmt.Errorf("record %d: header bytes 5-7 = %x, want zero", seq, rec[5:8])
	}
	if got := binary.LittleEndian.Uint32(rec[8:12]); got != uint32(seq) {
		return fmt.Errorf("record %d: sequence number %d (out of order)", seq, got)
	}
	payload := rec[HeaderSize:]
	if got, w := binary.LittleEndian.Uint32(rec[12:16]), crc32.ChecksumIEEE(payload); got != w {
		return fmt.Errorf("record %d: checksum %#x, payload sums to %#x", seq, got, w)
	}
	if !bytes.Equal(payload, want) {
		return fmt.Errorf("record %d: payload differs from the pattern", seq)
	}
	return nil
}

// TestPrepareAllocatesAsItGoes fills a ring whose pages are not allocated
// yet (SetPrepare) record by record, wrapping twice: the prepared bytes
// grow contiguously from 0 ahead of every record, never past the region,
// and once all of it is prepared no call is made; a failure stops the
// write.
func TestPrepareAllocatesAsItGoes(t *testing.T) {
	const size = 256 << 10
	r := newTestRing(t, size, 0)
	var calls int
	var upTo int
	r.p.SetPrepare(func(off, n int) error {
		calls++
		if off != upTo || n <= 0 || off+n > size {
			t.Fatalf("prepare(%d, %d) after %d bytes prepared, region %d", off, n, upTo, size)
		}
		upTo = off + n
		return nil
	}, 0)
	payload := make([]byte, 3000)
	for i := range 3 * size / len(payload) {
		if err := r.p.Prepare(len(payload)); err != nil {
			t.Fatal(err)
		}
		pos := int(r.p.next & r.p.mask)
		rec := r.p.Reserve(len(payload), 7)
		if rec == nil {
			t.Fatalf("record %d: ring full", i)
		}
		if start := int(uintptr(unsafe.Pointer(&rec[0])) - uintptr(unsafe.Pointer(&r.data[0]))); start+len(rec) > upTo && pos < size {
			t.Fatalf("record %d at %d..%d written past the %d prepared bytes", i, start, start+len(rec), upTo)
		}
		r.p.Publish()
		r.mustNext(t)
		r.c.Release()
	}
	if upTo != size || calls != size/prepareAhead {
		t.Errorf("prepared %d bytes in %d calls; want %d in %d", upTo, calls, size, size/prepareAhead)
	}
	failing := newTestRing(t, size, 0)
	failing.p.SetPrepare(func(off, n int) error { return errors.New("no room") }, 0)
	if err := failing.p.Prepare(16); err == nil {
		t.Error("a failing prepare let the write go on")
	}
}
