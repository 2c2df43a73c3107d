package notnets

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/arena"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/transport"
)

// bytesEchoDesc is a service whose Echo returns its request, a Bytes.
var bytesEchoDesc = grpc.ServiceDesc{
	ServiceName: "test.BytesEcho",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(Bytes)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Repeat",
		ServerStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			var in Bytes
			if err := stream.RecvMsg(&in); err != nil {
				return err
			}
			defer in.Free()
			for i := 0; i < 4; i++ {
				if err := stream.SendMsg(NewBytes(bytes.Clone(in.Data()))); err != nil {
					return err
				}
			}
			return nil
		},
	}},
}

var bytesCall = grpc.CallContentSubtype(BytesCodecName)

// serveBytesEcho serves bytesEchoDesc in this process under name in a new
// pool, and returns the server and the pool.
func serveBytesEcho(t *testing.T, name string, opts ...ServerOption) (*Server, string) {
	dir := t.TempDir()
	lis, err := Listen(name, WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(opts...)
	srv.RegisterService(&bytesEchoDesc, struct{}{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return srv, dir
}

func dialT(t *testing.T, name, dir string, opts ...DialOption) *ClientConn {
	cc, err := Dial(context.Background(), name, append([]DialOption{WithPool(dir)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func echoBytes(cc *ClientConn, in, out *Bytes) error {
	return cc.Invoke(context.Background(), "/test.BytesEcho/Echo", in, out, bytesCall)
}

// heldPages returns how many pages of the peer's heap c holds.
func heldPages(c *conn) int {
	c.ViewMu().Lock()
	defer c.ViewMu().Unlock()
	return c.Held().Count()
}

// TestHostileReferences sends broken MESSAGE_REF frames from a client, and
// checks that the server closes that connection only, naming the problem.
func TestHostileReferences(t *testing.T) {
	_, dir := serveBytesEcho(t, "refs")
	refFrame := func(flags frame.Flags, stream, aux uint32, payload []byte) func(*conn) {
		return func(c *conn) {
			rec := c.Out().Reserve(len(payload), byte(frame.TypeMessageRef))
			frame.Put(rec, flags, stream, aux)
			copy(rec[frame.HeaderSize:], payload)
			c.Out().Publish()
		}
	}
	ref := func(off, n uint64) []byte { return arena.Ref{Offset: off, Length: n}.Append(nil) }
	both := func(a, b func(*conn)) func(*conn) { return func(c *conn) { a(c); b(c) } }
	tests := []struct {
		name   string
		inject func(*conn)
		want   string
	}{
		{"outside the heap", refFrame(0, 1, 100, ref(1<<40, 100)), "do not lie within the heap"},
		{"running off the heap", refFrame(0, 1, 8192, ref(DefaultArenaSize-4096, 8192)), "do not lie within the heap"},
		{"misaligned", refFrame(0, 1, 100, ref(100, 100)), "not a multiple of 4096"},
		{"empty", refFrame(0, 1, 0, ref(0, 0)), "empty message"},
		{"short payload", refFrame(0, 1, 0, []byte{1, 2, 3}), "payload of 3 bytes"},
		{"fragmented", refFrame(frame.FlagMore, 1, 100, ref(0, 100)), "never fragmented"},
		{"length differs from the frame's", refFrame(0, 1, 99, ref(0, 100)), "says the message has 99"},
		{"referenced twice", both(refFrame(0, 1, 100, ref(0, 100)), refFrame(0, 1, 100, ref(0, 8192))), "referenced twice"},
		{"in a fragmented message", func(c *conn) {
			rec := c.Out().Reserve(10, byte(frame.TypeMessage))
			frame.Put(rec, frame.FlagMore, 1, 20)
			c.Out().Publish()
			refFrame(0, 1, 100, ref(0, 100))(c)
		}, "in the middle of a fragmented message"},
	}
	healthy := dialT(t, "refs", dir)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := dialT(t, "refs", dir)
			// Stream 1 is open and waits for its request, which never ends.
			if _, err := cc.NewStream(context.Background(), unaryDesc, "/test.BytesEcho/Echo", bytesCall); err != nil {
				t.Fatal(err)
			}
			cn := cc.conn()
			injectUntilClosed(t, cn, tc.inject)
			st := status.Convert(cn.CloseErr())
			if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "protocol violation") || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("connection closed with %v, want Unavailable naming a protocol violation with %q", st, tc.want)
			}
			var out Bytes
			if err := echoBytes(healthy, NewBytes(make([]byte, 20000)), &out); err != nil || out.Len() != 20000 {
				t.Errorf("another connection after the injection: %v, %d bytes", err, out.Len())
			}
			out.Free()
		})
	}
}

// TestHostileReturns hands the client blocks back that it never lent, as a
// broken or hostile server could, and checks that the client closes the
// connection with a status that names the problem.
func TestHostileReturns(t *testing.T) {
	_, dir := serveBytesEcho(t, "returns")
	tests := []struct {
		name   string
		inject func(c *conn)
		want   string
	}{
		{"block never lent", func(c *conn) {
			c.Returns().Drain(func(uint32) error { return nil }) // in step with the server
			q := returnsRegion(c)
			i := 4 * int(c.PeerCtl().ReturnTail.Load()%uint64(len(c.OwnMem())/arena.MinBlock))
			q[i], q[i+1], q[i+2], q[i+3] = 200, 0, 0, 0 // page 200, never allocated
			c.PeerCtl().ReturnTail.Store(c.PeerCtl().ReturnTail.Load() + 1)
		}, "not allocated"},
		{"tail beyond the queue", func(c *conn) {
			c.PeerCtl().ReturnTail.Store(c.PeerCtl().ReturnTail.Load() + 1<<20)
		}, "outside"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := dialT(t, "returns", dir)
			var out Bytes
			if err := echoBytes(cc, NewBytes(make([]byte, 20000)), &out); err != nil {
				t.Fatal(err)
			}
			out.Free()
			c := cc.conn()
			// The server hands the request's block back after it replied:
			// wait for that return, or the injection below races with it
			// (seen under the race detector on a loaded machine: the
			// server's own return found the queue's head past its tail).
			for deadline := time.Now().Add(10 * time.Second); c.PeerCtl().ReturnTail.Load() == 0; {
				if time.Now().After(deadline) {
					t.Fatal("the server did not hand the request's block back within 10 s")
				}
				time.Sleep(time.Millisecond)
			}
			writableAsPeer(t, c, true)
			c.HeapMu().Lock()
			tc.inject(c)
			c.HeapMu().Unlock()
			// The next allocation finds the bad return. The call itself may
			// still go through the ring; the connection closes just after.
			if echoBytes(cc, NewBytes(make([]byte, 20000)), &out) == nil {
				out.Free()
			}
			select {
			case <-c.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the connection did not close within 10 s of the bad return")
			}
			if st := status.Convert(c.CloseErr()); st.Code() != codes.Internal || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("connection closed with %v, want Internal containing %q", st, tc.want)
			}
		})
	}
}

