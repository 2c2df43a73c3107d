package notnets

import (
	"context"
	"net"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
)

// WithStatsHandler adds a stats handler (OpenTelemetry's otelgrpc, say)
// that sees the connection's calls and connections, as
// grpc.WithStatsHandler does. Several may be added; they run in order.
func WithStatsHandler(h stats.Handler) DialOption {
	return dialFunc(func(o *dialOptions) {
		if h != nil {
			o.stats = append(o.stats, h)
		}
	})
}

// StatsHandler adds a stats handler that sees the server's calls and
// connections, as grpc.StatsHandler does.
func StatsHandler(h stats.Handler) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if h != nil {
			o.stats = append(o.stats, h)
		}
	})
}

// statsHandlers runs a list of stats handlers as one. A nil list is no
// handler: callers test for nil before building an event.
//
// Wire lengths are what the frames carry: the message bytes (notnets
// frames them without grpc's 5-byte prefix, and nothing is compressed),
// and the encoded metadata for headers and trailers.
type statsHandlers []stats.Handler

func (hs statsHandlers) tagRPC(ctx context.Context, method string, failFast bool) context.Context {
	for _, h := range hs {
		ctx = h.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: method, FailFast: failFast})
	}
	return ctx
}

func (hs statsHandlers) handle(ctx context.Context, s stats.RPCStats) {
	for _, h := range hs {
		h.HandleRPC(ctx, s)
	}
}

// connBegin tags a new connection and reports its start; the context it
// returns goes to connEnd.
func (hs statsHandlers) connBegin(ctx context.Context, client bool, remote, local net.Addr) context.Context {
	for _, h := range hs {
		ctx = h.TagConn(ctx, &stats.ConnTagInfo{RemoteAddr: remote, LocalAddr: local})
	}
	for _, h := range hs {
		h.HandleConn(ctx, &stats.ConnBegin{Client: client})
	}
	return ctx
}

func (hs statsHandlers) connEnd(ctx context.Context, client bool) {
	for _, h := range hs {
		h.HandleConn(ctx, &stats.ConnEnd{Client: client})
	}
}

func (hs statsHandlers) outPayload(ctx context.Context, client bool, v any, n int) {
	hs.handle(ctx, &stats.OutPayload{Client: client, Payload: v, Length: n, CompressedLength: n, WireLength: n, SentTime: time.Now()})
}

func (hs statsHandlers) inPayload(ctx context.Context, client bool, v any, n int) {
	hs.handle(ctx, &stats.InPayload{Client: client, Payload: v, Length: n, CompressedLength: n, WireLength: n, RecvTime: time.Now()})
}

// mdWireLength is the size of md as frames carry it, near enough for
// stats: each key and value with a 4-byte length.
func mdWireLength(md metadata.MD) int {
	n := 0
	for k, vs := range md {
		for _, v := range vs {
			n += 8 + len(k) + len(v)
		}
	}
	return n
}
