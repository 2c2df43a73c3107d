package notnets_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// exampleConn serves g on a listener "greeter" in a pool of its own and
// returns a client of it with opts, and what stops both.
func exampleConn(g pb.GreeterServer, sopts []notnets.ServerOption, opts ...notnets.DialOption) (pb.GreeterClient, func()) {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer(sopts...)
	pb.RegisterGreeterServer(srv, g)
	go srv.Serve(lis)
	cc, err := notnets.Dial(context.Background(), "greeter", append(opts, notnets.WithPool(dir))...)
	if err != nil {
		log.Fatal(err)
	}
	return pb.NewGreeterClient(cc), func() { cc.Close(); srv.Stop(); os.RemoveAll(dir) }
}

// metadataGreeter answers with what its handler finds in the incoming
// metadata.
type metadataGreeter struct{ pb.UnimplementedGreeterServer }

func (metadataGreeter) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	ua := md.Get("user-agent")[0]
	return &pb.HelloReply{Message: fmt.Sprintf(":authority %s\ncontent-type %s\nuser-agent %s...",
		md.Get(":authority")[0], md.Get("content-type")[0], ua[:strings.Index(ua, "/1.")])}, nil
}

// Handlers find :authority, content-type and user-agent in their incoming
// metadata, as grpc-go's server adds them: the service name, the content
// type of the call's codec, and the client's user agent, which
// WithUserAgent begins (it goes on with grpc-go's and notnets' versions).
func ExampleWithUserAgent() {
	c, stop := exampleConn(metadataGreeter{}, nil, notnets.WithUserAgent("inventory/2.1"))
	defer stop()
	r, err := c.SayHello(context.Background(), &pb.HelloRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output:
	// :authority greeter
	// content-type application/grpc
	// user-agent inventory/2.1 grpc-go...
}

// compressionGreeter asks what compression the call may use.
type compressionGreeter struct{ pb.UnimplementedGreeterServer }

func (compressionGreeter) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	cs, _ := notnets.ClientSupportedCompressors(ctx)
	return &pb.HelloReply{Message: fmt.Sprintf("client advertises %q\nidentity: %v\ngzip: %v",
		cs, notnets.SetSendCompressor(ctx, "identity"), notnets.SetSendCompressor(ctx, "gzip"))}, nil
}

// Over notnets nothing is compressed: a handler's compressor queries get
// grpc-go's answers for a client that advertises no compressor.
// notnets.SetSendCompressor and ClientSupportedCompressors work for calls
// over notnets and over ServeGRPC; grpc-go's functions of the same names
// work only for grpc-go's own transport.
func ExampleSetSendCompressor() {
	c, stop := exampleConn(compressionGreeter{}, nil)
	defer stop()
	r, err := c.SayHello(context.Background(), &pb.HelloRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetMessage())
	// Output:
	// client advertises [""]
	// identity: <nil>
	// gzip: unable to set send compressor: compressor not registered "gzip"
}

// Metadata may be as large as the receiver's header list limit, 16 MiB
// by default as in grpc-go; a server sets its own, which its clients learn
// when they connect, and a call with more fails at the client, sending
// nothing.
func ExampleMaxHeaderListSize() {
	c, stop := exampleConn(exampleGreeter{}, []notnets.ServerOption{notnets.MaxHeaderListSize(64 << 10)})
	defer stop()
	for _, n := range []int{60 << 10, 70 << 10} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-big", strings.Repeat("x", n))
		_, err := c.SayHello(ctx, &pb.HelloRequest{Name: "big"})
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%d KiB: %v %s", n>>10, status.Code(err), status.Convert(err).Message())))
	}
	// Output:
	// 60 KiB: OK
	// 70 KiB: Internal header list size to send violates the maximum size (65536 bytes) set by server
}
