// Package benchsvc holds the services that `notnets bench` measures: the
// gRPC tutorial's Greeter (protobuf), and a raw echo whose messages are
// their bytes, sent without serialization.
package benchsvc

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// Greeter answers SayHello with "Hello " and the name, as in the gRPC
// tutorial.
type Greeter struct{ pb.UnimplementedGreeterServer }

// SayHello implements pb.GreeterServer.
func (Greeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// Raw is a message that is its bytes.
type Raw struct{ B []byte }

// RawCodec sends a *Raw as its bytes: no serialization at all.
type RawCodec struct{}

// RawCodecName is the content subtype of RawCodec.
const RawCodecName = "notnets-raw"

func init() { encoding.RegisterCodecV2(RawCodec{}) }

// Name implements encoding.CodecV2.
func (RawCodec) Name() string { return RawCodecName }

// Marshal implements encoding.CodecV2.
func (RawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(*Raw).B)}, nil
}

// Unmarshal implements encoding.CodecV2; it reuses the message's buffer.
func (RawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r := v.(*Raw)
	n := data.Len()
	if cap(r.B) < n {
		r.B = make([]byte, n)
	}
	r.B = r.B[:n]
	data.CopyTo(r.B)
	return nil
}

// RawServiceDesc describes notnets.bench.Raw, whose Echo returns its
// request.
var RawServiceDesc = grpc.ServiceDesc{
	ServiceName: "notnets.bench.Raw",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(Raw)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}

// RawEchoMethod is the full name of the raw echo method.
const RawEchoMethod = "/notnets.bench.Raw/Echo"

// RawEcho calls the raw echo on cc with the raw codec.
func RawEcho(ctx context.Context, cc grpc.ClientConnInterface, in, out *Raw) error {
	return cc.Invoke(ctx, RawEchoMethod, in, out, grpc.ForceCodecV2(RawCodec{}))
}
