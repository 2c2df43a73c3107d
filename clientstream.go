package notnets

import (
	"context"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/transport"
)

// clientStream is one call on a ClientConn: the grpc.ClientStream of
// streaming calls, and the call behind Invoke. The transport's stream
// (ts) receives and sends; this type adds the codec, the call options and
// the stats handlers.
type clientStream struct {
	ts     *transport.ClientStream
	cc     *ClientConn
	t      transport.ClientTransport // the connection the call runs on
	addr   *Addr                     // the instance t is connected to
	ctx    context.Context
	desc   *grpc.StreamDesc
	ci     *callInfo
	method string

	// Used only by the caller's goroutine(s).
	received   int
	stopWatch  func() bool          // under ts's lock: set once, read by end
	stopMu     sync.Mutex           // guards stopWatch
	reqHdr     frame.RequestHeaders // sent once, at the start
	begin      time.Time            // when the call began, for stats handlers
	finishOnce sync.Once
}

// cancel ends the stream locally with err's status and tells the server;
// the call is then over for its caller.
func (s *clientStream) cancel(err error) {
	if s.ts.Cancel(err) {
		s.done()
	}
}

// done runs the call options that want the call's outcome, once.
func (s *clientStream) done() { s.end(nil, true, false) }

// doneWith is done for a call whose caller gets err (nil for success),
// which may differ from the stream's status: a reply too large or that
// failed to decode fails a call the server ended with OK.
func (s *clientStream) doneWith(err error) { s.end(err, false, false) }

// end runs the call's OnFinish options and stats End once. Unless keep is
// set, it also lets go of the messages nobody read; with keep (the caller
// gave up on a stream that had already ended) they stay readable, and the
// connection frees them at close if nobody reads them.
func (s *clientStream) end(err error, useStatus, keep bool) {
	if !keep {
		defer s.ts.Settle()
	}
	s.finishOnce.Do(func() {
		s.stopMu.Lock()
		stop := s.stopWatch
		s.stopMu.Unlock()
		if stop != nil {
			stop()
		}
		header, trailer, st := s.ts.Result()
		if useStatus {
			err = st.Err()
		}
		for _, h := range s.ci.headers {
			*h = header
		}
		for _, t := range s.ci.trailers {
			*t = trailer
		}
		for _, p := range s.ci.peers {
			*p = peer.Peer{Addr: s.addr, LocalAddr: &Addr{Pool: s.cc.opts.pool}, AuthInfo: authInfo(s.t.Peer())}
		}
		for _, f := range s.ci.onFinish {
			f(err)
		}
		if sh := s.cc.opts.stats; sh != nil {
			sh.handle(s.ctx, &stats.End{Client: true, BeginTime: s.begin, EndTime: time.Now(), Trailer: trailer, Error: err})
		}
	})
}

// recvUnary waits for the reply and status of a unary call.
func (s *clientStream) recvUnary(reply any, retry bool) (err error) {
	if err := s.ts.WaitStatus(); err != nil {
		// The reply may have come as the deadline passed: then it stands,
		// and the cancel does nothing.
		s.cancel(err)
	}
	if retry && s.ts.Unprocessed() && s.ctx.Err() == nil {
		s.ts.Settle() // the call goes on as another attempt: no End yet
		return errUnprocessed
	}
	defer func() { s.doneWith(err) }()
	m, n, st := s.ts.TakeReply()
	if st.Code() != codes.OK || n != 1 {
		m.Free() // a reply in shared memory goes back to the server
		if st.Code() != codes.OK {
			return st.Err()
		}
		return status.Errorf(codes.Internal, "grpc: cardinality violation: unary call got %d response messages", n)
	}
	if m.Err != nil {
		return m.Err
	}
	size := m.Buf.Len()
	if err := s.ts.Decode(s.ci.codec, m.Buf, reply); err != nil {
		return err
	}
	if sh := s.cc.opts.stats; sh != nil {
		sh.inPayload(s.ctx, true, reply, size)
	}
	return nil
}

// Context returns the call's context.
func (s *clientStream) Context() context.Context { return s.ctx }

// Header waits for the server's response headers.
func (s *clientStream) Header() (metadata.MD, error) {
	if err := s.ts.WaitHeader(); err != nil {
		s.cancel(err)
	}
	md, ok, st := s.ts.Header()
	if ok {
		return md, nil
	}
	return nil, st.Err()
}

