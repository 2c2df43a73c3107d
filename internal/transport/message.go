package transport

import (
	"context"
	"math"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/ring"
)

// grpcProto is gRPC's registered protobuf codec. When a call uses it, small
// messages are marshalled straight into the ring instead of into a buffer.
var grpcProto = encoding.GetCodecV2(protocodec.Name)

// OutMsg is a message ready to be written: a protobuf message to be
// marshalled in place, bytes a codec produced, or raw bytes sent without a
// codec (notnets.Bytes), possibly already in the connection's heap.
type OutMsg struct {
	value   any // as the caller gave it, for stats handlers
	direct  proto.Message
	data    mem.BufferSlice
	raw     bool   // rawData is the payload, sent without a codec
	rawData []byte // the raw payload
	block   *Block // where rawData lies in a heap, if it does; cleared once sent
	owner   Owner  // freed with the message (a Bytes given to the transport)
	size    int

	// staged is the connection in whose heap the message was written
	// before the write lock was taken (stage), at offset stagedOff; the
	// segment stays pinned until the block is sent or freed.
	staged    *conn
	stagedOff int
}

// Owner is what a message holds and frees when it is freed.
type Owner interface{ Free() }

// Value returns the message as the caller gave it.
func (m *OutMsg) Value() any { return m.value }

// Size returns the message's length in bytes.
func (m *OutMsg) Size() int { return m.size }

// Free releases what the message holds.
func (m *OutMsg) Free() {
	m.data.Free()
	if m.owner != nil {
		m.owner.Free()
	}
	m.unstage()
}

// unstage gives back the block a message was staged in (stage), so that
// it can go on another connection. m may be nil.
func (m *OutMsg) unstage() {
	if m == nil {
		return
	}
	if c := m.staged; c != nil {
		m.staged = nil
		c.freeBlock(m.stagedOff)
		c.unpin()
	}
}

// stage writes a message that will travel through c's heap into a block
// now, before the caller takes the write lock, so that copying a large
// message holds up no other writer. It does nothing for messages that go
// through the ring, or that already lie in c's heap, or when the heap is
// full (writeMsg then tries again under the lock, and falls back to the
// ring). An error is the codec's.
func (c *conn) stage(m *OutMsg) error {
	if m == nil || m.staged != nil || m.size < ArenaThreshold || m.inHeapOf(c) || !c.tryPin() {
		return nil
	}
	off, blk, ok := c.allocBlock(m.size)
	if !ok {
		c.unpin()
		return nil
	}
	if err := fillBlock(m, blk); err != nil {
		c.freeBlock(off)
		c.unpin()
		return err
	}
	m.staged, m.stagedOff = c, off
	return nil
}

// inHeapOf reports whether m is raw bytes that already lie in c's heap.
func (m *OutMsg) inHeapOf(c *conn) bool { return m.block != nil && m.block.c == c }

// InHeap reports whether m (which may be nil) lies in a connection's heap.
func (m *OutMsg) InHeap() bool { return m != nil && m.block != nil && m.block.c != nil }

// PrepareMsg sizes or marshals v with codec and checks it against maxSend.
// owner, if not nil, is freed with the message.
func PrepareMsg(codec encoding.CodecV2, v any, maxSend int, owner Owner) (OutMsg, error) {
	m := OutMsg{value: v, owner: owner}
	if v == nil {
		return m, nil // grpc-go sends an untyped nil message as empty
	}
	if pm, ok := v.(proto.Message); ok && codec == grpcProto && pm != nil {
		m.direct, m.size = pm, proto.Size(pm)
	} else {
		data, err := codec.Marshal(v)
		if err != nil {
			m.Free()
			return OutMsg{}, status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
		}
		m.data, m.size = data, data.Len()
	}
	return m, m.checkSize(maxSend)
}

// PrepareRaw prepares data, sent without a codec, as the message v; block
// says where data lies in a heap (its Block is cleared once sent), and
// owner is freed with the message.
func PrepareRaw(v any, data []byte, block *Block, owner Owner, maxSend int) (OutMsg, error) {
	m := OutMsg{value: v, raw: true, rawData: data, owner: owner, size: len(data)}
	if !block.IsZero() {
		m.block = block
	}
	return m, m.checkSize(maxSend)
}

