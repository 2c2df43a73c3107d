package channelz_test

import (
	"context"
	"fmt"
	"log"
	"os"

	channelzgrpc "google.golang.org/grpc/channelz/grpc_channelz_v1"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/channelz"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// A notnets server that serves channelz: where a program registered
// grpc-go's channelz service, it registers this package's instead, and
// channelz clients see the notnets server, its calls and its connections
// beside grpc-go's entities.
func ExampleRegisterChannelzServiceToServer() {
	dir, err := os.MkdirTemp("", "notnets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	lis, err := notnets.Listen("greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, &greeter{})
	channelz.RegisterChannelzServiceToServer(srv)
	go srv.Serve(lis)
	defer srv.Stop()

	ctx := context.Background()
	cc, err := notnets.Dial(ctx, "greeter", notnets.WithPool(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "world"})
	pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "fail"})

	r, err := channelzgrpc.NewChannelzClient(cc).GetServers(ctx, &channelzpb.GetServersRequest{})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range r.GetServer() {
		d := s.GetData() // GetServers itself is a call, started and not yet ended
		fmt.Printf("%s: %d calls started, %d succeeded, %d failed\n", s.GetRef().GetName(), d.GetCallsStarted(), d.GetCallsSucceeded(), d.GetCallsFailed())
	}
	// Output: notnets: 3 calls started, 1 succeeded, 1 failed
}
