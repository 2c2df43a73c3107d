package notnets

import (
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/transport"
)

// grpcProto is gRPC's registered protobuf codec, the default.
var grpcProto = encoding.GetCodecV2(protocodec.Name)

// prepareMsg sizes or marshals v with codec and checks it against maxSend.
// A Bytes goes to the transport whatever the codec; with the Bytes codec
// its bytes are the payload, sent without a copy when they lie in the
// connection's heap.
func prepareMsg(codec encoding.CodecV2, v any, maxSend int) (transport.OutMsg, error) {
	if b, ok := v.(*Bytes); ok && b != nil {
		if codec.Name() == BytesCodecName {
			return transport.PrepareRaw(v, b.b, &b.blk, b, maxSend)
		}
		return transport.PrepareMsg(codec, v, maxSend, b)
	}
	return transport.PrepareMsg(codec, v, maxSend, nil)
}

func contextStatus(err error) error { return status.FromContextError(err).Err() }
