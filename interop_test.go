package notnets_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/notnets/notnets"
)

// interopCases are grpc-go's interop test cases, from
// google.golang.org/grpc/interop. Each runs in a client process of its own,
// since the helpers exit the process on failure.
var interopCases = map[string]func(context.Context, *notnets.ClientConn){
	"empty_unary":                 func(ctx context.Context, cc *notnets.ClientConn) { interop.DoEmptyUnaryCall(ctx, tc(cc)) },
	"large_unary":                 func(ctx context.Context, cc *notnets.ClientConn) { interop.DoLargeUnaryCall(ctx, tc(cc)) },
	"client_streaming":            func(ctx context.Context, cc *notnets.ClientConn) { interop.DoClientStreaming(ctx, tc(cc)) },
	"server_streaming":            func(ctx context.Context, cc *notnets.ClientConn) { interop.DoServerStreaming(ctx, tc(cc)) },
	"ping_pong":                   func(ctx context.Context, cc *notnets.ClientConn) { interop.DoPingPong(ctx, tc(cc)) },
	"empty_stream":                func(ctx context.Context, cc *notnets.ClientConn) { interop.DoEmptyStream(ctx, tc(cc)) },
	"timeout_on_sleeping_server":  func(ctx context.Context, cc *notnets.ClientConn) { interop.DoTimeoutOnSleepingServer(ctx, tc(cc)) },
	"cancel_after_begin":          func(ctx context.Context, cc *notnets.ClientConn) { interop.DoCancelAfterBegin(ctx, tc(cc)) },
	"cancel_after_first_response": func(ctx context.Context, cc *notnets.ClientConn) { interop.DoCancelAfterFirstResponse(ctx, tc(cc)) },
	"custom_metadata":             func(ctx context.Context, cc *notnets.ClientConn) { interop.DoCustomMetadata(ctx, tc(cc)) },
	"status_code_and_message":     func(ctx context.Context, cc *notnets.ClientConn) { interop.DoStatusCodeAndMessage(ctx, tc(cc)) },
	"special_status_message":      func(ctx context.Context, cc *notnets.ClientConn) { interop.DoSpecialStatusMessage(ctx, tc(cc)) },
	"unimplemented_method":        doUnimplementedMethod,
	"unimplemented_service": func(ctx context.Context, cc *notnets.ClientConn) {
		interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(cc))
	},
}

func tc(cc *notnets.ClientConn) testgrpc.TestServiceClient { return testgrpc.NewTestServiceClient(cc) }

// doUnimplementedMethod is interop.DoUnimplementedMethod, whose signature
// takes a *grpc.ClientConn, written against grpc.ClientConnInterface.
func doUnimplementedMethod(ctx context.Context, cc *notnets.ClientConn) {
	var req, reply proto.Message
	err := cc.Invoke(ctx, "/grpc.testing.TestService/UnimplementedCall", req, reply)
	if status.Code(err) != codes.Unimplemented {
		fmt.Fprintf(os.Stderr, "Invoke(UnimplementedCall) = %v, want code %v\n", err, codes.Unimplemented)
		os.Exit(1)
	}
}

// runInteropCase is the client process of one interop case.
func runInteropCase(name string) int {
	do := interopCases[name]
	if do == nil {
		fmt.Fprintf(os.Stderr, "unknown interop case %q\n", name)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var opts []notnets.DialOption
	for _, o := range idleFromEnv() {
		opts = append(opts, o)
	}
	cc, err := notnets.Dial(ctx, listenName, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		return 1
	}
	defer cc.Close()
	do(ctx, cc)
	return 0
}

// TestInterop runs grpc-go's interop cases with the server and each client
// in processes of their own, talking only through the pool.
func TestInterop(t *testing.T) {
	srv := startServer(t)
	for name := range interopCases {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), roleEnv+"=interop-client", caseEnv+"="+name, "NOTNETS_POOL="+srv.pool)
			if asHosts() {
				asHost(t, cmd, "client-"+strings.ReplaceAll(name, "_", "-")) // a host of its own too
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("interop case %s failed: %v\n%s", name, err, out)
			}
		})
	}
}
