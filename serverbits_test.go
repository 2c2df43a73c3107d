package notnets_test

import (
	"context"
	"fmt"
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
