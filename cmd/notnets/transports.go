package main

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
	"github.com/notnets/notnets/internal/floor"
)

// callers returns conc callers of transport name that share one
// connection, made for this measurement and closed with the environment.
func (e *benchEnv) callers(name string, conc int) ([]caller, error) {
	switch name {
	case "grpc-tcp", "grpc-uds":
		target := e.info.TCP
		if name == "grpc-uds" {
			target = "unix://" + e.info.UDS
		}
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { cc.Close() })
		return greeterCallers(cc, conc), nil
	case "notnets", "notnets-raw":
		ctx, cancel := context.WithTimeout(background, 10*time.Second)
		defer cancel()
		cc, err := notnets.Dial(ctx, e.info.Listener, notnets.WithPool(e.pool),
			notnets.WithMaxRecvMsgSize(maxMsg), notnets.WithMaxSendMsgSize(maxMsg))
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { cc.Close() })
		if name == "notnets" {
			return greeterCallers(cc, conc), nil
		}
		return rawCallers(cc, conc), nil
	case "floor":
		c, segName, err := floor.Create(e.pool)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { c.Close() })
		if ans, err := e.command("floor " + segName); err != nil || ans != "ok" {
			return nil, fmt.Errorf("bench server could not open the floor segment: %q %v", ans, err)
		}
		if err := c.WaitPeer(10 * time.Second); err != nil {
			return nil, err
		}
		return []caller{c.RoundTrip}, nil
	case "memcpy":
		var dst []byte
		return []caller{func(p []byte) error {
			if len(dst) < len(p) {
				dst = make([]byte, len(p))
			}
			copy(dst, p)
			return nil
		}}, nil
	}
	return nil, fmt.Errorf("unknown transport %q", name)
}

// greeterCallers call Greeter.SayHello with the payload as the name.
func greeterCallers(cc grpc.ClientConnInterface, conc int) []caller {
	client := pb.NewGreeterClient(cc)
	cs := make([]caller, conc)
	for i := range cs {
		req := &pb.HelloRequest{}
		cs[i] = func(p []byte) error {
			if len(req.Name) != len(p) {
				req.Name = string(p) // the payload is the same for every call of a size
			}
			r, err := client.SayHello(background, req)
			if err == nil && len(r.GetMessage()) != len(p)+len("Hello ") {
				err = fmt.Errorf("reply of %d bytes to a name of %d", len(r.GetMessage()), len(p))
			}
			return err
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
		cs[i] = func(p []byte) error {
			cc.AllocInto(&in, len(p))
			copy(in.Data(), p)
			if err := benchsvc.RawEcho(background, cc, &in, &out); err != nil {
				return err
			}
			n := out.Len()
			out.Free()
			if n != len(p) {
				return fmt.Errorf("raw echo of %d bytes came back with %d", len(p), n)
			}
			return nil
		}
	}
	return cs
}
