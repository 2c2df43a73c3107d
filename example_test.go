package notnets_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// exampleGreeter is the Greeter of the gRPC tutorial.
type exampleGreeter struct{ pb.UnimplementedGreeterServer }

func (exampleGreeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// A Greeter server and client. The generated code is grpc-go's, unchanged:
// the server registers on a *notnets.Server and the client calls through a
// *notnets.ClientConn. They would usually be two processes; here they are
// one.
func Example() {
	// A pool directory of this example's own; programs usually keep the
	// default ($NOTNETS_POOL, else /dev/shm/notnets-<uid>).
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Server.
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	go srv.Serve(lis)
	defer srv.Stop()

	// Client.
	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "world"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output: Hello world
}

// Dial connects at once: with no listener of that name in the pool it
// fails with Unavailable rather than returning a connection that waits.
func ExampleDial() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	_, err = notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	fmt.Println("no listener:", status.Code(err))

	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	go srv.Serve(lis)
	defer srv.Stop()

	cc, err := notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	fmt.Println("listening:", cc.GetState())
	// Output:
	// no listener: Unavailable
	// listening: READY
}

// A server-streaming call: grpc-go's health service, registered on a
// notnets server, streams a service's status to a client that watches it.
func Example_serverStreaming() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	lis, err := notnets.Listen("health", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus("greeter", healthpb.HealthCheckResponse_NOT_SERVING)
	srv := notnets.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)
	defer srv.Stop()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cc, err := notnets.Dial(ctx, "health", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	stream, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: "greeter"})
	if err != nil {
		log.Fatal(err)
	}
	r, err := stream.Recv() // the status when the watch began
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetStatus())

	hs.SetServingStatus("greeter", healthpb.HealthCheckResponse_SERVING)
	r, err = stream.Recv() // the server streams the change
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetStatus())
	// Output:
	// NOT_SERVING
	// SERVING
}

// rawService is a hand-written service whose Upper method takes and
// returns *notnets.Bytes: called with the notnets-bytes codec, its
// messages are never serialized.
var rawService = grpc.ServiceDesc{
	ServiceName: "example.Raw",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Upper",
		Handler: func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(notnets.Bytes)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return upper(ctx, in)
			}
			info := &grpc.UnaryServerInfo{FullMethod: "/example.Raw/Upper"}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return upper(ctx, req.(*notnets.Bytes))
			})
		},
	}},
}

// upper returns in upper-cased. It reads the request where the client
// wrote it, in the client's heap, and writes the reply in its own heap.
func upper(ctx context.Context, in *notnets.Bytes) (*notnets.Bytes, error) {
	defer in.Free() // the request's memory goes back to the client
	out := notnets.Alloc(ctx, in.Len())
	for i, c := range in.Data() {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		out.Data()[i] = c
	}
	return out, nil // sending gives out to the transport
}

// Sending and receiving raw bytes without serialization or copies: the
// request is built in the connection's heap (Alloc), and the reply is
// read where the server wrote it, until Free.
func ExampleClientConn_Alloc() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	lis, err := notnets.Listen("raw", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	srv.RegisterService(&rawService, nil)
	go srv.Serve(lis)
	defer srv.Stop()

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "raw", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	// 64 KiB, above ArenaThreshold: the request lies in the client's heap.
	in := cc.Alloc(64 << 10)
	data := in.Data() // writable until in is sent
	for i := range data {
		data[i] = "hello "[i%6]
	}
	var out notnets.Bytes
	err = cc.Invoke(ctx, "/example.Raw/Upper", in, &out, grpc.CallContentSubtype(notnets.BytesCodecName))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("sent, and now empty:", in.Len())
	fmt.Printf("reply: %d bytes, %q...\n", out.Len(), out.Data()[:11])
	out.Free() // required: hands the reply's memory back to the server
	// Output:
	// sent, and now empty: 0
	// reply: 65536 bytes, "HELLO HELLO"...
}

// A server that only its own user may call. The handler finds who called
// in the peer's AuthInfo, and the client learns who serves it with
// grpc.Peer.
func ExampleAllowUIDs() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	me := uint32(os.Geteuid())

	lis, err := notnets.Listen("private", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer(notnets.AllowUIDs(me))
	pb.RegisterGreeterServer(srv, whoIsCalling{})
	go srv.Serve(lis)
	defer srv.Stop()

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "private", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	var p peer.Peer
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{}, grpc.Peer(&p))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("server:", r.GetMessage())
	server := p.AuthInfo.(notnets.AuthInfo)
	fmt.Println("client: server runs as me:", server.UID == me)
	fmt.Println("refused calls:", srv.RefusedCalls())
	// Output:
	// server: caller runs as me: true, pid verified: true
	// client: server runs as me: true
	// refused calls: 0
}

// whoIsCalling answers with what the server knows of its caller.
type whoIsCalling struct{ pb.UnimplementedGreeterServer }

func (whoIsCalling) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	p, _ := peer.FromContext(ctx)
	a := p.AuthInfo.(notnets.AuthInfo)
	msg := fmt.Sprintf("caller runs as me: %v, pid verified: %v", a.UID == uint32(os.Geteuid()), a.PIDVerified)
	return &pb.HelloReply{Message: msg}, nil
}

