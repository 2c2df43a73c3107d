package transport

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// Header blocks (docs/PROTOCOL.md 9.9, 11.11): the payload of a HEADERS
// or TRAILERS frame may be larger than a ring record, up to the
// receiver's announced limit (16 MiB by default, grpc-go's default header
// list limit). Such a block travels as fragments of its frame type, all
// in a row in the ring, so that a receiver assembles at most one block at
// a time per connection (L1), in memory that grows with the bytes
// received and never beyond its limit (L2-L4).

// headerLimit returns the header block limit a side announced: 0 means
// the default.
func headerLimit(announced uint32) int {
	if announced == 0 {
		return pool.DefaultHeaderLimit
	}
	return int(announced)
}

// HeaderLimitError says that a header block is larger than the peer's
// limit: nothing of it was written.
type HeaderLimitError struct {
	Type  frame.Type
	Size  int // the block's encoded size
	Limit int // the peer's limit
}

// Error says which block, how large, and the limit.
func (e *HeaderLimitError) Error() string {
	return fmt.Sprintf("notnets: %v block of %d bytes exceeds the peer's header list limit of %d bytes", e.Type, e.Size, e.Limit)
}

// GRPCStatus makes the error an Internal status, as grpc-go's errors for
// header lists over the peer's limit are.
func (e *HeaderLimitError) GRPCStatus() *status.Status {
	return status.New(codes.Internal, e.Error())
}

// tooLarge is the status message of a response whose headers or trailers
// (what) are over the client's limit.
func (e *HeaderLimitError) tooLarge(what string) string {
	return fmt.Sprintf("notnets: response %s of %d bytes exceed the client's header list limit of %d bytes", what, e.Size, e.Limit)
}

// writeBlock writes a HEADERS or TRAILERS frame whose payload is e: one
// frame when it fits a record, else fragments (PROTOCOL.md 9.9), the
// first with MORE and the block's length in aux, flags (END_STREAM) on
// the last only. A block over the peer's limit is a *HeaderLimitError and
// writes nothing. The caller holds the write lock.
//
// Once its first fragment is out, a block is finished whatever ctx says:
// the peer takes no other frame until it has the last (L1). Only the
// connection's end stops it.
func (c *conn) writeBlock(ctx context.Context, t frame.Type, flags frame.Flags, stream uint32, e encoder) error {
	n := e.Size()
	if n > c.peerHeaderLimit {
		return &HeaderLimitError{Type: t, Size: n, Limit: c.peerHeaderLimit}
	}
	max := c.out.MaxPayload()
	if n <= max {
		return c.writeSized(ctx, t, flags, stream, 0, e, n)
	}
	buf := mem.DefaultBufferPool().Get(n)
	defer mem.DefaultBufferPool().Put(buf)
	b := e.Append((*buf)[:0])
	if len(b) != n {
		panic(fmt.Sprintf("notnets: %v payload encoded to %d bytes, sized %d", t, len(b), n))
	}
	aux := uint32(n)
	for len(b) > 0 {
		k := min(len(b), max)
		f := flags
		if k < len(b) {
			f = frame.FlagMore
		}
		rec, err := c.reserve(ctx, k, t)
		if err != nil {
			return err
		}
		frame.Put(rec, f, stream, aux)
		copy(rec[frame.HeaderSize:], b[:k])
		b, aux = b[k:], 0
		ctx = context.Background() // started: finish it (L1)
		if len(b) > 0 {
			c.publish() // the peer drains a ring smaller than the block
		}
	}
	return nil
}

// blockAssembler joins the fragments of the header block in progress on
// a connection, on its reader.
type blockAssembler struct {
	first frame.Header // the first fragment's header
	want  int          // the block's length, from the first fragment's aux
	buf   *[]byte      // nil when no block is in progress
}

// add takes the frame h with payload p. For a frame that is not part of
// a fragmented header block it returns h and p as they are. For a
// fragment it returns done = false until the last, then the whole block
// as one frame (flags of the last fragment, aux 0), whose payload is
// valid until release. limit is this side's announced limit. An error is
// a protocol violation.
func (a *blockAssembler) add(h frame.Header, p []byte, limit int) (frame.Header, []byte, bool, error) {
	if a.buf == nil {
		if h.Type != frame.TypeHeaders && h.Type != frame.TypeTrailers {
			return h, p, true, nil
		}
		if h.Flags&frame.FlagMore == 0 {
			if len(p) > limit {
				return h, nil, false, fmt.Errorf("%v block of %d bytes on stream %d exceeds this side's header list limit of %d bytes (L3)", h.Type, len(p), h.Stream, limit)
			}
			return h, p, true, nil
		}
		want := int(h.Aux)
		if want > limit {
			return h, nil, false, fmt.Errorf("%v block of %d bytes on stream %d exceeds this side's header list limit of %d bytes (L3)", h.Type, want, h.Stream, limit)
		}
		if len(p) > want {
			return h, nil, false, fmt.Errorf("%v fragment of %d bytes on stream %d for a block of %d bytes (L2)", h.Type, len(p), h.Stream, want)
		}
		// The announced length is only a claim: the buffer grows with the
		// fragments received (PROTOCOL.md 16), as a message's does.
		a.first, a.want = h, want
		a.buf = mem.DefaultBufferPool().Get(a.capFor(len(p)))
		*a.buf = append((*a.buf)[:0], p...)
		return h, nil, false, nil
	}
	if h.Type != a.first.Type || h.Stream != a.first.Stream {
		return h, nil, false, fmt.Errorf("%v frame on stream %d inside the %v header block of stream %d (L1)", h.Type, h.Stream, a.first.Type, a.first.Stream)
	}
	have := len(*a.buf)
	if have+len(p) > a.want {
		return h, nil, false, fmt.Errorf("%v fragments on stream %d exceed the block length %d (L4)", h.Type, h.Stream, a.want)
	}
	if have+len(p) > cap(*a.buf) {
		nb := mem.DefaultBufferPool().Get(a.capFor(have + len(p)))
		*nb = append((*nb)[:0], *a.buf...)
		mem.DefaultBufferPool().Put(a.buf)
		a.buf = nb
	}
	*a.buf = append(*a.buf, p...)
	if h.Flags&frame.FlagMore != 0 {
		return h, nil, false, nil
	}
	if len(*a.buf) != a.want {
		return h, nil, false, fmt.Errorf("%v block of %d bytes on stream %d ended after %d (L4)", h.Type, a.want, h.Stream, len(*a.buf))
	}
	whole := frame.Header{Length: a.want, Type: h.Type, Flags: h.Flags, Stream: h.Stream}
	return whole, *a.buf, true, nil
}

// capFor is the capacity of a buffer that must hold n bytes of the
// block: growth times that (at least minPooled), at most the block.
func (a *blockAssembler) capFor(n int) int { return max(minPooled, min(a.want, growth*n)) }

// release drops the block assembled, once its frame has been handled:
// after add returned done with a block in progress before.
func (a *blockAssembler) release() {
	if a.buf != nil {
		mem.DefaultBufferPool().Put(a.buf)
		a.buf = nil
	}
}
