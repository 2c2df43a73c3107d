package main

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
	"github.com/notnets/notnets/internal/floor"
)

// transport returns conc callers of transport name that share one
// connection (one client; for notnets and grpc-go, to n instances; for a
// transport through a pool, in the pool of mode), made for this
// measurement and closed at its end.
func (e *benchEnv) transport(name, mode string, conc, n int) (*transport, error) {
	switch name {
	case "floor", "floor-spin":
		c, err := e.floor(name)
		if err != nil {
			return nil, err
		}
		call := func(p []byte) (time.Duration, error) { return 0, c.RoundTrip(p) }
		return &transport{callers: []caller{call}, pause: c.Pause, resume: c.Resume}, nil
	case "wake":
		w, segName, err := floor.CreateWake(e.pool)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { w.Close() })
		if ans, err := e.command("wake " + segName); err != nil || ans != "ok" {
			return nil, fmt.Errorf("bench server could not open the wake segment: %q %v", ans, err)
		}
		if err := w.WaitPeer(10 * time.Second); err != nil {
			return nil, err
		}
		call := func([]byte) (time.Duration, error) {
			d, err := w.Call()
			return max(d, 1), err // the one-way wake-up; 0 would mean "time the call"
		}
		return &transport{callers: []caller{call}}, nil
	}
	cs, err := e.callers(name, mode, conc, n)
	if err != nil {
		return nil, err
	}
	return &transport{callers: cs}, nil
}

// callers returns conc callers of transport name on one client of n
// instances (in the pool of mode, for a transport through a pool), once
// every instance has answered it.
func (e *benchEnv) callers(name, mode string, conc, n int) ([]caller, error) {
	switch name {
	case "grpc-tcp", "grpc-uds", "grpc-shm":
		cc, err := e.grpcClient(name, mode, n)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { cc.Close() })
		if err := reachAll(cc, n); err != nil {
			return nil, err
		}
		return greeterCallers(cc, conc), nil
	case "notnets", "notnets-raw", "notnets-busy-spin", "notnets-park-only":
		listener, idle := serviceName(n), notnets.IdleAdaptive
		switch name {
		case "notnets-busy-spin":
			listener, idle = listener+"-busy-spin", notnets.IdleBusySpin
		case "notnets-park-only":
			listener, idle = listener+"-park-only", notnets.IdleParkOnly
		}
		ctx, cancel := context.WithTimeout(background, 10*time.Second)
		defer cancel()
		cc, err := notnets.Dial(ctx, listener, notnets.WithPool(e.pools[mode]), notnets.WithIdleStrategy(idle),
			notnets.WithMaxRecvMsgSize(maxMsg), notnets.WithMaxSendMsgSize(maxMsg))
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { cc.Close() })
		if err := reachAll(cc, n); err != nil {
			return nil, err
		}
		if name == "notnets-raw" {
			return rawCallers(cc, conc), nil
		}
		return greeterCallers(cc, conc), nil
	case "memcpy":
		var dst []byte
		return []caller{func(p []byte) (time.Duration, error) {
			if len(dst) < len(p) {
				dst = make([]byte, len(p))
			}
			copy(dst, p)
			return 0, nil
		}}, nil
	}
	return nil, fmt.Errorf("unknown transport %q", name)
}

// grpcClient returns a grpc-go client of the first n servers over TCP
// (grpc-tcp), their Unix sockets (grpc-uds) or their instances on the
// drop-in tier (grpc-shm: notnets.ContextDialer in the pool of mode, an
// instance name per server): with e.roundRobin, its round_robin balancer over their
// addresses, given by a manual resolver; else a client of the first
// server's address.
func (e *benchEnv) grpcClient(name, mode string, n int) (*grpc.ClientConn, error) {
	addr := func(s *benchProc) string {
		switch name {
		case "grpc-uds":
			return "unix://" + s.info.UDS
		case "grpc-shm":
			return s.info.DropIn[mode][serviceName(n)]
		}
		return s.info.TCP
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg))}
	if name == "grpc-shm" {
		opts = append(opts, grpc.WithContextDialer(notnets.ContextDialer(notnets.WithPool(e.pools[mode]))))
	}
	if !e.roundRobin {
		target := addr(e.servers[0])
		if name == "grpc-shm" {
			target = "passthrough:///" + target // no name resolution: the dialer finds it in the pool
		}
		return grpc.NewClient(target, opts...)
	}
	var addrs []resolver.Address
	for _, s := range e.servers[:n] {
		addrs = append(addrs, resolver.Address{Addr: addr(s)})
	}
	r := manual.NewBuilderWithScheme("notnets-bench")
	r.InitialState(resolver.State{Addresses: addrs})
	opts = append(opts, grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	return grpc.NewClient(r.Scheme()+":///"+serviceName(n), opts...)
}

// reachAll makes calls on cc until n distinct servers have answered, so
// that no measurement starts while the client is still connecting to an
// instance (notnets.Dial returns once one is connected; grpc-go's
// round_robin connects to every address in the background). It gives up
// after 10 s.
func reachAll(cc grpc.ClientConnInterface, n int) error {
	client := pb.NewGreeterClient(cc)
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d instances answered within 10 s", len(seen), n)
		}
		var p peer.Peer
		if _, err := client.SayHello(background, &pb.HelloRequest{Name: "reach"}, grpc.Peer(&p)); err != nil {
			return err
		}
		switch a := p.Addr.(type) {
		case *notnets.Addr:
			seen[a.Instance] = true
		case nil:
		default:
			seen[a.String()] = true
		}
	}
	return nil
}

// floor opens a floor connection (floor-spin: both sides spinning).
func (e *benchEnv) floor(name string) (*floor.Conn, error) {
	c, segName, err := floor.Create(e.pool)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { c.Close() })
	c.Spin = name == "floor-spin"
	if ans, err := e.command(name + " " + segName); err != nil || ans != "ok" {
		return nil, fmt.Errorf("bench server could not open the floor segment: %q %v", ans, err)
	}
	if err := c.WaitPeer(10 * time.Second); err != nil {
		return nil, err
	}
	return c, nil
}

// greeterCallers call Greeter.SayHello with the payload as the name.
func greeterCallers(cc grpc.ClientConnInterface, conc int) []caller {
	client := pb.NewGreeterClient(cc)
	cs := make([]caller, conc)
	for i := range cs {
		req := &pb.HelloRequest{}
		cs[i] = func(p []byte) (time.Duration, error) {
			if len(req.Name) != len(p) {
				req.Name = string(p) // the payload is the same for every call of a size
			}
			r, err := client.SayHello(background, req)
			if err == nil && len(r.GetMessage()) != len(p)+len("Hello ") {
				err = fmt.Errorf("reply of %d bytes to a name of %d", len(r.GetMessage()), len(p))
			}
			return 0, err
		}
	}
	return cs
}

// rawCallers call the raw echo, whose messages are their bytes. Over
// notnets each request is built in the connection's heap (Alloc), so
// sending it copies nothing; the reply is read where it lies and freed.
func rawCallers(cc *notnets.ClientConn, conc int) []caller {
	cs := make([]caller, conc)
	for i := range cs {
		var in, out notnets.Bytes
		cs[i] = func(p []byte) (time.Duration, error) {
			cc.AllocInto(&in, len(p))
			copy(in.Data(), p)
			if err := benchsvc.RawEcho(background, cc, &in, &out); err != nil {
				return 0, err
			}
			n := out.Len()
			out.Free()
			if n != len(p) {
				return 0, fmt.Errorf("raw echo of %d bytes came back with %d", len(p), n)
			}
			return 0, nil
		}
	}
	return cs
}
