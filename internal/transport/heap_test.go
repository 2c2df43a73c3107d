package transport

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// connPair returns the two sides of one connection segment in ordinary
// memory, with heaps of heapSize bytes, without readers or liveness.
func connPair(tb testing.TB, heapSize int) (client, server *conn) {
	seg, lay := anonSegment(pool.ConnSpec{C2S: 64 << 10, S2C: 64 << 10, C2SHeap: heapSize, S2CHeap: heapSize})
	tb.Cleanup(func() { seg.Close() })
	client = newConn(seg, lay.Client, lay.Server, lay.C2S, lay.S2C, Wait{})
	client.initHeaps(lay.C2SHeap, lay.C2SReturns, lay.S2CHeap, lay.S2CReturns, false)
	server = newConn(seg, lay.Server, lay.Client, lay.S2C, lay.C2S, Wait{})
	server.initHeaps(lay.S2CHeap, lay.S2CReturns, lay.C2SHeap, lay.C2SReturns, false)
	return client, server
}

// BenchmarkHeapDataPath measures the arena's data path alone, with no gRPC
// call around it: the sender allocates a block, fills its first bytes and
// publishes a MESSAGE_REF; the receiver takes the view, reads it and frees
// it, which hands the block back; the sender's next allocation takes it
// back. It must not allocate.
func BenchmarkHeapDataPath(b *testing.B) {
	for _, n := range []int{16 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			client, server := connPair(b, 64<<20)
			var got int
			server.onFrame = func(h frame.Header, _ []byte) error {
				v := server.takeRef()
				got += int(v.ReadOnlyData()[0])
				v.Free()
				return nil
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				off, blk, ok := client.AllocBlock(n)
				if !ok {
					b.Fatal("heap full")
				}
				blk[0] = 1
				if err := client.WriteRef(ctx, 1, 0, off, n); err != nil {
					b.Fatal(err)
				}
				client.Publish()
				if k, ok := server.Drain(); k != 1 || !ok {
					b.Fatalf("drain handled %d frames, ok %v", k, ok)
				}
			}
			if got != b.N {
				b.Fatalf("read %d messages of %d", got, b.N)
			}
			if client.Own().InUse() > n {
				b.Fatalf("%d bytes of the heap in use after the loop: blocks are not coming back", client.Own().InUse())
			}
		})
	}
}

// TestStageOutsideTheLock stages a large message (written into the heap
// before the write lock is taken), then sends it; a small one is not
// staged; a staged message that is never sent gives its block back.
func TestStageOutsideTheLock(t *testing.T) {
	client, server := connPair(t, pool.MinHeap*4)
	var got []int
	server.onFrame = func(h frame.Header, p []byte) error {
		if h.Type == frame.TypeMessageRef {
			v := server.takeRef()
			got = append(got, v.Len())
			v.Free()
		}
		return nil
	}
	big := OutMsg{raw: true, rawData: bytes.Repeat([]byte{1}, 100<<10), size: 100 << 10}
	small := OutMsg{raw: true, rawData: []byte("small"), size: 5}
	for _, m := range []*OutMsg{&big, &small} {
		if err := client.Stage(m); err != nil {
			t.Fatal(err)
		}
	}
	if big.staged != client || small.staged != nil {
		t.Fatalf("staged: big %v, small %v; want only the big one", big.staged != nil, small.staged != nil)
	}
	if n := client.Own().InUse(); n != 128<<10 {
		t.Fatalf("%d bytes of the heap in use after staging, want one 128 KiB block", n)
	}
	if err := client.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := client.WriteMsg(context.Background(), 1, 0, &big); err != nil {
		t.Fatal(err)
	}
	client.Unlock()
	big.Free()
	if n, ok := server.Drain(); n != 1 || !ok || len(got) != 1 || got[0] != 100<<10 {
		t.Fatalf("the server read %d frames (ok %v), messages %v", n, ok, got)
	}
	unsent := OutMsg{raw: true, rawData: make([]byte, 64<<10), size: 64 << 10}
	client.Stage(&unsent)
	unsent.Free()
	if n := client.Own().InUse(); n != 0 {
		t.Fatalf("%d bytes of the heap in use, want 0", n)
	}
	if client.Pins() != 0 {
		t.Fatalf("%d pins left", client.Pins())
	}
}
