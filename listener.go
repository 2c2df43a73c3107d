package notnets

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"
)

// Addr is the address of a notnets endpoint: a service name in a pool
// directory, and which instance of it.
type Addr struct {
	Pool     string // the pool directory
	Name     string // the service name
	PID      int    // the process at this end, when known
	Instance string // the instance, <name>+<id>, when known
}

// Network returns "notnets".
func (a *Addr) Network() string { return "notnets" }

// String returns pool/name, followed by #pid when the pid is known.
func (a *Addr) String() string {
	s := a.Pool + "/" + a.Name
	if a.PID != 0 {
		s += fmt.Sprintf("#%d", a.PID)
	}
	return s
}

// ErrListenerClosed is returned by Server.Serve when its Listener is
// closed while the server is still running (not by Stop or GracefulStop).
var ErrListenerClosed = transport.ErrListenerClosed

// Listener is a name published in a pool, through which clients hand over
// new connections. Serve a Server on it.
type Listener struct {
	l *transport.Listener
}

// ErrPoolExhausted is wrapped by the error of Listen when the pool's file
// system has no room for the listener (a full /dev/shm, a quota). Such an
// error also carries the status ResourceExhausted (status.Code). Dial
// reports the same condition as a ResourceExhausted status.
var ErrPoolExhausted = pool.ErrExhausted

// exhaustedError is a Listen error that wraps ErrPoolExhausted and has
// the status ResourceExhausted.
type exhaustedError struct{ err error }

func (e exhaustedError) Error() string { return e.err.Error() }
func (e exhaustedError) Unwrap() error { return e.err }

// GRPCStatus returns the error as a ResourceExhausted status.
func (e exhaustedError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, e.err.Error())
}

// ErrInstanceExists is wrapped by the error of a Listen WithExclusive when
// a live instance already serves the name.
var ErrInstanceExists = transport.ErrInstanceExists

// Listen publishes a new instance of the service name in the pool: any
// number of server processes may serve one name, and clients balance
// their calls over them (WithBalancing). With WithExclusive it fails if
// a live instance already serves the name. It fails with an error
// wrapping ErrPoolExhausted when the pool has no room. With
// WithCrossHost it makes the pool cross-host; without it, it follows
// what the pool says it is, as do the connections a Server accepts
// through it.
func Listen(name string, opts ...ListenOption) (*Listener, error) {
	l, _, err := listen(name, opts, false)
	if err != nil {
		return nil, err
	}
	return &Listener{l: l}, nil
}

// listen publishes an instance of the service name, serving byte streams
// (ListenConn) or notnets calls (Listen), and returns it with its options.
func listen(name string, opts []ListenOption, stream bool) (*transport.Listener, *listenOptions, error) {
	o := listenOptions{wait: defaultWait(), liveness: DefaultLivenessTimeout}
	for _, opt := range opts {
		opt.applyListen(&o)
	}
	if o.pool == "" {
		o.pool = pool.DefaultDir()
	}
	o.pool = filepath.Clean(o.pool) // a trailing slash would follow a symbolic link
	access, err := poolAccess(o.group)
	if err != nil {
		return nil, nil, err
	}
	l, err := transport.Listen(o.pool, name, access, transport.ListenConfig{Wait: o.wait, Exclusive: o.exclusive, Stream: stream, CrossHost: o.crossHost})
	if errors.Is(err, pool.ErrExhausted) {
		return nil, nil, exhaustedError{err}
	}
	if err != nil {
		return nil, nil, err
	}
	return l, &o, nil
}

// Addr returns the listener's address.
func (l *Listener) Addr() net.Addr {
	return &Addr{Pool: l.l.Dir(), Name: l.l.Name(), PID: os.Getpid(), Instance: l.l.Instance()}
}

// Close removes the listener from the pool. Accepted connections stay open.
func (l *Listener) Close() error { return l.l.Close() }

// CrossHost reports whether the listener's pool is cross-host
// (WithCrossHost): its connections then poll only, are set up through
// the listener's slots, and know their clients by heartbeat alone.
func (l *Listener) CrossHost() bool { return l.l.CrossHost() }
