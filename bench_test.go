package notnets_test

import (
	"context"
	"testing"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// BenchmarkUnaryHelloWorld measures one Greeter call over notnets with the
// server in another process (the paper's helloworld echo).
func BenchmarkUnaryHelloWorld(b *testing.B) {
	srv := startServer(b)
	c := pb.NewGreeterClient(srv.dial(b))
	ctx := context.Background()
	req := &pb.HelloRequest{Name: "world"}
	if _, err := c.SayHello(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.SayHello(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
