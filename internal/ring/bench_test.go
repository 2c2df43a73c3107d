package ring

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkReserveNext measures one record through the ring in one
// goroutine: reserve, fill, publish, read, release.
func BenchmarkReserveNext(b *testing.B) {
	for _, n := range []int{16, 1024, 64 << 10} {
		b.Run(fmt.Sprintf("%dB", n), func(b *testing.B) {
			data := make([]byte, 1<<20)
			var tail, head atomic.Uint64
			p := NewProducer(data, &tail, &head)
			c := NewConsumer(data, &tail, &head)
			payload := make([]byte, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				rec := p.Reserve(n, 2)
				copy(rec[HeaderSize:], payload)
				p.Publish()
				got, err := c.Next()
				if err != nil || len(got) != HeaderSize+n {
					b.Fatalf("Next = %d bytes, %v", len(got), err)
				}
				c.Release()
			}
		})
	}
}
