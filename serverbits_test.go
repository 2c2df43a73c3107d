package notnets_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
)

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
