package frame

import (
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
)

var benchHeaders = RequestHeaders{
	Timeout:        5 * time.Second,
	Method:         "/helloworld.Greeter/SayHello",
	ContentSubtype: "",
	MD:             metadata.Pairs("user-agent", "bench", "x-request-id", "0123456789abcdef"),
}

// BenchmarkRequestHeadersEncode measures sizing and encoding a call's
// HEADERS payload into a reused buffer, as the writer does into the ring.
func BenchmarkRequestHeadersEncode(b *testing.B) {
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		n := benchHeaders.Size()
		if out := benchHeaders.Append(buf[:0]); len(out) != n {
			b.Fatalf("encoded %d bytes, sized %d", len(out), n)
		}
	}
}

// BenchmarkRequestHeadersDecode measures decoding a HEADERS payload.
func BenchmarkRequestHeadersDecode(b *testing.B) {
	enc := benchHeaders.Append(nil)
	b.ReportAllocs()
	for b.Loop() {
		var h RequestHeaders
		if err := h.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParse measures checking a frame header.
func BenchmarkParse(b *testing.B) {
	rec := make([]byte, HeaderSize+32)
	rec[0], rec[4] = 32, byte(TypeMessage)
	Put(rec, FlagEndStream, 7, 32)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse(rec); err != nil {
			b.Fatal(err)
		}
	}
}
