package notnets

import (
	"context"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec is the notnets-bytes codec: messages as *Bytes, undecoded.
var rawCodec encoding.CodecV2 = bytesCodec{}

// forwardDesc is the description of every forwarded call: a proxy does not
// know a method's kind, and a bidirectional stream carries all four.
var forwardDesc = &grpc.StreamDesc{StreamName: "forward", ClientStreams: true, ServerStreams: true}

// Forward returns a stream handler that forwards every call it is given
// to cc, raw: for UnknownServiceHandler, notnets' or grpc-go's, it makes
// a proxy of services it need not know. cc may be a *ClientConn (into a
// pool) or a *grpc.ClientConn (to the network).
//
// The server must leave messages undecoded: give it the notnets-bytes
// codec with ForceServerCodecV2 (notnets) or grpc.ForceServerCodecV2
// (grpc-go), as encoding.GetCodecV2(BytesCodecName). Each call goes to cc
// under the same method name, with the caller's metadata (less gRPC's
// reserved keys: content-type, user-agent, te, grpc-* of the transport,
// and pseudo-headers), deadline and codec name (the content subtype of
// its content-type, so the server behind cc decodes what the caller
// encoded); cancelling the call cancels the forwarded one. The response
// headers, messages, trailers and status (details included) come back
// the same way. Messages are never decoded: each crosses as a *Bytes,
// without a copy where the transports allow (one in, one out).
func Forward(cc grpc.ClientConnInterface) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error { return forward(ss, cc) }
}

// forward carries the call on ss to cc and back.
func forward(ss grpc.ServerStream, cc grpc.ClientConnInterface) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "notnets: forward: the server stream has no method name")
	}
	in := ss.Context()
	md, _ := metadata.FromIncomingContext(in)
	// The forwarded call lives within the caller's: its deadline, and its
	// cancellation, which cancel below adds to when either side fails.
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(in, forwardedMD(md)))
	defer cancel()
	cs, err := cc.NewStream(ctx, forwardDesc, method,
		grpc.ForceCodecV2(rawCodec), grpc.CallContentSubtype(subtypeOf(md)))
	if err != nil {
		return err
	}

	// Requests go on a goroutine of their own, so that responses flow while
	// the caller still sends (a bidirectional call needs both at once). It
	// may outlive this handler: blocked in RecvMsg when the forwarded call
	// ended first, it returns when the caller's stream ends with the
	// handler (both grpc-go and notnets cancel the stream's context then).
	recvErr := make(chan error, 1) // why the caller's side failed, if it did
	go func() {
		for {
			m := new(Bytes)
			if err := ss.RecvMsg(m); err != nil {
				if err == io.EOF {
					cs.CloseSend()
					return
				}
				// The caller is gone, or its message could not be taken
				// (too large, say): the forwarded call ends, and the
				// caller gets this error rather than the cancellation.
				recvErr <- err
				cancel()
				return
			}
			err := cs.SendMsg(m)
			m.Free() // nothing once sent (the transport or grpc-go has it); the message if the send failed first
			if err != nil {
				return // the forwarded call is over: RecvMsg below says how
			}
		}
	}()

	// Responses, on the handler's goroutine. The headers go first, as soon
	// as they come: a caller may wait for them before any message (a
	// server stream that sends its headers and then waits). A call that
	// ends without headers (an error status alone) sends none here either.
	if h, err := cs.Header(); err == nil && h != nil {
		if err := ss.SendHeader(filterMD(h)); err != nil {
			return err
		}
	}
	for {
		m := new(Bytes)
		if err := cs.RecvMsg(m); err != nil {
			select {
			case e := <-recvErr:
				return e // the forwarded call ended because of it
			default:
			}
			ss.SetTrailer(filterMD(cs.Trailer()))
			if err == io.EOF {
				return nil
			}
			return err
		}
		err := ss.SendMsg(m)
		m.Free()
		if err != nil {
			return err
		}
	}
}

// subtypeOf returns the content subtype a call's content-type names, in
// its incoming metadata: "proto" for plain application/grpc, since the
// forwarded call's codec is forced and would otherwise name itself.
func subtypeOf(md metadata.MD) string {
	ct := ""
	if v := md.Get("content-type"); len(v) > 0 {
		ct = v[0]
	}
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	if ok && len(rest) > 1 && (rest[0] == '+' || rest[0] == ';') {
		return strings.ToLower(rest[1:])
	}
	return "proto"
}

// filterMD returns md without the keys that belong to a transport, not to
// the call: gRPC's reserved headers (those grpc-go's client drops from
// outgoing metadata) and the status trailers. They must not reach the
// other side as metadata, where grpc-go would refuse or duplicate them.
func filterMD(md metadata.MD) metadata.MD {
	out := make(metadata.MD, len(md))
	for k, v := range md {
		if !reservedKey(k) {
			out[k] = v
		}
	}
	return out
}

// forwardedMD is the metadata of a forwarded call: the caller's, less the
// reserved keys; nil for none, which allocates nothing.
func forwardedMD(md metadata.MD) metadata.MD {
	if len(md) == 0 {
		return nil
	}
	return filterMD(md)
}

// reservedKey reports whether k is gRPC's, not the application's.
func reservedKey(k string) bool {
	if strings.HasPrefix(k, ":") {
		return true
	}
	switch k {
	case "content-type", "user-agent", "te",
		"grpc-message-type", "grpc-encoding", "grpc-accept-encoding",
		"grpc-message", "grpc-status", "grpc-status-details-bin", "grpc-timeout":
		return true
	}
	return false
}
