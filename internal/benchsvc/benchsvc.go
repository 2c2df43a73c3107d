// Package benchsvc holds the services that `notnets bench` measures: the
// gRPC tutorial's Greeter (protobuf), and a raw echo whose messages are
// their bytes, sent without serialization.
package benchsvc

import (
	"context"

	"google.golang.org/grpc"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// Greeter answers SayHello with "Hello " and the name, as in the gRPC
// tutorial.
type Greeter struct{ pb.UnimplementedGreeterServer }

// SayHello implements pb.GreeterServer.
func (Greeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// RawServiceDesc describes notnets.bench.Raw, whose Echo returns its
// request: a notnets.Bytes message, so a request that arrived in the
// client's heap is copied once, into the server's heap, and handed back
// to the client when the reply has been sent.
var RawServiceDesc = grpc.ServiceDesc{
	ServiceName: "notnets.bench.Raw",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(notnets.Bytes)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}

// RawEchoMethod is the full name of the raw echo method.
const RawEchoMethod = "/notnets.bench.Raw/Echo"

// rawCall is a slice so that passing it allocates nothing per call.
var rawCall = []grpc.CallOption{grpc.CallContentSubtype(notnets.BytesCodecName)}

// RawEcho calls the raw echo on cc with the Bytes codec. It gives in to
// the transport; the caller frees out.
func RawEcho(ctx context.Context, cc grpc.ClientConnInterface, in, out *notnets.Bytes) error {
	return cc.Invoke(ctx, RawEchoMethod, in, out, rawCall...)
}