// checkSize checks m against the protocol's limit and maxSend, freeing it
// if it is too large.
func (m *OutMsg) checkSize(maxSend int) error {
	var err error
	if m.size > math.MaxUint32 {
		err = status.Errorf(codes.ResourceExhausted, "notnets: message of %d bytes exceeds the protocol limit of 4 GiB", m.size)
	} else if maxSend > 0 && m.size > maxSend {
		err = status.Errorf(codes.ResourceExhausted, "grpc: trying to send message larger than max (%d vs. %d)", m.size, maxSend)
	}
	if err != nil {
		m.Free()
		*m = OutMsg{}
	}
	return err
}

var marshalCached = proto.MarshalOptions{UseCachedSize: true}

// writeMsg writes m as a MESSAGE frame (or fragments). The caller holds the
// write lock.
func (c *conn) writeMsg(ctx context.Context, stream uint32, flags frame.Flags, m *OutMsg) error {
	if m.staged == c {
		if err := c.writeRef(ctx, stream, flags, m.stagedOff, m.size); err != nil {
			return err // free releases the block
		}
		m.staged = nil
		c.unpin()
		return nil
	}
	if m.inHeapOf(c) {
		if err := c.writeRef(ctx, stream, flags, m.block.off, m.size); err != nil {
			return err
		}
		m.block.sent()
		*m.block = Block{}
		return nil
	}
	if m.size >= ArenaThreshold {
		if off, blk, ok := c.allocBlock(m.size); ok {
			return c.writeInHeap(ctx, stream, flags, m, off, blk)
		}
	}
	if m.raw {
		return c.writeData(ctx, stream, flags, m.rawData)
	}
	if m.direct != nil && m.size <= c.out.MaxPayload() {
		rec, err := c.reserve(ctx, m.size, frame.TypeMessage)
		if err != nil {
			return err
		}
		frame.Put(rec, flags, stream, uint32(m.size))
		body := rec[frame.HeaderSize:frame.HeaderSize:len(rec)]
		b, err := marshalCached.MarshalAppend(body, m.direct)
		if err == nil && len(b) != m.size {
			err = status.Errorf(codes.Internal, "grpc: message changed size from %d to %d bytes while being sent", m.size, len(b))
		}
		if err != nil {
			rec[4] = ring.KindPad // the reader skips the abandoned record
			return status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
		}
		return nil
	}
	if m.direct != nil {
		// Too large for one frame: marshal into a pooled buffer, then copy
		// it into the ring a fragment at a time.
		buf := mem.DefaultBufferPool().Get(m.size)
		defer mem.DefaultBufferPool().Put(buf)
		b, err := marshalCached.MarshalAppend((*buf)[:0], m.direct)
		if err != nil {
			return status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
		}
		return c.writeData(ctx, stream, flags, b)
	}
	if len(m.data) == 1 {
		return c.writeData(ctx, stream, flags, m.data[0].ReadOnlyData())
	}
	return c.writeData(ctx, stream, flags, m.data.Materialize())
}

// writeInHeap fills the block at off in the own heap with m and sends it
// as a reference. The caller holds the write lock.
func (c *conn) writeInHeap(ctx context.Context, stream uint32, flags frame.Flags, m *OutMsg, off int, blk []byte) error {
	err := fillBlock(m, blk)
	if err == nil {
		err = c.writeRef(ctx, stream, flags, off, m.size)
	}
	if err != nil {
		c.freeBlock(off)
	}
	return err
}

// fillBlock writes m into the heap block blk: marshals it there, or copies
// its bytes.
func fillBlock(m *OutMsg, blk []byte) error {
	switch {
	case m.direct != nil:
		b, err := marshalCached.MarshalAppend(blk[:0:m.size], m.direct)
		switch {
		case err != nil:
			return status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
		case len(b) != m.size || &b[0] != &blk[0]:
			return status.Errorf(codes.Internal, "grpc: message changed size from %d to %d bytes while being sent", m.size, len(b))
		}
	case m.raw:
		copy(blk, m.rawData)
	default:
		m.data.CopyTo(blk)
	}
	return nil
}

// Decode unmarshals a received message into v and frees it. The
// one-buffer slice the codec sees is the stream's, so that decoding
// allocates nothing; a codec keeps buffers (with Ref), never the slice.
// Only one goroutine receives on a stream at a time.
func (s *Stream) Decode(codec encoding.CodecV2, buf mem.Buffer, v any) error {
	s.dec[0] = buf
	err := codec.Unmarshal(s.dec[:], v)
	s.dec[0] = nil
	buf.Free()
	if err != nil {
		return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
	}
	return nil
}
