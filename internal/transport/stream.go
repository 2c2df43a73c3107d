package transport

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc/mem"

	"github.com/notnets/notnets/internal/frame"
)

// InMsg is a received message, in one buffer, or the error that replaced
// it.
type InMsg struct {
	Buf mem.Buffer
	Err error
	N   int // with Err: the message's length, charged to the window
}

// Free releases the message's buffer.
func (m InMsg) Free() {
	if m.Buf != nil {
		m.Buf.Free()
	}
}

// Stream is the receive side and send window shared by client and server
// streams: the receive queue, reassembly of fragments, and flow control
// (docs/PROTOCOL.md 12). The reader goroutine fills it; the stream's user
// drains it.
//
// Locks: mu guards the queue, the window counters and closed; it is taken
// after the connection's write lock, and nothing is taken under it.
type Stream struct {
	id uint32
	c  *conn

	mu sync.Mutex
	// notify is closed to wake every goroutine parked on the stream: a
	// receiver and a sender waiting for window may park at once, and each
	// must see every change (one pending token would wake only one of
	// them). It is made only when a goroutine has to park: a call answered
	// while its caller polls never needs one.
	notify  chan struct{}
	waiters int // goroutines parked in await
	msgs    []InMsg
	msg0    [1]InMsg // msgs' first backing array
	// discard drops messages as they arrive: the stream ended on this side.
	discard bool
	quota   int // message bytes the peer still accepts before a window update
	// recvd counts the message bytes the peer has started; credited is the
	// window it has been given (the initial window and every update
	// written). A peer may start a message only while recvd < credited.
	recvd, credited int64
	closed          bool // the peer sends nothing more on the stream

	asm     assembler     // reader goroutine only
	dec     [1]mem.Buffer // the slice a message is decoded from (decode)
	maxRecv int
	window  int
	unacked int // bytes read by the user not yet returned to the peer
}

func (s *Stream) init(id uint32, c *conn, maxRecv, window int) {
	s.id, s.c, s.maxRecv, s.window, s.quota = id, c, maxRecv, window, window
	s.credited = int64(window)
	s.msgs = s.msg0[:0]
}

// signal wakes every goroutine parked in await.
func (s *Stream) signal() {
	s.mu.Lock()
	ch := s.notify
	s.notify = nil
	s.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// await blocks until ready (called with s.mu held) is true or ctx ends.
func (s *Stream) await(ctx context.Context, ready func() bool) error {
	for {
		s.mu.Lock()
		if ready() {
			s.mu.Unlock()
			return nil
		}
		if s.notify == nil {
			s.notify = make(chan struct{})
		}
		ch := s.notify
		s.waiters++
		s.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
		s.mu.Lock()
		s.waiters--
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// onData handles a MESSAGE frame on the reader goroutine.
func (s *Stream) onData(h frame.Header, p []byte) error {
	var m InMsg
	var complete bool
	var err error
	if h.Type == frame.TypeMessageRef || (s.asm.buf == nil && !s.asm.skip) {
		if err := s.charge(h.Aux); err != nil {
			return err
		}
	}
	if h.Type == frame.TypeMessageRef {
		m, complete, err = s.asm.ref(h, s.c.takeRef(), s.maxRecv)
	} else {
		m, complete, err = s.asm.add(h, p, s.maxRecv)
	}
	if err != nil || !complete {
		return err
	}
	s.mu.Lock()
	if s.discard {
		s.mu.Unlock()
		m.Free()
		return nil
	}
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	s.signal()
	return nil
}

// charge counts a message of n bytes that the peer starts against the
// window this side has given it. A peer that starts one with no window left
// breaks the protocol: unchecked, it could make this side queue without
// bound.
func (s *Stream) charge(n uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recvd >= s.credited {
		return fmt.Errorf("stream %d: message sent beyond the flow-control window (%d bytes started, %d allowed) (W2)", s.id, s.recvd, s.credited)
	}
	s.recvd += int64(n)
	return nil
}

// onWindowUpdate handles a WINDOW_UPDATE frame on the reader goroutine.
func (s *Stream) onWindowUpdate(n uint32) error {
	s.mu.Lock()
	s.quota += int(n)
	over := s.quota > s.window
	s.mu.Unlock()
	if over {
		return fmt.Errorf("stream %d: window update of %d bytes beyond the window of %d (W1)", s.id, n, s.window)
	}
	s.signal()
	return nil
}

// takeMsg removes the first queued message; the caller holds s.mu.
func (s *Stream) takeMsg() InMsg {
	m := s.msgs[0]
	s.msgs[0] = InMsg{}
	s.msgs = s.msgs[1:]
	if len(s.msgs) == 0 {
		s.msgs = s.msg0[:0]
	}
	return m
}

// consumed returns n bytes of window to the peer once enough accumulated,
// unless the peer has finished sending.
func (s *Stream) consumed(ctx context.Context, n int) {
	s.unacked += n
	if s.unacked < s.window/4 {
		return
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	if s.c.lock(ctx) != nil {
		return
	}
	err := s.c.writeFrame(ctx, frame.TypeWindowUpdate, 0, s.id, uint32(s.unacked), nil)
	if err == nil {
		// Before unlock publishes the update: the peer's next message may
		// be read as soon as it is out.
		s.mu.Lock()
		s.credited += int64(s.unacked)
		s.mu.Unlock()
		s.unacked = 0
	}
	s.c.unlock()
}

// takeQuota waits until the peer's window is open, then charges n bytes to
// it. Any open window lets a whole message go, even one larger than what is
// left (the window may go negative): waiting for room for the whole message
// could wait forever, since the receiver returns credit only in quarters of
// the window. A stream thus has at most a window plus one message in flight.
func (s *Stream) takeQuota(ctx context.Context, n int, done func() error) error {
	var stop error
	err := s.await(ctx, func() bool {
		if stop = done(); stop != nil {
			return true
		}
		return s.quota > 0
	})
	if err != nil {
		return contextStatus(err)
	}
	if stop != nil {
		return stop
	}
	s.mu.Lock()
	s.quota -= n
	s.mu.Unlock()
	return nil
}

// dropQueued frees the messages nobody will read, and those still to
// come: the stream has ended on this side.
func (s *Stream) dropQueued() {
	s.mu.Lock()
	s.discard = true
	s.freeAll()
	s.mu.Unlock()
}

// freeAll releases every queued message; the caller holds s.mu.
func (s *Stream) freeAll() {
	for _, m := range s.msgs {
		m.Free()
	}
	s.msgs = nil
}
