package notnets_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
)

// sendHeaderErr is the error of the last SendHeader that failed in a
// big-md call, in the server process.
var sendHeaderErr atomic.Value

// serverBitsMode answers the semantics service's modes of this file, in
// the server process.
func serverBitsMode(ctx context.Context, mode string, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	switch mode {
	case "compressors":
		// One line per question, as the handler saw the answers.
		var lines []string
		say := func(what string, v any) { lines = append(lines, fmt.Sprintf("%s: %v", what, v)) }
		say("grpc.SetSendCompressor", grpc.SetSendCompressor(ctx, "identity"))
		cs, err := notnets.ClientSupportedCompressors(ctx)
		say("supported", fmt.Sprintf("%q %v", cs, err))
		say("identity", notnets.SetSendCompressor(ctx, "identity"))
		say("gzip", notnets.SetSendCompressor(ctx, "gzip"))
		if err := grpc.SendHeader(ctx, metadata.MD{}); err != nil {
			return nil, err
		}
		say("identity after SendHeader", notnets.SetSendCompressor(ctx, "identity"))
		return body(strings.Join(lines, "\n")), nil
	case "big-md":
		// The request's x-big value was as long as the client says; the
		// response headers and trailers carry values of the lengths it
		// asks for in x-h and x-t.
		if got, want := len(mdValue(ctx, "x-big")), mdValue(ctx, "x-big-len"); fmt.Sprint(got) != want {
			return nil, status.Errorf(codes.DataLoss, "request metadata x-big of %d bytes, the client sent %s", got, want)
		}
		var h, t int
		fmt.Sscan(mdValue(ctx, "x-h"), &h)
		fmt.Sscan(mdValue(ctx, "x-t"), &t)
		if h > 0 {
			if err := grpc.SetHeader(ctx, metadata.Pairs("x-big-h", strings.Repeat("h", h))); err != nil {
				return nil, err
			}
		}
		if mdValue(ctx, "x-send-header") != "" {
			if err := grpc.SendHeader(ctx, nil); err != nil {
				sendHeaderErr.Store(err.Error()) // for send-header-error
				return nil, err
			}
		}
		if t > 0 {
			if err := grpc.SetTrailer(ctx, metadata.Pairs("x-big-t", strings.Repeat("t", t))); err != nil {
				return nil, err
			}
		}
		return &testpb.SimpleResponse{}, nil
	case "send-header-error":
		err, _ := sendHeaderErr.Load().(string)
		return body(err), nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "unknown x-mode %q", mode)
}