// TestHostileReturnsToServer hands the server a block it never lent while
// it writes a reply into its heap under its stream's locks: the server
// closes that connection (it once deadlocked here), and serves others.
func TestHostileReturnsToServer(t *testing.T) {
	_, dir := serveBytesEcho(t, "sreturns")
	healthy := dialT(t, "sreturns", dir)
	cc := dialT(t, "sreturns", dir)
	c := cc.conn()
	// The client hands back page 300 of the server's heap, never lent.
	c.ViewMu().Lock()
	err := c.GiveBack().Push(300)
	c.ViewMu().Unlock()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out Bytes
	if err := cc.Invoke(ctx, "/test.BytesEcho/Echo", NewBytes(make([]byte, 20000)), &out, bytesCall); err == nil {
		out.Free()
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the server did not close the connection within 10 s")
	}
	if st := status.Convert(c.CloseErr()); !strings.Contains(st.Message(), "not allocated") {
		t.Errorf("connection closed with %v, want the server's reason (block not allocated)", st)
	}
	if err := echoBytes(healthy, NewBytes(make([]byte, 20000)), &out); err != nil {
		t.Fatalf("another connection: %v", err)
	}
	out.Free()
}

// writableAsPeer lifts the page protection of the regions c's peer writes
// (c is a client connection when client is true), so that a test can play
// a broken peer from this side.
func writableAsPeer(t *testing.T, c *conn, client bool) {
	lay, err := pool.MapConn(c.Seg().Mem, ring.CheckCap)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range lay.PeerRegions(c.Seg().Mem, client) {
		if err := unix.Mprotect(r, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			t.Fatal(err)
		}
	}
}

