package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// streamPool is a pool directory of the test's own.
func streamPool(t testing.TB) string {
	t.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "notnets-stream-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// streamPair connects a byte stream to a listener of its own in this
// process, through the socket handshake (or, with crossHost, in a
// cross-host pool: the slots, polling only), with rings of ringSize
// bytes, and returns the client's and the server's side.
func streamPair(t testing.TB, ringSize int, crossHost bool) (client, server *StreamConn) {
	t.Helper()
	dir := streamPool(t)
	wait := Wait{Spin: 100 * time.Microsecond}
	l, err := Listen(dir, "svc", pool.OwnerOnly, ListenConfig{Wait: wait, Stream: true, CrossHost: crossHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan *StreamConn, 1)
	go func() {
		a, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- NewStreamServer(a, wait, 2*time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err = DialStream(ctx, &DialConfig{Pool: dir, Access: pool.OwnerOnly, Name: l.Instance(), RingSize: ringSize, Wait: wait, Liveness: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// readFull reads n bytes from c, failing the test on an error.
func readFull(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// TestStreamConnBytes: what one side writes the other reads, in order and
// whole, in both directions, for writes larger than a record (a ring of
// 4096 bytes takes at most 2032 bytes a record, and fills: the writer
// waits for the reader) and over both handshakes.
func TestStreamConnBytes(t *testing.T) {
	for _, crossHost := range []bool{false, true} {
		client, server := streamPair(t, ring.MinCap, crossHost)
		msg := bytes.Repeat([]byte("0123456789abcdef-"), 6000) // 102 000 bytes
		for _, dir := range []struct{ w, r *StreamConn }{{client, server}, {server, client}} {
			done := make(chan error, 1)
			go func() {
				n, err := dir.w.Write(msg)
				if err == nil && n != len(msg) {
					err = errors.New("short write")
				}
				done <- err
			}()
			if got := readFull(t, dir.r, len(msg)); !bytes.Equal(got, msg) {
				t.Fatalf("crossHost %v: read bytes differ from those written", crossHost)
			}
			if err := <-done; err != nil {
				t.Fatalf("write: %v", err)
			}
		}
	}
}

// TestStreamConnReadDeadline: a Read waiting past its deadline fails with
// a timeout (net.Error.Timeout, os.ErrDeadlineExceeded) close to the
// deadline; a deadline moved while a Read waits applies to it; a Read
// after a cleared deadline gets the bytes.
func TestStreamConnReadDeadline(t *testing.T) {
	client, server := streamPair(t, 64<<10, false)
	const d = 50 * time.Millisecond
	start := time.Now()
	server.SetReadDeadline(start.Add(d))
	_, err := server.Read(make([]byte, 10))
	took := time.Since(start)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	if took < d || took > d+400*time.Millisecond {
		t.Fatalf("Read with a %v deadline returned after %v", d, took)
	}

	// A deadline already past fails at once, and again.
	if _, err := server.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second Read: %v, want a timeout", err)
	}

	// Moved while a Read waits (asleep on the doorbell: no deadline
	// when it started, so it waits past its spin).
	server.SetReadDeadline(time.Time{})
	res := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 10))
		res <- err
	}()
	waitUntil(t, "the reader asleep", server.bell.Sleeping)
	start = time.Now()
	server.SetReadDeadline(start.Add(d))
	if err := <-res; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read whose deadline was set while it waited: %v, want a timeout", err)
	}
	if took := time.Since(start); took > d+400*time.Millisecond {
		t.Fatalf("Read returned %v after its deadline was set %v ahead", took, d)
	}

	// The connection still works once the deadline is cleared.
	server.SetReadDeadline(time.Time{})
	if _, err := client.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := readFull(t, server, 5); string(got) != "after" {
		t.Fatalf("read %q after the timeouts, want %q", got, "after")
	}
}

// TestStreamConnWriteDeadline: a Write into a full ring that nobody reads
// fails with a timeout at its write deadline, having written part of its
// bytes; once the reader drains them and the deadline is cleared, writing
// goes on and every byte written arrives.
func TestStreamConnWriteDeadline(t *testing.T) {
	client, server := streamPair(t, ring.MinCap, false)
	const d = 100 * time.Millisecond
	msg := bytes.Repeat([]byte{7}, 64<<10) // 16 times the ring
	start := time.Now()
	client.SetWriteDeadline(start.Add(d))
	n, err := client.Write(msg)
	took := time.Since(start)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write into a full ring past its deadline: %d bytes, %v; want a timeout", n, err)
	}
	if n <= 0 || n >= len(msg) {
		t.Fatalf("Write into a ring of %d bytes wrote %d of %d before its deadline", ring.MinCap, n, len(msg))
	}
	if took < d || took > d+400*time.Millisecond {
		t.Fatalf("Write with a %v deadline returned after %v", d, took)
	}
	client.SetWriteDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := client.Write(msg[n:])
		done <- err
	}()
	if got := readFull(t, server, len(msg)); !bytes.Equal(got, msg) {
		t.Fatal("bytes read differ from those written around the timeout")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestStreamConnCloseUnblocks: Close ends a Read asleep on the doorbell
// and a Write waiting for room in a full ring, both with net.ErrClosed,
// and the segment is unmapped once they have left; later calls fail the
// same way at once.
func TestStreamConnCloseUnblocks(t *testing.T) {
	client, server := streamPair(t, ring.MinCap, false)
	reads, writes := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := client.Read(make([]byte, 10))
		reads <- err
	}()
	go func() {
		_, err := client.Write(make([]byte, 64<<10)) // the server reads nothing
		writes <- err
	}()
	waitUntil(t, "the reader asleep", client.bell.Sleeping)
	// Two records of 2032 bytes fill the ring, which the server does not
	// read: the tail reaches the capacity and the writer waits.
	waitUntil(t, "the ring full", func() bool { return client.self.Tail.Load() >= ring.MinCap })
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	for what, ch := range map[string]chan error{"Read": reads, "Write": writes} {
		select {
		case err := <-ch:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s pending at Close: %v, want net.ErrClosed", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still pending 5 s after Close", what)
		}
	}
	select {
	case <-client.Released():
	case <-time.After(5 * time.Second):
		t.Fatal("segment not released 5 s after Close")
	}
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if _, err := client.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if err := client.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
	// The server reads what the client wrote, then the end of the stream.
	buf := make([]byte, 128<<10)
	total := 0
	for {
		n, err := server.Read(buf)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("server Read after %d bytes: %v, want io.EOF at the end", total, err)
		}
	}
	if total == 0 {
		t.Fatal("the server read nothing of what the client wrote before closing")
	}
	// And writing to a closed peer fails.
	if _, err := server.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("Write to a closed peer: %v, want EPIPE", err)
	}
}