// An authorizer decides once per connection whether its calls may run.
// This one lets only the parent process call, so this process is refused:
// its calls end with PermissionDenied before any interceptor or handler
// runs.
func ExampleWithAuthorizer() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	lis, err := notnets.Listen("parent-only", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	parent := os.Getppid()
	srv := notnets.NewServer(notnets.WithAuthorizer(func(a notnets.AuthInfo) error {
		if a.PIDVerified && a.PID == parent {
			return nil
		}
		return fmt.Errorf("pid %d is not the parent", a.PID)
	}))
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	go srv.Serve(lis)
	defer srv.Stop()

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "parent-only", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	_, err = pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "world"})
	fmt.Println(status.Code(err))
	fmt.Println("refused calls:", srv.RefusedCalls())
	// Output:
	// PermissionDenied
	// refused calls: 1
}

// ExampleNewClient creates a client before its server exists, from the
// address string a service already has: the call waits for the server.
func ExampleNewClient() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	cc, err := notnets.NewClient("dns:///greeter:50051", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	go srv.Serve(lis)
	defer srv.Stop()
	cc.ResetConnectBackoff() // connect now rather than after the backoff

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "world"}, grpc.WaitForReady(true))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output: Hello world
}

// pathGreeter greets its caller with the network its call came over.
type pathGreeter struct{ pb.UnimplementedGreeterServer }

func (pathGreeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	p, _ := peer.FromContext(ctx)
	return &pb.HelloReply{Message: "Hello " + in.GetName() + " over " + p.Addr.Network()}, nil
}

// One registration serves clients in the pool and grpc-go clients over
// HTTP/2 alike: Serve on a notnets Listener, ServeGRPC on a net.Listener
// (TLS with notnets.WithGRPCServerOptions(grpc.Creds(...))). The handler
// tells the paths apart by its peer's address.
func ExampleServer_ServeGRPC() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, pathGreeter{})
	go srv.Serve(lis)
	go srv.ServeGRPC(tcp)
	defer srv.Stop() // stops both

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	gc, err := grpc.NewClient(tcp.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer gc.Close()
	for _, conn := range []grpc.ClientConnInterface{cc, gc} {
		r, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "world"})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(r.GetMessage())
	}
	// Output:
	// Hello world over notnets
	// Hello world over tcp
}

// Two instances of one service, and a client that takes them in turn.
// Each Listen of a name starts another instance; they are usually server
// processes of their own, here two listeners of one server. The client
// sees each instance it is connected to in its calls' peer address.
func ExampleWithBalancing() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	defer srv.Stop()
	for range 2 {
		lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
		if err != nil {
			log.Fatal(err)
		}
		go srv.Serve(lis)
	}

	cc, err := notnets.NewClient("greeter", notnets.WithPool(dir), notnets.WithBalancing(notnets.RoundRobin))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	c := pb.NewGreeterClient(cc)
	// Calls go to the instances connected so far: the second connects
	// within a wake-up of the first, and from then on they alternate.
	calls := map[string]int{}
	for i := 0; i < 10000 && len(calls) < 2; i++ {
		var p peer.Peer
		if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "world"}, grpc.Peer(&p)); err != nil {
			log.Fatal(err)
		}
		calls[p.Addr.(*notnets.Addr).Instance]++
	}
	fmt.Println("instances that served calls:", len(calls))
	// Output: instances that served calls: 2
}

// A client of a service that may not be in the pool: while no instance of
// "greeter" is, its calls go over gRPC on the network (here a grpc-go
// server on loopback TCP); once one is, they go through the pool.
func ExampleWithFallback() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	remote := grpc.NewServer()
	pb.RegisterGreeterServer(remote, exampleGreeter{})
	go remote.Serve(tcp)
	defer remote.Stop()

	cc, err := notnets.NewClient("greeter", notnets.WithPool(dir),
		notnets.WithFallback(tcp.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	c := pb.NewGreeterClient(cc)
	ctx := context.Background()
	var p peer.Peer
	if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "world"}, grpc.Peer(&p)); err != nil {
		log.Fatal(err)
	}
	fmt.Println("no instance in the pool: over", p.Addr.Network())

	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, exampleGreeter{})
	go srv.Serve(lis)
	defer srv.Stop()
	for p.Addr.Network() != "notnets" { // the client sees the instance within a wake-up
		if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "world"}, grpc.Peer(&p)); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("an instance in the pool: over", p.Addr.Network())
	// Output:
	// no instance in the pool: over tcp
	// an instance in the pool: over notnets
}

// The drop-in tier: an unchanged grpc.Server serves on a notnets
// listener, and grpc-go's own client reaches it through shared memory
// with one dial option. Everything grpc-go offers works (its
// *grpc.ClientConn, service config, keepalive, channelz), at HTTP/2's
// cost; the native tier (Listen, NewServer, Dial) skips HTTP/2 for less.
func ExampleListenConn() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Server: a grpc.Server, served on a notnets listener instead of TCP.
	lis, err := notnets.ListenConn("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterGreeterServer(gs, exampleGreeter{})
	go gs.Serve(lis)
	defer gs.Stop()

	// Client: grpc-go's *grpc.ClientConn; the dialer finds "greeter" in
	// the pool.
	cc, err := grpc.NewClient("passthrough:///greeter",
		grpc.WithContextDialer(notnets.ContextDialer(notnets.WithPool(dir))),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	var p peer.Peer
	r, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{Name: "world"}, grpc.Peer(&p))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage(), "over", p.Addr.Network())
	// Output: Hello world over notnets
}