// returnsRegion returns the bytes of the queue in which the server hands
// back blocks of c's heap (a client conn).
func returnsRegion(c *conn) []byte {
	lay, err := pool.MapConn(c.Seg().Mem, ring.CheckCap)
	if err != nil {
		panic(err)
	}
	return lay.C2SReturns
}

// TestViewChecksCatchUseAfterFree reads a received view after Free with
// WithViewChecks: the read faults instead of returning bytes the sender may
// already have reused.
func TestViewChecksCatchUseAfterFree(t *testing.T) {
	_, dir := serveBytesEcho(t, "checks")
	cc := dialT(t, "checks", dir, WithViewChecks())
	in := cc.Alloc(64 << 10)
	for i := range in.Data() {
		in.Data()[i] = byte(i)
	}
	var out Bytes
	if err := echoBytes(cc, in, &out); err != nil {
		t.Fatal(err)
	}
	view := out.Data()
	if len(view) != 64<<10 || view[1000] != byte(1000%256) {
		t.Fatalf("reply of %d bytes, byte 1000 = %d", len(view), view[1000])
	}
	out.Free()
	err := readFaults(view)
	if err == nil {
		t.Fatal("reading a view after Free did not fault")
	}
	if a, ok := err.(interface{ Addr() uintptr }); !ok || a.Addr() != uintptr(unsafe.Pointer(&view[0])) {
		t.Fatalf("read after Free: %v, not a fault at the view's address %p", err, &view[0])
	}
	// The connection goes on, and the next view is readable again.
	if err := echoBytes(cc, NewBytes(bytes.Repeat([]byte{7}, 64<<10)), &out); err != nil || out.Data()[100] != 7 {
		t.Fatalf("call after the fault: %v", err)
	}
	out.Free()
}

// readFaults reads b[0] and returns the fault it caused, if any.
func readFaults(b []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if re, ok := r.(runtime.Error); ok {
				err = re
				return
			}
			panic(r)
		}
	}()
	sink += b[0] + b[len(b)-1]
	return nil
}

var sink byte // keeps readFaults' load from being optimized away

// TestViewsOutliveTheConnection holds a reply view while the server stops:
// the view stays readable, and the segment is unmapped when it is freed.
func TestViewsOutliveTheConnection(t *testing.T) {
	srv, dir := serveBytesEcho(t, "outlive")
	cc := dialT(t, "outlive", dir)
	want := bytes.Repeat([]byte("notnets!"), 8<<10)
	var out Bytes
	if err := echoBytes(cc, NewBytes(bytes.Clone(want)), &out); err != nil {
		t.Fatal(err)
	}
	blk := cc.Alloc(100 << 10) // an allocation the user holds
	c := cc.conn()
	base := uintptr(unsafe.Pointer(&c.Seg().Mem[0]))
	srv.Stop()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open 10 s after the server stopped")
	}
	for !releasedHeaps(c) {
		runtime.Gosched()
	}
	if !bytes.Equal(out.Data(), want) {
		t.Fatal("the view changed after the connection closed")
	}
	blk.Data()[0] = 1 // still mapped
	if !mapped(t, c.Seg().Path, base) {
		t.Fatal("segment unmapped while a view and an allocation are held")
	}
	out.Free()
	if !mapped(t, c.Seg().Path, base) {
		t.Fatal("segment unmapped while an allocation is held")
	}
	blk.Free()
	if mapped(t, c.Seg().Path, base) {
		t.Fatal("segment still mapped after the last view and allocation were freed")
	}
}

// releasedHeaps reports whether c has finished closing, short of
// unmapping what the user still holds.
func releasedHeaps(c *conn) bool {
	c.ViewMu().Lock()
	defer c.ViewMu().Unlock()
	return c.HeapsClosed()
}

// mapped reports whether /proc/self/maps has a mapping of path that
// contains addr (the server in this process maps the same file too).
func mapped(t *testing.T, path string, addr uintptr) bool {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("cannot read /proc/self/maps: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var lo, hi uintptr
		if !strings.Contains(line, path) {
			continue
		}
		if _, err := fmt.Sscanf(line, "%x-%x", &lo, &hi); err == nil && lo <= addr && addr < hi {
			return true
		}
	}
	return false
}

