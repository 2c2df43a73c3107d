package notnets_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// A server that answers calls of any service: its unknown-service handler
// gets each as a stream, learns the method from its context, and, with the
// notnets-bytes codec forced, reads and writes the messages as raw bytes.
func ExampleUnknownServiceHandler() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	echo := func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.Method(ss.Context())
		ss.SetHeader(metadata.Pairs("x-method", method))
		for {
			m := new(notnets.Bytes)
			if err := ss.RecvMsg(m); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := ss.SendMsg(m); err != nil { // m is the transport's now
				return err
			}
		}
	}
	lis, err := notnets.Listen("anything", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer(
		notnets.UnknownServiceHandler(echo),
		notnets.ForceServerCodecV2(encoding.GetCodecV2(notnets.BytesCodecName)),
	)
	go srv.Serve(lis)
	defer srv.Stop()

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "anything", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	var out notnets.Bytes
	var header metadata.MD
	err = cc.Invoke(ctx, "/no.such.Service/Ping", notnets.NewBytes([]byte("ping")), &out,
		grpc.CallContentSubtype(notnets.BytesCodecName), grpc.Header(&header))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(header.Get("x-method")[0], string(out.Data()))
	out.Free()
	// Output: /no.such.Service/Ping ping
}

// A generic proxy: a server that knows no service forwards every call,
// undecoded, to the "greeter" service, and a Greeter client calls it.
func ExampleForward() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	// The service behind the proxy.
	glis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	greeter := notnets.NewServer()
	pb.RegisterGreeterServer(greeter, exampleGreeter{})
	go greeter.Serve(glis)
	defer greeter.Stop()

	// The proxy: nothing registered, messages left as raw bytes.
	backend, err := notnets.NewClient("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	plis, err := notnets.Listen("proxy", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	proxy := notnets.NewServer(
		notnets.UnknownServiceHandler(notnets.Forward(backend)),
		notnets.ForceServerCodecV2(encoding.GetCodecV2(notnets.BytesCodecName)),
	)
	go proxy.Serve(plis)
	defer proxy.Stop()

	cc, err := notnets.Dial(ctx, "proxy", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "proxy"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output: Hello proxy
}

// A notnets service reached by a plain grpc-go client through a bridge on
// a Unix socket, as grpcurl or a health probe would reach it.
func ExampleNewBridge() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The notnets service.
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	go srv.Serve(lis)
	defer srv.Stop()

	// The bridge: every call on the socket goes to "greeter".
	b, err := notnets.NewBridge(notnets.BridgeConfig{
		To:          "greeter",
		DialOptions: []notnets.DialOption{notnets.WithPool(dir)},
	})
	if err != nil {
		log.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "notnets-bridge-") // not in the pool: the pool's files are its own
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "greeter.sock")
	ulis, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	go b.Serve(ulis)
	defer b.Stop()

	// Any gRPC client: here grpc-go's, over HTTP/2.
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	r, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{Name: "bridge"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output: Hello bridge
}

// A grpc-go service on the network put in a pool under the name "greeter"
// by a reverse bridge, and called there by a notnets client.
func ExampleNewReverseBridge() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The network service: grpc-go on TCP loopback.
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterGreeterServer(gs, exampleGreeter{})
	go gs.Serve(tcp)
	defer gs.Stop()

	// The reverse bridge, serving the pool name "greeter".
	rb, err := notnets.NewReverseBridge(notnets.ReverseBridgeConfig{Target: tcp.Addr().String()})
	if err != nil {
		log.Fatal(err)
	}
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	go rb.Serve(lis)
	defer rb.Stop()

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "network"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output: Hello network
}
