package notnets_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var soakFor = flag.Duration("soak", 3*time.Second, "how long TestSoak runs (1 s under -short or -race); minutes by hand")

// soakCounts are what the soak test saw.
type soakCounts struct {
	sent, answered, byDesign, otherwise, corrupted atomic.Int64
}

// TestSoak runs 32 callers on one connection to a server in another process
// for -soak: unary calls and all three streaming kinds, payloads from 0 B to
// 1 MiB compared byte for byte, and random deadlines and cancellations. Every
// call must end answered, or failed by design (its deadline or cancellation),
// and nothing may come back lost, duplicated or corrupted.
func TestSoak(t *testing.T) {
	d := *soakFor
	if (testing.Short() || raceEnabled) && d > time.Second {
		d = time.Second
	}
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	var n soakCounts
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for time.Now().Before(stop) {
				soakCall(t, c, rng, &n)
			}
		}()
	}
	wg.Wait()
	t.Logf("soak %v: %d calls sent, %d answered, %d failed by design (deadline or cancel), %d failed otherwise, %d corrupted",
		d, n.sent.Load(), n.answered.Load(), n.byDesign.Load(), n.otherwise.Load(), n.corrupted.Load())
	if n.otherwise.Load() != 0 || n.corrupted.Load() != 0 {
		t.Errorf("%d calls failed otherwise, %d corrupted", n.otherwise.Load(), n.corrupted.Load())
	}
	if got := n.answered.Load() + n.byDesign.Load() + n.otherwise.Load() + n.corrupted.Load(); got != n.sent.Load() {
		t.Errorf("%d calls sent but %d accounted for", n.sent.Load(), got)
	}
	if n.answered.Load() == 0 {
		t.Error("no call was answered")
	}
}

// soakPayload returns a payload of a random size from 0 B to 1 MiB with
// random contents.
func soakPayload(rng *rand.Rand) []byte {
	var size int
	switch rng.IntN(10) {
	case 0:
		size = 0
	case 1:
		size = 1 << 20
	case 2, 3:
		size = rng.IntN(256 << 10)
	default:
		size = rng.IntN(2 << 10)
	}
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// soakContext gives one call in four a short random deadline and one in
// eight a cancellation at a random moment.
func soakContext(rng *rand.Rand) (context.Context, context.CancelFunc) {
	ctx := withMode(context.Background(), "echo", "soak")
	switch rng.IntN(8) {
	case 0, 1:
		return context.WithTimeout(ctx, time.Duration(50+rng.IntN(5000))*time.Microsecond)
	case 2:
		ctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(time.Duration(rng.IntN(3000))*time.Microsecond, cancel)
		return ctx, cancel
	}
	return context.WithTimeout(ctx, 30*time.Second)
}

var soakKinds = []string{"unary call", "server stream", "client stream", "bidirectional stream"}

func soakCall(t *testing.T, c testpb.TestServiceClient, rng *rand.Rand, n *soakCounts) {
	ctx, cancel := soakContext(rng)
	defer cancel()
	n.sent.Add(1)
	var err error
	corrupt := false
	kind := rng.IntN(4)
	defer func() {
		// A call may end at its deadline, never long after it.
		if dl, ok := ctx.Deadline(); ok && time.Since(dl) > 2*time.Second {
			t.Errorf("a %s ended %v after its deadline (%v)", soakKinds[kind], time.Since(dl), err)
		}
	}()
	switch kind {
	case 0: // unary echo
		p := soakPayload(rng)
		ctx := metadata.AppendToOutgoingContext(ctx, "x-len", fmt.Sprint(len(p)))
		var r *testpb.SimpleResponse
		var trl, hdr metadata.MD
		if r, err = c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: p}}, grpc.Trailer(&trl), grpc.Header(&hdr)); err == nil {
			corrupt = !bytes.Equal(r.GetPayload().GetBody(), p)
			if corrupt {
				got := r.GetPayload().GetBody()
				first := -1
				for i := range min(len(got), len(p)) {
					if got[i] != p[i] {
						first = i
						break
					}
				}
				t.Logf("unary echo: sent %d bytes, got %d, first difference at %d; trailer %v, header %v", len(p), len(got), first, trl, hdr)
			}
		}
	case 1: // server streaming
		var sizes []*testpb.ResponseParameters
		for i := rng.IntN(5); i > 0; i-- {
			sizes = append(sizes, &testpb.ResponseParameters{Size: int32(len(soakPayload(rng)))})
		}
		var stream testpb.TestService_StreamingOutputCallClient
		if stream, err = c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: sizes}); err == nil {
			i := 0
			for {
				r, rerr := stream.Recv()
				if rerr == io.EOF {
					corrupt = corrupt || i != len(sizes)
					break
				}
				if rerr != nil {
					err = rerr
					break
				}
				if i >= len(sizes) || len(r.GetPayload().GetBody()) != int(sizes[i].GetSize()) {
					t.Logf("server stream message %d of %d: %d bytes, want %v", i, len(sizes), len(r.GetPayload().GetBody()), sizes)
					corrupt = true
				}
				i++
			}
		}
	case 2: // client streaming
		var stream testpb.TestService_StreamingInputCallClient
		if stream, err = c.StreamingInputCall(ctx); err == nil {
			total := 0
			for i := rng.IntN(5); i > 0 && err == nil; i-- {
				p := soakPayload(rng)
				total += len(p)
				err = stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: p}})
			}
			var r *testpb.StreamingInputCallResponse
			r, err = stream.CloseAndRecv() // after a failed Send, this gives the status
			if err == nil {
				corrupt = int(r.GetAggregatedPayloadSize()) != total
			}
		}
	default: // bidirectional echo
		var stream testpb.TestService_FullDuplexCallClient
		if stream, err = c.FullDuplexCall(ctx); err == nil {
			for i := rng.IntN(5); i > 0 && err == nil && !corrupt; i-- {
				p := soakPayload(rng)
				if err = stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: p}}); err != nil {
					break
				}
				var r *testpb.StreamingOutputCallResponse
				if r, err = stream.Recv(); err == nil {
					corrupt = !bytes.Equal(r.GetPayload().GetBody(), p)
				}
			}
			if err == nil && !corrupt {
				stream.CloseSend()
				if _, rerr := stream.Recv(); rerr != io.EOF {
					err = rerr
					corrupt = rerr == nil
				}
			}
			if errors.Is(err, io.EOF) { // Send's io.EOF: the status comes from Recv
				_, err = stream.Recv()
			}
		}
	}
	switch {
	case corrupt:
		n.corrupted.Add(1)
		t.Errorf("a %s came back corrupted (err %v)", soakKinds[kind], err)
	case err == nil:
		n.answered.Add(1)
	case status.Code(err) == codes.DeadlineExceeded || status.Code(err) == codes.Canceled:
		n.byDesign.Add(1)
	default:
		n.otherwise.Add(1)
		t.Errorf("a %s failed: %v", soakKinds[kind], err)
	}
}