// TestAllocFallsBack fills the client's heap with allocations: Alloc then
// returns ordinary memory, which is still sent, and freeing the blocks
// makes room again.
func TestAllocFallsBack(t *testing.T) {
	_, dir := serveBytesEcho(t, "full")
	cc := dialT(t, "full", dir, WithArenaSize(pool.MinHeap))
	var held []*Bytes
	for i := 0; i < 4; i++ {
		b := cc.Alloc(16 << 10)
		if b.blk.IsZero() {
			t.Fatalf("allocation %d of 16 KiB from a 64 KiB heap came from ordinary memory", i)
		}
		held = append(held, b)
	}
	extra := cc.Alloc(16 << 10)
	if !extra.blk.IsZero() {
		t.Fatal("a full heap still allocated")
	}
	var out Bytes
	copy(extra.Data(), "fallback")
	if err := echoBytes(cc, extra, &out); err != nil || string(out.Data()[:8]) != "fallback" {
		t.Fatalf("sending ordinary memory: %v", err)
	}
	out.Free()
	for _, b := range held {
		b.Free()
	}
	if b := cc.Alloc(64 << 10); b.blk.IsZero() {
		t.Fatal("the whole heap is not free after freeing every block")
	} else {
		b.Free()
	}
	if small := cc.Alloc(100); !small.blk.IsZero() {
		t.Fatal("a message below the threshold was allocated in the heap")
	}
}

// TestStaleReferencesGoBack cancels calls whose replies arrive after the
// caller gave up, and checks that every block comes back to the sender.
func TestStaleReferencesGoBack(t *testing.T) {
	_, dir := serveBytesEcho(t, "stale")
	cc := dialT(t, "stale", dir)
	for i := 0; i < 50; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		var out Bytes
		go cancel()
		if err := cc.Invoke(ctx, "/test.BytesEcho/Echo", NewBytes(make([]byte, 32<<10)), &out, bytesCall); err == nil {
			out.Free()
		}
	}
	var out Bytes
	if err := echoBytes(cc, NewBytes(make([]byte, 32<<10)), &out); err != nil {
		t.Fatal(err)
	}
	out.Free()
	c := cc.conn()
	// The reader may still be handling replies of cancelled calls.
	deadline := time.Now().Add(10 * time.Second)
	for heldPages(c) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d pages of the server's heap still held", heldPages(c))
		}
		runtime.Gosched()
	}
}

// keepingCodec is a CodecV2 that keeps a reference to the buffer it
// decodes, as a zero-copy codec may.
type keepingCodec struct{ kept *mem.Buffer }

func (keepingCodec) Name() string { return "keeping" }

func (keepingCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(*Bytes).Data())}, nil
}

func (k keepingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if len(data) != 1 {
		return status.Errorf(codes.Internal, "%d buffers", len(data))
	}
	data[0].Ref()
	*k.kept = data[0]
	return nil
}

// TestCodecKeepsView decodes a large reply with a codec that keeps a
// reference to its buffer: the block stays held, and readable, until the
// codec frees it, and then goes back to the server.
func TestCodecKeepsView(t *testing.T) {
	_, dir := serveBytesEcho(t, "keep")
	cc := dialT(t, "keep", dir)
	var kept mem.Buffer
	want := bytes.Repeat([]byte{0xa5}, 100<<10)
	err := cc.Invoke(context.Background(), "/test.BytesEcho/Echo", NewBytes(bytes.Clone(want)), new(Bytes),
		grpc.ForceCodecV2(keepingCodec{&kept}), bytesCall)
	if err != nil {
		t.Fatal(err)
	}
	c := cc.conn()
	if got := heldPages(c); got != 25 {
		t.Fatalf("%d pages of the server's heap held while the codec keeps the reply, want 25", got)
	}
	if !bytes.Equal(kept.ReadOnlyData(), want) {
		t.Fatal("the kept view does not read the reply")
	}
	kept.Free()
	if got := heldPages(c); got != 0 {
		t.Fatalf("%d pages still held after the codec freed its reference", got)
	}
}

