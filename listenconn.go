package notnets

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/notnets/notnets/internal/transport"
)

// ListenConn publishes a new instance of the service name in the pool, as
// Listen does, for the drop-in tier: it returns a net.Listener whose
// connections are byte streams through shared memory, for an unchanged
// grpc.Server to serve (grpcServer.Serve(lis)). Clients reach it with
// grpc-go's own client and one dial option, ContextDialer.
//
// What the drop-in tier gives: grpc-go's own *grpc.Server and
// *grpc.ClientConn, so everything they offer keeps working (service
// config, keepalive, channelz, binary logging, compression, handlers and
// interceptors typed on grpc's concrete types, grpc-gateway), over the
// pool's rings and doorbells with no socket and no system call on the
// data path (a wake-up only when the peer sleeps), with the native
// tier's liveness (a dead peer fails its connection within about 100 ms
// on one host). What it costs against the native tier (Listen and a
// notnets Server): HTTP/2 framing and HPACK, grpc-go's goroutine
// hand-offs and a copy into and out of the ring in each direction on
// every call, and no heaps, so no zero-copy notnets.Bytes; one
// connection per grpc-go address, to an instance the dialer picks at
// random, instead of notnets' per-call balancing; and peer.AuthInfo is
// whatever grpc-go's transport credentials say (the kernel's uid and gid
// are not in it). notnets bench measures it as grpc-shm, beside grpc-tcp
// and notnets (docs/BENCHMARKS.md).
//
// Instances of one service may be of both kinds: notnets clients use
// only Listen's, ContextDialer only ListenConn's (docs/PROTOCOL.md 17).
// A notnets Server serves both with one registration: Serve on Listen's
// listener, ServeGRPC on ListenConn's.
// WithExclusive refuses a second live ListenConn instance of the name.
// The listener's options are Listen's; WithLivenessTimeout,
// WithSpin, WithIdleStrategy and WithPollOnly also set how its
// connections watch and wait for their clients. Closing the listener
// leaves the connections it accepted open, as a net.Listener does.
func ListenConn(name string, opts ...ListenOption) (net.Listener, error) {
	l, o, err := listen(name, opts, true)
	if err != nil {
		return nil, err
	}
	return &connListener{
		l:        l,
		wait:     o.wait,
		liveness: o.liveness,
		addr:     &Addr{Pool: l.Dir(), Name: l.Name(), PID: os.Getpid(), Instance: l.Instance()},
	}, nil
}

// connListener is ListenConn's net.Listener: a transport listener that
// serves byte streams, whose accepted segments become StreamConns.
type connListener struct {
	l        *transport.Listener
	wait     waitConfig
	liveness time.Duration
	addr     *Addr
}

// Accept waits for a client's connection and returns it, a net.Conn whose
// RemoteAddr is the client's Addr (the service name and the client's
// pid). After Close it fails with an error wrapping net.ErrClosed, which
// grpc.Server.Serve takes for the end.
func (l *connListener) Accept() (net.Conn, error) {
	a, err := l.l.Accept()
	if errors.Is(err, transport.ErrListenerClosed) {
		return nil, &net.OpError{Op: "accept", Net: "notnets", Addr: l.addr, Err: net.ErrClosed}
	}
	if err != nil {
		return nil, err
	}
	c := transport.NewStreamServer(a, l.wait, l.liveness)
	c.SetAddrs(l.addr, &Addr{Pool: l.addr.Pool, Name: l.addr.Name, PID: c.Peer().PID})
	return c, nil
}

// Close removes the instance from the pool; connections already accepted
// stay open.
func (l *connListener) Close() error { return l.l.Close() }

// Addr returns the instance's Addr.
func (l *connListener) Addr() net.Addr { return l.addr }