// TestStreamConnViolations: a record of another kind than DATA (B1), or a
// DATA record with a reserved header byte set (B2), fails the reader's
// connection; the writer's side sees the close.
func TestStreamConnViolations(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		kind  byte
		byte5 byte
	}{{"B1", 3, 0}, {"B2", streamKindData, 1}} {
		client, server := streamPair(t, 64<<10, false)
		client.wlock <- struct{}{}
		rec := client.out.Reserve(4, tc.kind)
		rec[5] = tc.byte5
		client.publish()
		<-client.wlock
		_, err := server.Read(make([]byte, 10))
		if err == nil || !strings.Contains(err.Error(), tc.rule) {
			t.Fatalf("%s: Read: %v, want a violation of %s", tc.rule, err, tc.rule)
		}
		if _, err := client.Read(make([]byte, 10)); err != io.EOF {
			t.Fatalf("%s: the writer's Read after the reader closed: %v, want io.EOF", tc.rule, err)
		}
	}
}

// TestStreamKinds: a client of one kind cannot connect to an instance of
// the other: the client refuses it from its listener's flag (F11), and a
// server refuses a segment of the other kind (S7) with state 2, which the
// client sees at once.
func TestStreamKinds(t *testing.T) {
	dir := streamPool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, stream := range []bool{false, true} {
		l, err := Listen(dir, "svc", pool.OwnerOnly, ListenConfig{Wait: Wait{Spin: time.Millisecond}, Stream: stream})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				a, err := l.Accept()
				if err != nil {
					return
				}
				a.Refuse() // never reached: every segment here is refused
			}
		}()
		cfg := &DialConfig{Pool: dir, Access: pool.OwnerOnly, Name: l.Instance(), RingSize: ring.MinCap, Stream: !stream, Wait: Wait{Spin: time.Millisecond}}
		_, err = connect(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "serves") {
			t.Fatalf("listener stream=%v, client stream=%v: connect: %v, want a refusal by the listener's flag", stream, !stream, err)
		}
		// Past the client's check: the server refuses (S7).
		lseg, err := pool.OpenIn(dir, pool.ListenerFile(l.Instance()), pool.ListenerSize, pool.ListenerSize, pool.OwnerOnly)
		if err != nil {
			t.Fatal(err)
		}
		lis, err := pool.MapListener(lseg.Mem)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		tried, err := dialCreds(ctx, cfg, &dialed{}, l.Instance(), lis, lseg.Owner.UID, false)
		lseg.Close()
		if !tried || err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("listener stream=%v, segment stream=%v: %v (tried %v), want the server's refusal", stream, !stream, err, tried)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("the refusal took %v", took)
		}
	}
}

// BenchmarkStreamConnTail ping-pongs 16 bytes over a StreamConn pair in
// this process, with GOMAXPROCS 2, the server side answering as grpc-go's
// does: its reader hands each request to a writer goroutine, which yields
// once (runtime.Gosched, as grpc-go's loopy writer does before it
// flushes) and writes the answer. It reports the round trip's p50, p99.9
// and max, and how many round trips took over a millisecond (slow/Mop:
// per million). No result is checked: it is for comparing builds.
//
// It guards the doorbell's waits against keeping every P of the process
// (doorbell/block_linux.go): when both readers, asleep on their
// doorbells, held the two Ps, the writer, runnable on the global run
// queue, waited for sysmon to take a P back on every round trip. On the
// 2-core development machine, three runs each: p50 188-195 us, p99.9
// 0.8-4.4 ms, max 5-19 ms with the Ps kept; 75-77 us, 0.29-0.64 ms and
// 3-8 ms with the last P left free.
func BenchmarkStreamConnTail(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // the development machine's
	client, server := streamPair(b, 1<<16, false)
	reqs := make(chan []byte, 1)
	go func() {
		defer close(reqs)
		for {
			p := make([]byte, 16)
			if _, err := io.ReadFull(server, p); err != nil {
				return
			}
			reqs <- p
		}
	}()
	go func() {
		for p := range reqs {
			runtime.Gosched()
			if _, err := server.Write(p); err != nil {
				return
			}
		}
	}()
	msg, back := make([]byte, 16), make([]byte, 16)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, back); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	slow := len(lat) - sort.Search(len(lat), func(i int) bool { return lat[i] > time.Millisecond })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-us")
	b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds())/1e3, "p99.9-us")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds())/1e3, "max-us")
	b.ReportMetric(float64(slow)*1e6/float64(len(lat)), "slow/Mop")
}