// TestAllocWhileClosing allocates and frees blocks from several goroutines
// while the server stops and the connection closes under them: nothing may
// touch the segment after it is unmapped.
func TestAllocWhileClosing(t *testing.T) {
	for round := 0; round < 20; round++ {
		srv, dir := serveBytesEcho(t, "closing")
		cc := dialT(t, "closing", dir)
		c := cc.conn()
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var b Bytes
				for {
					select {
					case <-stop:
						return
					default:
					}
					allocBytes(c, &b, 64<<10)
					b.Data()[0] = 1
					b.Free()
				}
			}()
		}
		srv.Stop()
		<-c.Done()
		for !releasedHeaps(c) {
			runtime.Gosched()
		}
		close(stop)
		wg.Wait()
	}
}

// TestReturnOfUnsentBlock has the server hand back a block the client's
// user still holds and never sent: the client must refuse the return and
// close the connection, not hand the block out twice (and later panic on
// the double free).
func TestReturnOfUnsentBlock(t *testing.T) {
	_, dir := serveBytesEcho(t, "unsent")
	cc := dialT(t, "unsent", dir)
	a := cc.Alloc(64 << 10)
	if a.blk.IsZero() {
		t.Fatal("Alloc did not use the heap")
	}
	c := cc.conn()
	writableAsPeer(t, c, true)
	c.HeapMu().Lock()
	q, tail := returnsRegion(c), c.PeerCtl().ReturnTail.Load()
	i := 4 * int(tail%uint64(len(c.OwnMem())/arena.MinBlock))
	q[i], q[i+1], q[i+2], q[i+3] = byte(a.blk.Offset()/arena.MinBlock), byte(a.blk.Offset()/arena.MinBlock>>8), 0, 0
	c.PeerCtl().ReturnTail.Store(tail + 1)
	c.HeapMu().Unlock()
	b := cc.Alloc(64 << 10) // drains the bad return
	if !b.blk.IsZero() && b.blk.Offset() == a.blk.Offset() {
		t.Fatal("the block the user holds was handed out again")
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not close within 10 s of the bad return")
	}
	if st := status.Convert(c.CloseErr()); !strings.Contains(st.Message(), "was not lent") {
		t.Errorf("connection closed with %v, want the reason (block not lent)", st)
	}
	a.Free()
	b.Free()
}

// ownInUse takes back what the peer has returned and reports how many
// bytes of c's own heap are still in use.
func ownInUse(c *conn) int {
	c.HeapMu().Lock()
	defer c.HeapMu().Unlock()
	c.Returns().Drain(func(page uint32) error { return c.Own().Return(int(page) * arena.MinBlock) })
	return c.Own().InUse()
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %s", what)
		}
		runtime.Gosched()
	}
}

// TestServerFreesUnreadMessages sends large requests the server never
// reads: to an unknown method, and from a caller it refuses. Every block
// must come back to the client.
func TestServerFreesUnreadMessages(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		opts   []ServerOption
		code   codes.Code
	}{
		{"unknown method", "/test.BytesEcho/Nope", nil, codes.Unimplemented},
		{"refused caller", "/test.BytesEcho/Echo", []ServerOption{AllowUIDs(uint32(os.Geteuid()) + 1)}, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, dir := serveBytesEcho(t, "unread", tc.opts...)
			cc := dialT(t, "unread", dir)
			for i := 0; i < 8; i++ {
				err := cc.Invoke(context.Background(), tc.method, NewBytes(make([]byte, 64<<10)), new(Bytes), bytesCall)
				if status.Code(err) != tc.code {
					t.Fatalf("call %d: %v, want %v", i, err, tc.code)
				}
			}
			c := cc.conn()
			eventually(t, "the client's heap is not all back", func() bool { return ownInUse(c) == 0 })
		})
	}
}