// Trailer returns the trailers; they are complete once RecvMsg returned an
// error (io.EOF included).
func (s *clientStream) Trailer() metadata.MD {
	_, trailer, _ := s.ts.Result()
	return trailer.Copy()
}

// CloseSend tells the server that the client sends no more messages. Its
// errors come from RecvMsg, as in grpc-go.
func (s *clientStream) CloseSend() error {
	if err := s.ctx.Err(); err != nil {
		// Cancelled already: the server must not see the stream end
		// normally, which would let it answer OK (grpc-go's interop case
		// cancel_after_begin).
		s.cancel(err)
		return nil
	}
	s.ts.CloseSend()
	return nil
}

// SendMsg sends a message. It returns io.EOF when the stream has already
// ended; RecvMsg then returns the status.
func (s *clientStream) SendMsg(m any) error {
	if s.ts.HalfClosed() {
		return status.Error(codes.Internal, "SendMsg called after CloseSend")
	}
	msg, err := prepareMsg(s.ci.codec, m, s.ci.maxSend)
	if err != nil {
		s.cancel(err)
		return err
	}
	defer msg.Free()
	if err := s.ts.WaitWindow(&msg); err != nil {
		return s.sendFailed(err)
	}
	if err := s.t.Stage(&msg); err != nil {
		return s.sendFailed(err)
	}
	if sh := s.cc.opts.stats; sh != nil {
		sh.outPayload(s.ctx, true, m, msg.Size()) // as queued: not under the write lock
	}
	if err := s.ts.Send(&msg); err != nil {
		return s.sendFailed(err)
	}
	return nil
}

// sendResult is what SendMsg returns for err: grpc-go returns nil instead
// of io.EOF on calls whose client sends one message, because generated code
// would pass io.EOF to the user; RecvMsg then returns the status.
func (s *clientStream) sendResult(err error) error {
	if err == io.EOF && !s.desc.ClientStreams {
		return nil
	}
	return err
}

// sendFailed ends the stream after a failed send and says what SendMsg
// returns: as in grpc-go, a local error (the message could not be
// encoded) as itself, and io.EOF when the call's deadline or cancellation,
// the server or the connection ended it; RecvMsg then returns the status.
// grpc-go's interop case timeout_on_sleeping_server relies on this.
func (s *clientStream) sendFailed(err error) error {
	if err != io.EOF && !s.ts.ConnClosed() {
		s.cancel(err)
	}
	if s.ts.EndedHere() && s.ctx.Err() == nil {
		_, _, st := s.ts.Result()
		return st.Err()
	}
	return s.sendResult(io.EOF)
}

// RecvMsg receives the next message into m. It returns io.EOF when the
// stream ended with status OK, and the status error otherwise.
func (s *clientStream) RecvMsg(m any) error {
	if err := s.ctx.Err(); err != nil {
		s.cancel(err) // the caller cancelled before it asked: its status, unless the call had ended
	}
	if err := s.ts.WaitMsg(); err != nil {
		s.cancel(err)
	}
	msg, ok, st := s.ts.NextMsg()
	if !ok {
		err := st.Err()
		if err == nil && !s.desc.ServerStreams && s.received == 0 {
			err = status.Error(codes.Internal, "grpc: cardinality violation: expected <Message> received <EOF>")
		}
		s.doneWith(err)
		if err == nil {
			return io.EOF
		}
		return err
	}
	if msg.Err != nil {
		s.cancel(msg.Err)
		s.doneWith(msg.Err)
		return msg.Err
	}
	n := msg.Buf.Len()
	if err := s.ts.Decode(s.ci.codec, msg.Buf, m); err != nil {
		s.cancel(err)
		s.doneWith(err)
		return err
	}
	s.received++
	if sh := s.cc.opts.stats; sh != nil {
		sh.inPayload(s.ctx, true, m, n)
	}
	s.ts.Consumed(n)
	if s.desc.ServerStreams {
		return nil
	}
	// One response only: the status decides whether the call succeeded.
	if err := s.ts.WaitStatus(); err != nil {
		s.cancel(err)
	}
	extra := s.ts.Queued()
	_, _, st = s.ts.Result()
	err := st.Err()
	if err == nil && extra > 0 {
		err = status.Error(codes.Internal, "grpc: cardinality violation: expected <EOF> received <Message>")
	}
	s.doneWith(err)
	return err
}
