package notnets_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/benchsvc"
)

// arenaSizes are the message sizes of the arena tests: empty, around the
// ring/heap threshold and the page size, and up to 64 MiB.
var arenaSizes = []int{0, 1, 4095, 4096, notnets.ArenaThreshold - 1, notnets.ArenaThreshold, 64<<10 + 1, 1 << 20, 16<<20 + 7, 64 << 20}

// fill returns n pseudo-random bytes (seeded by n) and their checksum.
func fill(b []byte) [32]byte {
	r := rand.New(rand.NewPCG(uint64(len(b)), 7))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return sha256.Sum256(b)
}

// TestArenaBytesEcho sends checksummed Bytes messages from 0 B to 64 MiB to
// a server in another process and back: through the heaps, through the
// ring when there are no heaps, and through both when the heap is smaller
// than the message.
func TestArenaBytesEcho(t *testing.T) {
	srv := startServer(t, "NOTNETS_TEST_BIG=1")
	for _, heap := range []int{notnets.DefaultArenaSize * 2, 1 << 20, 0} {
		t.Run(fmt.Sprintf("heap=%d", heap), func(t *testing.T) {
			cc := srv.dial(t, notnets.WithArenaSize(heap), notnets.WithMaxRecvMsgSize(bigLimit), notnets.WithMaxSendMsgSize(bigLimit), bigLiveness)
			for _, n := range arenaSizes {
				for _, alloc := range []bool{true, false} {
					var in *notnets.Bytes
					if alloc {
						in = cc.Alloc(n)
					} else {
						in = notnets.NewBytes(make([]byte, n))
					}
					sum := fill(in.Data())
					var out notnets.Bytes
					if err := benchsvc.RawEcho(context.Background(), cc, in, &out); err != nil {
						t.Fatalf("echo of %d bytes (alloc %v): %v", n, alloc, err)
					}
					if in.Len() != 0 {
						t.Errorf("the sent Bytes still holds %d bytes", in.Len())
					}
					if out.Len() != n || sha256.Sum256(out.Data()) != sum {
						t.Fatalf("echo of %d bytes (alloc %v) came back as %d bytes with another checksum", n, alloc, out.Len())
					}
					out.Free()
					out.Free() // twice is allowed
				}
			}
			// Which messages went through the heap: those of at least the
			// threshold that fit the heap, in each direction.
			want := uint64(0)
			for _, n := range arenaSizes {
				if n >= notnets.ArenaThreshold && n <= heap {
					want += 2 // Alloc'd and plain requests
				}
			}
			if sent, recv := notnets.HeapRefs(cc); sent != want || recv != want {
				t.Errorf("%d requests and %d replies went through the heap, want %d each", sent, recv, want)
			}
		})
	}
}

// TestArenaProtobuf sends large protobuf messages, marshalled straight into
// the heap, in unary calls and both directions of a bidi stream.
func TestArenaProtobuf(t *testing.T) {
	srv := startServer(t, "NOTNETS_TEST_BIG=1")
	cc := srv.dial(t, notnets.WithMaxRecvMsgSize(bigLimit), notnets.WithMaxSendMsgSize(bigLimit), bigLiveness)
	c := semanticsClient(cc)
	for _, n := range arenaSizes {
		payload := make([]byte, n)
		sum := fill(payload)
		r, err := c.UnaryCall(withMode(context.Background(), "echo", fmt.Sprint(n)), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: payload}})
		if err != nil {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
		if sha256.Sum256(r.GetPayload().GetBody()) != sum {
			t.Fatalf("echo of %d bytes came back different (%d bytes)", n, len(r.GetPayload().GetBody()))
		}
	}
	// Bounded, and with both sides' state in the failure if it stalls: a
	// stall here was seen under load.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stalled := make(chan string, 1)
	stop := context.AfterFunc(ctx, func() {
		if ctx.Err() == context.DeadlineExceeded {
			stalled <- "client: " + notnets.ClientState(cc) + " | " + compactStacks() + "\nserver: " + srv.state()
		}
	})
	defer stop()
	fatalf := func(format string, args ...any) {
		t.Helper()
		select {
		case s := <-stalled:
			t.Fatalf(format+"\n%s", append(args, s)...)
		case <-time.After(time.Second):
			t.Fatalf(format, args...)
		}
	}
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const count, size = 40, 1 << 20 // 40 MiB each way, more than a window and the heap's fair share
	done := make(chan error, 1)
	go func() {
		for i := 0; i < count; i++ {
			body := bytes.Repeat([]byte{byte(i)}, size)
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
				done <- err
				return
			}
		}
		done <- stream.CloseSend()
	}()
	for i := 0; i < count; i++ {
		r, err := stream.Recv()
		if err != nil {
			fatalf("Recv %d: %v", i, err)
		}
		if b := r.GetPayload().GetBody(); len(b) != size || b[0] != byte(i) || b[size-1] != byte(i) || !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, size)) {
			t.Fatalf("message %d came back wrong (%d bytes)", i, len(b))
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestArenaHeldReplies keeps every reply view without freeing it, so that
// the server's heap fills up: later replies must come through the ring,
// whole, and freeing the views afterwards gives the heap back.
func TestArenaHeldReplies(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t, notnets.WithArenaSize(256<<10))
	const n = 40 << 10 // a 64 KiB block each: four fit in the heap
	var held []*notnets.Bytes
	for round := 0; round < 3; round++ {
		for i := 0; i < 10; i++ {
			in := cc.Alloc(n)
			sum := fill(in.Data())
			out := new(notnets.Bytes)
			if err := benchsvc.RawEcho(context.Background(), cc, in, out); err != nil {
				t.Fatalf("round %d, call %d: %v", round, i, err)
			}
			if sha256.Sum256(out.Data()) != sum {
				t.Fatalf("round %d, call %d: reply differs", round, i)
			}
			held = append(held, out)
		}
		// Every view still reads what it was sent.
		for _, b := range held {
			if sha256.Sum256(b.Data()) != fill(make([]byte, n)) {
				t.Fatalf("round %d: a held reply changed", round)
			}
		}
		for _, b := range held {
			b.Free()
		}
		held = held[:0]
		// The server's heap held four replies; the rest came through the
		// ring. The client's requests always found room: each was freed by
		// the server before the next.
		if sent, recv := notnets.HeapRefs(cc); sent != uint64(10*(round+1)) || recv != uint64(4*(round+1)) {
			t.Errorf("round %d: %d requests and %d replies went through the heap, want %d and %d", round, sent, recv, 10*(round+1), 4*(round+1))
		}
	}
}