// TestCancelAfterEnd cancels a stream that has ended with messages
// unread: as in grpc-go they stay readable, then io.EOF; and if the caller
// never reads them, closing the connection gives their memory back.
func TestCancelAfterEnd(t *testing.T) {
	_, dir := serveBytesEcho(t, "cancelend")
	for _, read := range []bool{true, false} {
		cc := dialT(t, "cancelend", dir)
		ctx, cancel := context.WithCancel(context.Background())
		s, err := cc.NewStream(ctx, &bytesEchoDesc.Streams[0], "/test.BytesEcho/Repeat", bytesCall)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg(NewBytes(make([]byte, 64<<10))); err != nil {
			t.Fatal(err)
		}
		s.CloseSend()
		var first Bytes
		if err := s.RecvMsg(&first); err != nil {
			t.Fatal(err)
		}
		first.Free()
		cs := s.(*clientStream)
		eventually(t, "the stream did not end", func() bool {
			_, _, st := cs.ts.Result()
			return st != nil && cs.ts.Queued() == 3
		})
		c := cc.conn()
		cancel()
		if read {
			for i := 0; i < 3; i++ {
				var m Bytes
				if err := s.RecvMsg(&m); err != nil || m.Len() != 64<<10 {
					t.Fatalf("message %d after the cancel: %v, %d bytes", i+2, err, m.Len())
				}
				m.Free()
			}
			if err := s.RecvMsg(new(Bytes)); err != io.EOF {
				t.Fatalf("after the last message: %v, want io.EOF", err)
			}
			if n := heldPages(c); n != 0 {
				t.Fatalf("%d pages held after reading everything", n)
			}
			n := transport.Orphans(cs.t)
			if n != 0 {
				t.Fatalf("%d streams still kept as orphans after being read to the end", n)
			}
			continue
		}
		if n := heldPages(c); n != 3*16 {
			t.Fatalf("%d pages held after the cancel, want 48 (still readable)", n)
		}
		cc.Close()
		eventually(t, "the unread messages still hold the segment after Close", func() bool {
			return heldPages(c) == 0 && releasedHeaps(c) && c.HeapsUnmapped()
		})
	}
}

// failingCodec cannot marshal anything.
type failingCodec struct{}

func (failingCodec) Name() string                         { return "failing" }
func (failingCodec) Marshal(any) (mem.BufferSlice, error) { return nil, fmt.Errorf("no") }
func (failingCodec) Unmarshal(mem.BufferSlice, any) error { return fmt.Errorf("no") }

// TestAllocSentWithAnotherCodec sends Alloc'd Bytes with a codec that
// fails, and with one that marshals them as a copy: either way the block
// is freed, as the transport owns a Bytes once it is sent.
func TestAllocSentWithAnotherCodec(t *testing.T) {
	_, dir := serveBytesEcho(t, "othercodec")
	cc := dialT(t, "othercodec", dir)
	c := cc.conn()
	for i := 0; i < 3; i++ {
		err := cc.Invoke(context.Background(), "/test.BytesEcho/Echo", cc.Alloc(64<<10), new(Bytes), grpc.ForceCodecV2(failingCodec{}))
		if status.Code(err) != codes.Internal {
			t.Fatalf("call with a failing codec: %v", err)
		}
	}
	if n := ownInUse(c); n != 0 {
		t.Fatalf("%d bytes of the heap in use after failed sends", n)
	}
	var kept mem.Buffer
	out := new(Bytes)
	if err := cc.Invoke(context.Background(), "/test.BytesEcho/Echo", cc.Alloc(64<<10), out, grpc.ForceCodecV2(keepingCodec{&kept}), bytesCall); err != nil {
		t.Fatal(err)
	}
	kept.Free()
	eventually(t, "the heap is not all back", func() bool { return ownInUse(c) == 0 })
}

// TestReplyStandsOverALateDeadline has the deadline fire after the reply
// and status of a unary call arrived but before the caller took them: the
// reply stands, as its comment in recvUnary promises.
func TestReplyStandsOverALateDeadline(t *testing.T) {
	_, dir := serveBytesEcho(t, "late")
	cc := dialT(t, "late", dir)
	ci, err := newCallInfo(&cc.opts, []grpc.CallOption{bytesCall})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := prepareMsg(ci.codec, NewBytes(make([]byte, 64<<10)), 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := cc.start(context.Background(), "/test.BytesEcho/Echo", ci, unaryDesc, &msg)
	msg.Free()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "no reply", func() bool {
		transport.ConnOf(s.t).Poll()
		_, _, st := s.ts.Result()
		return st != nil && s.ts.Queued() == 1
	})
	s.cancel(context.DeadlineExceeded)
	var out Bytes
	if err := s.recvUnary(&out, false); err != nil || out.Len() != 64<<10 {
		t.Fatalf("recvUnary after a late deadline: %v, %d bytes; want the reply", err, out.Len())
	}
	out.Free()
	if n := heldPages(transport.ConnOf(s.t)); n != 0 {
		t.Fatalf("%d pages held", n)
	}
}