// TestCompressorQueries: in a handler, notnets.ClientSupportedCompressors
// and notnets.SetSendCompressor answer as grpc-go's do for a client that
// advertises no compressor, over notnets (server in another process) and
// over ServeGRPC; grpc-go's own functions fail over notnets, which the
// functions' doc says.
func TestCompressorQueries(t *testing.T) {
	srv := startServer(t, grpcEnv(t))
	overNotnets := strings.Join([]string{
		`grpc.SetSendCompressor: failed to fetch the stream from the given context`,
		`supported: [""] <nil>`,
		`identity: <nil>`,
		`gzip: unable to set send compressor: compressor not registered "gzip"`,
		`identity after SendHeader: transport: set send compressor called after headers sent or stream done`,
	}, "\n")
	// Over HTTP/2 the same functions hand the call to grpc-go's, which
	// give the same answers (the test binary registers no compressor,
	// so its grpc-go client advertises none).
	overGRPC := strings.Replace(overNotnets, "failed to fetch the stream from the given context", "<nil>", 1)
	for _, tc := range []struct {
		name string
		cc   grpc.ClientConnInterface
		want string
	}{
		{"notnets", srv.dial(t), overNotnets},
		{"ServeGRPC", grpcClient(t, srv.grpcAddr(t), insecure.NewCredentials()), overGRPC},
	} {
		r, err := semanticsClient(tc.cc).UnaryCall(withMode(context.Background(), "compressors", "c"), &testpb.SimpleRequest{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := string(r.GetPayload().GetBody()); got != tc.want {
			t.Errorf("%s: the handler saw\n%s\nwant\n%s", tc.name, got, tc.want)
		}
	}
}

// EmptyCall reports, in its trailers, the incoming metadata the handler
// saw (its keys, and the values of :authority, content-type and
// user-agent), then changes its copy of it: the next calls must not see
// the change (the connection shares the map of calls without metadata).
func (s *semantics) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no incoming metadata")
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	grpc.SetTrailer(ctx, metadata.Pairs(
		"x-keys", strings.Join(keys, ","),
		"x-authority", strings.Join(md[":authority"], ","),
		"x-content-type", strings.Join(md["content-type"], ","),
		"x-user-agent", strings.Join(md["user-agent"], ","),
	))
	md[":authority"][0] = "changed"
	md["user-agent"] = append(md["user-agent"], "changed")
	md.Set("content-type", "changed")
	md.Set("x-added", "changed")
	return &testpb.Empty{}, nil
}

// TestIncomingMetadataLikeGRPC: handlers find :authority (the service
// name), content-type (application/grpc, or +subtype) and user-agent
// (WithUserAgent's before grpc-go's and notnets' versions) in their
// incoming metadata, as grpc-go's server adds them, with or without
// metadata of the client's, which cannot spoof them; a handler that
// changes its copy changes nothing for later calls. Server in another
// process.
func TestIncomingMetadataLikeGRPC(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t, notnets.WithUserAgent("myapp/1.0")))
	ua := "myapp/1.0 grpc-go/" + grpc.Version + " notnets/" + notnets.Version
	for i, tc := range []struct {
		md      metadata.MD
		subtype string
		keys    string
		ctype   string
	}{
		{nil, "", ":authority,content-type,user-agent", "application/grpc"},
		{metadata.Pairs("x-a", "1", "user-agent", "spoof", ":authority", "spoof"), "tagged", ":authority,content-type,user-agent,x-a", "application/grpc+tagged"},
		{nil, "tagged", ":authority,content-type,user-agent", "application/grpc+tagged"},
		{nil, "", ":authority,content-type,user-agent", "application/grpc"},
		{metadata.Pairs("x-b", "2"), "", ":authority,content-type,user-agent,x-b", "application/grpc"},
		{nil, "", ":authority,content-type,user-agent", "application/grpc"},
	} {
		ctx := metadata.NewOutgoingContext(context.Background(), tc.md)
		var trailer metadata.MD
		opts := []grpc.CallOption{grpc.Trailer(&trailer)}
		if tc.subtype != "" {
			opts = append(opts, grpc.CallContentSubtype(tc.subtype))
		}
		if _, err := c.EmptyCall(ctx, &testpb.Empty{}, opts...); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		got := fmt.Sprint(trailer["x-keys"], trailer["x-authority"], trailer["x-content-type"], trailer["x-user-agent"])
		want := fmt.Sprint([]string{tc.keys}, []string{listenName}, []string{tc.ctype}, []string{ua})
		if got != want {
			t.Errorf("call %d (metadata %v, subtype %q): the handler saw %s, want %s", i, tc.md, tc.subtype, got, want)
		}
	}
}

// TestUserAgentLimit: a user agent too long for the connection header
// is refused when the ClientConn is made, saying why.
func TestUserAgentLimit(t *testing.T) {
	_, err := notnets.NewClient("svc", notnets.WithPool(testPool(t)), notnets.WithUserAgent(strings.Repeat("u", 1000)))
	if err == nil || !strings.Contains(err.Error(), "user agent of") {
		t.Errorf("NewClient with a 1000-byte WithUserAgent = %v, want an error about the user agent's length", err)
	}
}

// bigMDCall calls the server with a value of n bytes in the request
// metadata and asks for a value of h bytes in the response headers and
// one of t bytes in the trailers; it returns the lengths of those
// received and the call's error.
func bigMDCall(c testgrpc.TestServiceClient, n, h, t int, extra ...string) (int, int, error) {
	ctx := metadata.AppendToOutgoingContext(withMode(context.Background(), "big-md", "b"),
		append([]string{"x-big", strings.Repeat("r", n), "x-big-len", fmt.Sprint(n), "x-h", fmt.Sprint(h), "x-t", fmt.Sprint(t)}, extra...)...)
	var header, trailer metadata.MD
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
	return len(strings.Join(header["x-big-h"], "")), len(strings.Join(trailer["x-big-t"], "")), err
}

