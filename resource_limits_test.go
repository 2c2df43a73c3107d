package notnets_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/frame"
)

// serverHeap asks the server process for its live heap bytes (after a
// collection) and the streams open on its connections.
func serverHeap(t *testing.T, srv *serverProc) (heap uint64, streams int64) {
	t.Helper()
	line := srv.command(t, "heap")
	if _, err := fmt.Sscan(line, &heap, &streams); err != nil {
		t.Fatalf("server heap answer %q: %v", line, err)
	}
	return heap, streams
}

// TestAnnouncedMessagesCostWhatWasSent opens 200 streams on a server in
// another process, each sending the 16-byte first fragment of a message
// that claims 4 MiB, as a hostile client could: the server's heap grows
// with what was sent, not with what was announced (PROTOCOL.md 16). It
// grew by 820 MiB when the announced length was reserved at the first
// fragment.
func TestAnnouncedMessagesCostWhatWasSent(t *testing.T) {
	const streams, announced = 200, 4 << 20
	srv := startServer(t, "NOTNETS_TEST_MAXSTREAMS=1000")
	cc := srv.dial(t)
	// One honest call first, so that what a first call allocates (its
	// method's tables, pools) is in the baseline.
	if _, err := semanticsClient(cc).UnaryCall(withMode(context.Background(), "echo", "warm"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	before, _ := serverHeap(t, srv)
	cn := notnets.ConnOf(cc)
	if err := cn.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	rh := frame.RequestHeaders{Method: "/grpc.testing.TestService/FullDuplexCall"}
	frag := make([]byte, 16)
	for i := range streams {
		id := uint32(1001 + 2*i) // above the ids the client's own calls use
		rec := cn.Out().Reserve(rh.Size(), byte(frame.TypeHeaders))
		if rec == nil {
			t.Fatal("ring full")
		}
		frame.Put(rec, 0, id, 0)
		rh.Append(rec[frame.HeaderSize:frame.HeaderSize])
		rec = cn.Out().Reserve(len(frag), byte(frame.TypeMessage))
		if rec == nil {
			t.Fatal("ring full")
		}
		frame.Put(rec, frame.FlagMore, id, announced)
		copy(rec[frame.HeaderSize:], frag)
	}
	cn.Unlock() // publishes and rings
	var after uint64
	var open int64
	for deadline := time.Now().Add(20 * time.Second); ; {
		if after, open = serverHeap(t, srv); open >= streams || time.Now().After(deadline) {
			break
		}
	}
	if open < streams {
		t.Fatalf("the server has %d streams open, want %d", open, streams)
	}
	grew := int64(after) - int64(before)
	t.Logf("server heap: %d -> %d bytes (%+d) with %d streams announcing %d MiB each", before, after, grew, streams, announced>>20)
	// What the peer wrote is 200 x 16 bytes; each stream costs its own
	// state and one minimum receive buffer besides. The window the server
	// granted (1 MiB each, 200 MiB) is an upper bound no honest cost
	// comes near; 16 MiB leaves room for the runtime's own noise.
	if grew > 16<<20 {
		t.Errorf("the server's heap grew by %d MiB for %d x 16 bytes sent", grew>>20, streams)
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDefaultStreamLimit checks that a server without MaxConcurrentStreams
// tells its clients DefaultMaxConcurrentStreams.
func TestDefaultStreamLimit(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	if got := notnets.StreamLimit(cc); got != notnets.DefaultMaxConcurrentStreams {
		t.Fatalf("stream limit %d, want %d", got, notnets.DefaultMaxConcurrentStreams)
	}
}

// TestMaxConnections connects twice to a server in another process that
// keeps one connection per listener: the second connection's calls fail
// with Unavailable naming the limit, the first's go on, and once the
// first has closed a new client gets in.
func TestMaxConnections(t *testing.T) {
	srv := startServer(t, "NOTNETS_TEST_MAXCONNS=1")
	firstCC := srv.dial(t)
	first := semanticsClient(firstCC)
	ctx := context.Background()
	if _, err := first.UnaryCall(withMode(ctx, "echo", "a"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	call := func(tag string) error {
		cc, err := notnets.Dial(ctx, listenName, notnets.WithPool(srv.pool))
		if err != nil {
			return err
		}
		defer cc.Close()
		_, err = semanticsClient(cc).UnaryCall(withMode(ctx, "echo", tag), &testpb.SimpleRequest{})
		return err
	}
	err := call("b")
	t.Logf("call on a connection beyond the limit: %v", err)
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "MaxConnections") {
		t.Fatalf("call on a connection beyond the limit: %v, want Unavailable naming MaxConnections", err)
	}
	if _, err := first.UnaryCall(withMode(ctx, "echo", "c"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call on the first connection after the refusal: %v", err)
	}
	firstCC.Close()
	// The server counts the first connection out when it sees it close.
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := call("d")
		if err == nil {
			break
		}
		if !strings.Contains(status.Convert(err).Message(), "MaxConnections") || time.Now().After(deadline) {
			t.Fatalf("call after the first connection closed: %v", err)
		}
	}
}
