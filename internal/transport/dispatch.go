package transport

import (
	"fmt"

	"github.com/notnets/notnets/internal/frame"
)

// The frame tables: which side may send which frame type on an active
// stream, and what the receiver does with it. A type missing from a
// side's table is a protocol violation there (docs/PROTOCOL.md 14.6, T3 at
// the server, T4 at the client). GOAWAY (stream 0) and, at the server,
// HEADERS (a new stream) are handled before a stream is looked up; a
// frame for a stream that is no longer active is dropped, and one for a
// stream that was never opened is a violation (T2).

// fromServer is what a client accepts from the server on an active stream
// (T4).
var fromServer = [frame.TypeMessageRef + 1]func(*ClientStream, frame.Header, []byte) error{
	frame.TypeHeaders:      (*ClientStream).onHeaders,
	frame.TypeMessage:      (*ClientStream).onMessage,
	frame.TypeMessageRef:   (*ClientStream).onMessage,
	frame.TypeTrailers:     (*ClientStream).onEnd,
	frame.TypeCancel:       (*ClientStream).onEnd,
	frame.TypeWindowUpdate: func(s *ClientStream, h frame.Header, _ []byte) error { return s.onWindowUpdate(h.Aux) },
}

// fromClient is what a server accepts from the client on an active stream
// (T3).
var fromClient = [frame.TypeMessageRef + 1]func(*Server, *ServerStream, frame.Header, []byte) error{
	frame.TypeMessage:      (*Server).onMessage,
	frame.TypeMessageRef:   (*Server).onMessage,
	frame.TypeHalfClose:    func(t *Server, st *ServerStream, _ frame.Header, _ []byte) error { t.onHalfClose(st); return nil },
	frame.TypeCancel:       (*Server).onCancel,
	frame.TypeWindowUpdate: func(_ *Server, st *ServerStream, h frame.Header, _ []byte) error { return st.onWindowUpdate(h.Aux) },
}

// onFrame handles a frame from the server on the reader goroutine.
func (t *Client) onFrame(h frame.Header, p []byte) error {
	if h.Type == frame.TypeGoAway {
		t.onGoAway(*t.c.peerReason.Load()) // drain decoded the reason (P8)
		return nil
	}
	s, err := t.stream(h)
	if s == nil {
		return err
	}
	if f := lookup(&fromServer, h.Type); f != nil {
		return f(s, h, p)
	}
	return frameError(h, "unexpected %v frame from the server (T4)", h.Type)
}

// onFrame handles a frame from the client on the reader goroutine.
func (t *Server) onFrame(h frame.Header, p []byte) error {
	switch h.Type {
	case frame.TypeGoAway:
		return nil // the client is closing; its state word follows
	case frame.TypeHeaders:
		return t.open(h, p)
	}
	st, err := t.stream(h)
	if st == nil {
		return err
	}
	if f := lookup(&fromClient, h.Type); f != nil {
		return f(t, st, h, p)
	}
	return frameError(h, "unexpected %v frame from the client (T3)", h.Type)
}

// lookup returns table's entry for typ, or nil.
func lookup[F any](table *[frame.TypeMessageRef + 1]F, typ frame.Type) F {
	var none F
	if int(typ) >= len(table) {
		return none
	}
	return table[typ]
}

// frameError describes a protocol violation by the frame h.
func frameError(_ frame.Header, format string, args ...any) error {
	return fmt.Errorf(format, args...)
}
