package notnets

import (
	"context"
	"testing"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// connPair returns the two sides of one connection segment in ordinary
// memory, with heaps of heapSize bytes, without readers or liveness.
func connPair(tb testing.TB, heapSize int) (client, server *conn) {
	seg, lay := anonSegment(pool.ConnSpec{C2S: 64 << 10, S2C: 64 << 10, C2SHeap: heapSize, S2CHeap: heapSize})
	tb.Cleanup(func() { seg.Close() })
	client = newConn(seg, lay.Client, lay.Server, lay.C2S, lay.S2C, defaultWait())
	client.initHeaps(lay.C2SHeap, lay.C2SReturns, lay.S2CHeap, lay.S2CReturns, false)
	server = newConn(seg, lay.Server, lay.Client, lay.S2C, lay.C2S, defaultWait())
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
		b.Run(sizeName(n), func(b *testing.B) {
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
				off, blk, ok := client.allocBlock(n)
				if !ok {
					b.Fatal("heap full")
				}
				blk[0] = 1
				if err := client.writeRef(ctx, 1, 0, off, n); err != nil {
					b.Fatal(err)
				}
				client.publish()
				if k, ok := server.drain(); k != 1 || !ok {
					b.Fatalf("drain handled %d frames, ok %v", k, ok)
				}
			}
			if got != b.N {
				b.Fatalf("read %d messages of %d", got, b.N)
			}
			if client.own.InUse() > n {
				b.Fatalf("%d bytes of the heap in use after the loop: blocks are not coming back", client.own.InUse())
			}
		})
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return itoa(n>>20) + "MiB"
	case n >= 1<<10:
		return itoa(n>>10) + "KiB"
	}
	return itoa(n) + "B"
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
