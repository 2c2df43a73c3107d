package notnets

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"
)

// Addr is the address of a notnets endpoint: a name in a pool directory.
type Addr struct {
	Pool string // the pool directory
	Name string // the listener name
	PID  int    // the process at this end, when known
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

// Listen publishes a listener under name in the pool. It fails if a live
// listener already has the name; a file left by a dead process is replaced.
func Listen(name string, opts ...ListenOption) (*Listener, error) {
	o := listenOptions{wait: defaultWait()}
	for _, opt := range opts {
		opt.applyListen(&o)
	}
	if o.pool == "" {
		o.pool = pool.DefaultDir()
	}
	o.pool = filepath.Clean(o.pool) // a trailing slash would follow a symbolic link
	access, err := poolAccess(o.group)
	if err != nil {
		return nil, err
	}
	l, err := transport.Listen(o.pool, name, access, o.wait)
	if err != nil {
		return nil, err
	}
	return &Listener{l: l}, nil
}

// Addr returns the listener's address.
func (l *Listener) Addr() net.Addr { return &Addr{Pool: l.l.Dir(), Name: l.l.Name(), PID: os.Getpid()} }

// Close removes the listener from the pool. Accepted connections stay open.
func (l *Listener) Close() error { return l.l.Close() }
