package transport

import (
	"fmt"

	"github.com/notnets/notnets/internal/frame"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// minPooled is the capacity of the smallest receive buffer: above grpc's
// pooling threshold (1 KiB), below which mem.NewBuffer would not pool.
const minPooled = 1025

// assembler joins the fragments of one message at a time.
type assembler struct {
	buf  *[]byte
	want int
	skip bool // the message is over the limit; its fragments are dropped
}

// add takes one MESSAGE fragment. It returns the message when complete; a
// message over limit comes back as an InMsg holding a ResourceExhausted
// error. A returned error is a protocol violation.
func (a *assembler) add(h frame.Header, p []byte, limit int) (InMsg, bool, error) {
	more := h.Flags&frame.FlagMore != 0
	if a.buf == nil && !a.skip { // first fragment
		a.want = int(h.Aux)
		if a.want > limit {
			a.skip = true
		} else {
			if len(p) > a.want || (!more && len(p) != a.want) {
				return InMsg{}, false, fmt.Errorf("stream %d: fragment of %d bytes for a message of %d (T6)", h.Stream, len(p), a.want)
			}
			// Small messages too come from the pool, with room beyond
			// grpc's pooling threshold, so that their buffers are pooled
			// and receiving allocates nothing. The announced length is
			// only a claim (PROTOCOL.md 16): a buffer starts at a few
			// times the fragment and grows with the fragments received.
			a.buf = mem.DefaultBufferPool().Get(a.capFor(0, len(p)))
			*a.buf = append((*a.buf)[:0], p...)
		}
	} else if !a.skip {
		if len(*a.buf)+len(p) > a.want {
			return InMsg{}, false, fmt.Errorf("stream %d: fragments exceed the message length %d (T7)", h.Stream, a.want)
		}
		a.grow(len(p))
		*a.buf = append(*a.buf, p...)
	}
	if more {
		return InMsg{}, false, nil
	}
	if a.skip {
		a.skip = false
		return InMsg{Err: status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", a.want, limit), N: a.want}, true, nil
	}
	if len(*a.buf) != a.want {
		return InMsg{}, false, fmt.Errorf("stream %d: message of %d bytes ended after %d (T8)", h.Stream, a.want, len(*a.buf))
	}
	b := a.buf
	a.buf = nil
	return InMsg{Buf: mem.NewBuffer(b, mem.DefaultBufferPool())}, true, nil
}

// growth is how much a reassembly buffer grows at a time: the memory a
// peer can make a stream hold is at most growth times what it sent
// (plus minPooled), and an honest message of n bytes in fragments of f
// is copied log4(n/f) extra times.
const growth = 4

// capFor returns the capacity for a buffer holding have bytes that must
// take n more: growth times that, at least minPooled, at most the message.
func (a *assembler) capFor(have, n int) int {
	return max(minPooled, min(a.want, growth*(have+n)))
}

// grow makes room for n more bytes in the buffer, moving it to a larger
// pooled buffer when it is full.
func (a *assembler) grow(n int) {
	have := len(*a.buf)
	if have+n <= cap(*a.buf) {
		return
	}
	nb := mem.DefaultBufferPool().Get(a.capFor(have, n))
	*nb = append((*nb)[:0], *a.buf...)
	mem.DefaultBufferPool().Put(a.buf)
	a.buf = nb
}

// ref takes a whole message that arrived as a MESSAGE_REF frame, viewed by
// buf, which it frees unless it returns it.
func (a *assembler) ref(h frame.Header, buf mem.Buffer, limit int) (InMsg, bool, error) {
	if a.buf != nil || a.skip {
		buf.Free()
		return InMsg{}, false, fmt.Errorf("stream %d: MESSAGE_REF in the middle of a fragmented message", h.Stream)
	}
	if n := buf.Len(); int(h.Aux) != n {
		buf.Free()
		return InMsg{}, false, fmt.Errorf("stream %d: MESSAGE_REF of %d bytes says the message has %d", h.Stream, n, h.Aux)
	}
	if n := buf.Len(); n > limit {
		buf.Free()
		return InMsg{Err: status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, limit), N: n}, true, nil
	}
	return InMsg{Buf: buf}, true, nil
}

// reset drops a partly assembled message.
func (a *assembler) reset() {
	if a.buf != nil {
		mem.DefaultBufferPool().Put(a.buf)
		a.buf = nil
	}
	a.skip = false
}
