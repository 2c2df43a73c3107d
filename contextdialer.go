package notnets

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/transport"
)

// ContextDialer returns a dialer for grpc.WithContextDialer that connects
// grpc-go's own client to a grpc.Server served on ListenConn, through
// shared memory: the drop-in tier (ListenConn says what it gives and
// costs against the native tier). An unchanged grpc-go program gets it
// by adding one dial option:
//
//	cc, err := grpc.NewClient("passthrough:///greeter",
//		grpc.WithContextDialer(notnets.ContextDialer()),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
//
// The dialer's target is what grpc-go passes it: the address part of a
// passthrough target. It names the service ("greeter"; a port,
// "greeter:50051", is ignored, as are the schemes NewClient accepts), or
// one instance of it ("greeter+<16 hex digits>", as a resolver that
// lists instances would give). For a service, each dial connects to one
// of its live ListenConn instances, chosen at random, trying the others
// if it fails; grpc-go dials again when the connection is lost, so a
// client whose instance dies moves to another. With no instance, the
// dial fails with Unavailable, and grpc-go's calls with it.
//
// Options: WithPool, WithPoolGroup, WithCrossHost, WithRingSize, WithSpin,
// WithIdleStrategy, WithPollOnly, WithLivenessTimeout,
// WithConnectTimeout (the bound of a dial whose context has no deadline)
// and WithServerUIDs and WithServerGIDs apply; the others concern
// notnets calls and are ignored here: grpc-go's own options do their
// work. A bad option makes every dial fail with its error.
func ContextDialer(opts ...DialOption) func(ctx context.Context, target string) (net.Conn, error) {
	o := dialOptions{
		ringSize:     DefaultRingSize,
		wait:         defaultWait(),
		connectLimit: 20 * time.Second,
		liveness:     DefaultLivenessTimeout,
	}
	for _, opt := range opts {
		opt.applyDial(&o)
	}
	if o.pool == "" {
		o.pool = pool.DefaultDir()
	}
	o.pool = filepath.Clean(o.pool) // a trailing slash would follow a symbolic link
	d := &streamDialer{o: o}
	if err := ring.CheckCap(o.ringSize); err != nil {
		d.err = fmt.Errorf("notnets: %w", err)
	} else {
		d.o.access, d.err = poolAccess(o.group)
	}
	return d.dial
}

// streamDialer is ContextDialer's configuration.
type streamDialer struct {
	o   dialOptions
	err error // a bad option, returned by every dial
}

// dial connects to an instance of the service target names (see
// ContextDialer).
func (d *streamDialer) dial(ctx context.Context, target string) (net.Conn, error) {
	if d.err != nil {
		return nil, d.err
	}
	service, instance, err := parseDialTarget(target)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withConnectLimit(ctx, d.o.connectLimit)
	defer cancel()
	pool.CleanIn(d.o.pool, d.o.access) // best effort: files of processes that died
	candidates, err := d.instances(service, instance)
	if err != nil {
		return nil, err
	}
	cfg := transport.DialConfig{Pool: d.o.pool, Access: d.o.access, RingSize: d.o.ringSize,
		Wait: d.o.wait, Liveness: d.o.liveness, Stream: true, CrossHost: d.o.crossHost}
	for _, in := range candidates {
		cfg.Name = in.Base
		c, cerr := transport.DialStream(ctx, &cfg)
		if cerr == nil {
			if cerr = d.o.trustPeer(in.Base, c.Peer()); cerr != nil {
				c.Close()
			}
		}
		if cerr == nil {
			c.SetAddrs(&Addr{Pool: d.o.pool, Name: service, PID: os.Getpid()},
				&Addr{Pool: d.o.pool, Name: service, PID: c.Peer().PID, Instance: in.Base})
			return c, nil
		}
		err = cerr
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// instances returns the instances of service that serve byte streams and
// may be used, in random order; only instance if it is not "". With none,
// an Unavailable error (PermissionDenied if the only ones are refused).
func (d *streamDialer) instances(service, instance string) ([]*balance.Instance, error) {
	// The pool's marker says how instances are judged (F13, F14).
	mode, err := pool.ReadMode(d.o.pool, d.o.access)
	switch {
	case err != nil:
		return nil, instanceError(err)
	case d.o.crossHost && !mode.CrossHost:
		return nil, transport.NotCrossHost(d.o.pool, mode)
	}
	bases := []string{instance}
	if instance == "" {
		var err error
		if bases, err = pool.ListInstances(d.o.pool, service, d.o.access); err != nil {
			return nil, status.Errorf(codes.Unavailable, "notnets: service %q: %v", service, err)
		}
	}
	var out []*balance.Instance
	var why error
	for _, b := range bases {
		in, err := balance.OpenInstance(d.o.pool, b, d.o.access, mode.Coherence)
		if err != nil {
			why = instanceError(err)
			continue
		}
		if !in.ByteStream() || instanceGone(in, mode.CrossHost, d.o.liveness) {
			continue // a notnets Server's (F11), closed, draining, or left by a process that died
		}
		if err := d.o.trustInstance(in); err != nil {
			why = err
			continue
		}
		out = append(out, in)
	}
	if len(out) == 0 {
		if why != nil {
			return nil, why
		}
		return nil, status.Errorf(codes.Unavailable, "notnets: no instance of %q in pool %s serves byte streams (a grpc.Server serves one on notnets.ListenConn)", service, d.o.pool)
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out, nil
}

// parseDialTarget returns the service a dial target names, and the
// instance if it names one: "service+<id>" (with or without a port or
// one of NewClient's schemes), else whatever parseTarget accepts.
func parseDialTarget(target string) (service, instance string, err error) {
	t := target
	if _, after, ok := strings.Cut(t, ":///"); ok {
		t = after
	}
	if host, _, err := net.SplitHostPort(t); err == nil {
		t = host
	}
	if s, _, ok := pool.ParseInstance(t); ok {
		return s, t, nil
	}
	service, err = parseTarget(target)
	return service, "", err
}
