package notnets

import (
	"context"
	"fmt"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/transport"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// BytesCodecName is the content subtype of the Bytes codec. Select it per
// call with grpc.CallContentSubtype(BytesCodecName), or for every call of
// a client with WithDefaultCallOptions; the server picks it up from the
// call. It is registered with grpc's codec registry by this package, so it
// works over the gRPC fallback too.
const BytesCodecName = "notnets-bytes"

func init() { encoding.RegisterCodecV2(bytesCodec{}) }

// Bytes is a message of raw bytes, the zero-serialization fast path: no
// encoding, and no copy where notnets can avoid one.
//
// Receiving: a Bytes filled by a call (as the reply of Invoke, or by
// RecvMsg) views the message where it lies: for messages of ArenaThreshold
// bytes or more that is the peer's heap in shared memory. The view is
// valid until Free, which hands the memory back to the sender; a Bytes
// that is never freed keeps that memory from the sender for the life of
// the connection, and keeps the connection's segment mapped after it
// closes. Data must not be used after Free; WithViewChecks turns such a
// use into a fault. The peer can still write its heap while you read:
// treat the bytes as untrusted input that may change under you.
//
// Sending: a Bytes from ClientConn.Alloc or Alloc lies in the connection's
// own heap; filling it and sending it moves no bytes at all. Sending any
// Bytes gives it to the transport: do not use it afterwards (it is empty
// once sent, and may be reused with AllocInto). A Bytes from Alloc that
// is not sent must be freed, or its block stays taken. A Bytes from
// NewBytes wraps ordinary memory and is copied when sent, as any message.
//
// A Bytes is not safe for concurrent use.
type Bytes struct {
	b      []byte
	buf    mem.Buffer      // received: the buffer b views, released by Free
	blk    transport.Block // allocated in a connection's heap, not yet sent
	pooled *[]byte         // allocated from grpc's buffer pool, returned by Free
}

// NewBytes returns a Bytes that holds b, for sending.
func NewBytes(b []byte) *Bytes { return &Bytes{b: b} }

// Data returns the message bytes. For a Bytes from Alloc they are writable
// until the Bytes is sent; otherwise they are read-only.
func (m *Bytes) Data() []byte { return m.b }

// Len returns the length of the message.
func (m *Bytes) Len() int { return len(m.b) }

// Free releases the memory under m, received or allocated, and empties m.
// It may be called more than once.
func (m *Bytes) Free() {
	if m.buf != nil {
		m.buf.Free()
	}
	m.blk.Free()
	if m.pooled != nil {
		mem.DefaultBufferPool().Put(m.pooled)
	}
	*m = Bytes{}
}

// Alloc returns an n-byte Bytes in the heap of a connection of the
// client (the instance the balancer would pick now), to fill and send
// without a copy: the call that sends it goes to that instance while it
// takes calls. When the connection has no
// heap, or no room, or n is below ArenaThreshold, it returns ordinary
// (pooled, zeroed) memory, which is sent the usual way. Heap memory is not
// zeroed: it may hold earlier messages of the same connection.
func (cc *ClientConn) Alloc(n int) *Bytes {
	m := new(Bytes)
	cc.AllocInto(m, n)
	return m
}

// AllocInto is Alloc into an existing Bytes, freeing what m held first.
// A Bytes is empty again once sent, so a caller that reuses one allocates
// nothing per call for its requests.
func (cc *ClientConn) AllocInto(m *Bytes, n int) {
	m.Free()
	es := cc.pickable()
	if i := balance.Pick(&cc.picker, es); i >= 0 {
		if blk, b, ok := es[i].t.AllocBlock(n); ok {
			*m = Bytes{b: b, blk: blk}
			return
		}
	}
	m.allocPooled(n)
}

// Alloc returns an n-byte Bytes in the heap of the connection that carries
// the call whose server handler has ctx, to fill and send as the reply
// without a copy. Outside a notnets handler, or when the connection has no
// heap or no room, or n is below ArenaThreshold, it returns ordinary
// memory.
func Alloc(ctx context.Context, n int) *Bytes {
	m := new(Bytes)
	if ts, ok := grpc.ServerTransportStreamFromContext(ctx).(transportStream); ok {
		if blk, b, ok := ts.ts.AllocBlock(n); ok {
			*m = Bytes{b: b, blk: blk}
			return m
		}
	}
	m.allocPooled(n)
	return m
}

// allocPooled points the empty m at n zeroed bytes from grpc's buffer pool.
func (m *Bytes) allocPooled(n int) {
	p := mem.DefaultBufferPool().Get(n)
	clear(*p)
	*m = Bytes{b: *p, pooled: p}
}

// bytesCodec is the codec of Bytes messages.
type bytesCodec struct{}

func (bytesCodec) Name() string { return BytesCodecName }

// Marshal returns the bytes of a *Bytes without copying them. notnets
// itself never calls it for a Bytes; grpc-go does when a call falls back to
// HTTP/2, and when a Bytes goes out through a grpc-go server or client (a
// Bridge, Forward). grpc-go may still be writing the bytes after its
// SendMsg returned, so memory that m would hand back at Free goes to
// grpc-go instead, which frees it once written: a received message (a
// view of a peer's heap, or a pooled buffer) and pooled memory from
// Alloc. m is then empty, as after a send over notnets, and Free does
// nothing. Ordinary memory (NewBytes) is grpc-go's rule to keep: not
// modified after it is sent.
func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*Bytes)
	if !ok {
		return nil, fmt.Errorf("notnets: the %s codec sends *notnets.Bytes, not %T", BytesCodecName, v)
	}
	switch {
	case !m.blk.IsZero():
		// Heap memory of a notnets connection going out another way: copy,
		// since the block must be freed now.
		buf := mem.Copy(m.b, mem.DefaultBufferPool())
		m.Free()
		return mem.BufferSlice{buf}, nil
	case m.buf != nil:
		buf := m.buf // our reference, now grpc-go's
		*m = Bytes{}
		return mem.BufferSlice{buf}, nil
	case m.pooled != nil:
		buf := mem.NewBuffer(m.pooled, mem.DefaultBufferPool())
		*m = Bytes{}
		return mem.BufferSlice{buf}, nil
	}
	return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
}

// Unmarshal makes a *Bytes view data. A message in one buffer (every
// message notnets receives, and most that grpc-go receives) is kept by
// reference, not copied.
func (bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*Bytes)
	if !ok {
		return fmt.Errorf("notnets: the %s codec receives into *notnets.Bytes, not %T", BytesCodecName, v)
	}
	m.Free()
	switch len(data) {
	case 0:
	case 1:
		data[0].Ref()
		m.buf, m.b = data[0], data[0].ReadOnlyData()
	default:
		m.b = data.Materialize()
	}
	return nil
}