// TestLargeMetadataCrosses: 4 MiB of metadata in the request headers, the
// response headers and the trailers of one call cross, with the server in
// another process, through rings of 1 MiB (blocks in 8 fragments) and 64
// KiB (128 fragments), and with the heaps off; grpc-go allows 16 MiB by
// default (PROTOCOL.md 9.9, 11.11).
func TestLargeMetadataCrosses(t *testing.T) {
	srv := startServer(t)
	const size = 4 << 20
	for _, tc := range []struct {
		name string
		opts []notnets.DialOption
	}{
		{"1 MiB rings", nil},
		{"64 KiB rings, no heap", []notnets.DialOption{notnets.WithRingSize(64 << 10), notnets.WithArenaSize(0)}},
	} {
		c := semanticsClient(srv.dial(t, tc.opts...))
		h, tr, err := bigMDCall(c, size, size, size)
		if err != nil || h != size || tr != size {
			t.Errorf("%s: call with 4 MiB of metadata each way = %v, headers %d bytes, trailers %d, want success and %d each", tc.name, err, h, tr, size)
		}
		// Small calls go on on the same connection, between big ones.
		if _, _, err := bigMDCall(c, 10, 10, 10); err != nil {
			t.Errorf("%s: small call after the big one: %v", tc.name, err)
		}
	}
}

// TestMetadataOverTheLimit: metadata over the receiver's announced limit
// fails the call as grpc-go's does (Internal; grpc-go's message for a
// request over the server's limit, and the handler's error for response
// headers over the client's), sends nothing over the limit, and leaves
// the connection working. Server in another process.
func TestMetadataOverTheLimit(t *testing.T) {
	srv := startServer(t, "NOTNETS_TEST_MAXHEADER=65536")
	c := semanticsClient(srv.dial(t, notnets.WithMaxHeaderListSize(32<<10)))
	for _, tc := range []struct {
		name    string
		n, h, t int
		extra   []string
		want    string // a regular expression
	}{
		{"request over the server's 64 KiB", 100 << 10, 0, 0, nil, `^header list size to send violates the maximum size \(65536 bytes\) set by server$`},
		{"response headers over the client's 32 KiB", 10, 40 << 10, 0, nil, `^notnets: response headers of \d+ bytes exceed the client's header list limit of 32768 bytes$`},
		// The handler gets grpc-go's error from SendHeader and returns it;
		// the client has the stream's end already.
		{"response headers sent by the handler", 10, 40 << 10, 0, []string{"x-send-header", "1"}, `^notnets: response headers of \d+ bytes exceed the client's header list limit of 32768 bytes$`},
		{"trailers over the client's 32 KiB", 10, 0, 40 << 10, nil, `^notnets: response trailers of \d+ bytes exceed the client's header list limit of 32768 bytes$`},
	} {
		_, _, err := bigMDCall(c, tc.n, tc.h, tc.t, tc.extra...)
		if st := status.Convert(err); st.Code() != codes.Internal || !regexp.MustCompile(tc.want).MatchString(st.Message()) {
			t.Errorf("%s: %v, want Internal: %s", tc.name, err, tc.want)
		}
		if h, tr, err := bigMDCall(c, 20<<10, 20<<10, 20<<10); err != nil || h != 20<<10 || tr != 20<<10 {
			t.Errorf("after %s: a call within both limits = %v (headers %d, trailers %d bytes)", tc.name, err, h, tr)
		}
	}
	// The handler's SendHeader got grpc-go's error for headers over the
	// client's limit.
	r, err := c.UnaryCall(withMode(context.Background(), "send-header-error", "e"), &testpb.SimpleRequest{})
	if want := "rpc error: code = Internal desc = transport: trying to send header list size larger than the limit set by peer"; err != nil || string(r.GetPayload().GetBody()) != want {
		t.Errorf("the handler's SendHeader failed with %q (%v), want %q", r.GetPayload().GetBody(), err, want)
	}
}

// TestMetadataDefaultLimit: without MaxHeaderListSize a server accepts
// 16 MiB of request headers, grpc-go's default, and a call with more fails
// at the client with grpc-go's message. Server in another process.
func TestMetadataDefaultLimit(t *testing.T) {
	srv := startServer(t)
	c := semanticsClient(srv.dial(t))
	_, _, err := bigMDCall(c, 16<<20+1, 0, 0)
	want := "header list size to send violates the maximum size (16777216 bytes) set by server"
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != want {
		t.Errorf("request with 16 MiB + 1 byte of metadata = %v, want Internal: %s", err, want)
	}
	if _, _, err := bigMDCall(c, 16<<20-200, 0, 0); err != nil {
		t.Errorf("request with 16 MiB less 200 bytes of metadata: %v", err)
	}
}
