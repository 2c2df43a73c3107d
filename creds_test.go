package notnets_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	notnets "github.com/notnets/notnets"
)

// tokenCreds is a per-RPC credential that checks what grpc-go gives one,
// as credentials/oauth does: the call's method and a transport that offers
// privacy and integrity. It adds its metadata (keys in mixed case: they go
// out in lower case) or fails with err.
type tokenCreds struct {
	md  map[string]string
	err error
}

func (c tokenCreds) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	ri, ok := credentials.RequestInfoFromContext(ctx)
	if !ok || ri.Method == "" {
		return nil, errors.New("no request info in the context")
	}
	if err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity); err != nil {
		return nil, err
	}
	if want := "https://test/" + "notnets.test.Semantics"; len(uri) != 1 || uri[0] != want {
		return nil, fmt.Errorf("audience %q, want %q", uri, want)
	}
	return c.md, c.err
}

func (tokenCreds) RequireTransportSecurity() bool { return true }

// TestPerRPCCredentials sends calls with credentials from the dial option
// and from the call option, to a server in another process that echoes the
// metadata it got, and checks how credential errors become statuses.
func TestPerRPCCredentials(t *testing.T) {
	srv := startServer(t)
	conn := tokenCreds{md: map[string]string{"X-Echo-Conn": "c"}}
	tests := []struct {
		name     string
		call     tokenCreds
		wantCode codes.Code
		wantMD   map[string]string
	}{
		{"both", tokenCreds{md: map[string]string{"X-Echo-Call": "k"}}, codes.OK, map[string]string{"x-echo-conn": "c", "x-echo-call": "k"}},
		{"plain error", tokenCreds{err: errors.New("no token")}, codes.Internal, nil}, // Unauthenticated only from the connection's credentials, as in grpc-go
		{"status error", tokenCreds{err: status.Error(codes.PermissionDenied, "revoked")}, codes.PermissionDenied, nil},
		{"control-plane code", tokenCreds{err: status.Error(codes.NotFound, "gone")}, codes.Internal, nil},
	}
	cc := srv.dial(t, notnets.WithPerRPCCredentials(conn))
	c := semanticsClient(cc)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr metadata.MD
			ctx := metadata.AppendToOutgoingContext(withMode(context.Background(), "echo", "1"), "x-echo-own", "o")
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.PerRPCCredentials(tc.call), grpc.Header(&hdr))
			if status.Code(err) != tc.wantCode {
				t.Fatalf("call ended with %v, want %v", err, tc.wantCode)
			}
			for k, v := range tc.wantMD {
				if got := hdr.Get(k); len(got) != 1 || got[0] != v {
					t.Errorf("server got %s = %q, want %q", k, got, v)
				}
			}
			if tc.wantCode == codes.OK && len(hdr.Get("x-echo-own")) != 1 {
				t.Errorf("the call's own metadata was lost: %v", hdr)
			}
		})
	}
	// The caller's metadata is not changed by the credentials added to it.
	md := metadata.Pairs("x-mode", "echo", "x-id", "2")
	if _, err := c.UnaryCall(metadata.NewOutgoingContext(context.Background(), md), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if len(md) != 2 {
		t.Errorf("the caller's metadata changed: %v", md)
	}
	// Without a dial-level credential, a call's own works alone.
	plain := semanticsClient(srv.dial(t))
	var hdr metadata.MD
	if _, err := plain.UnaryCall(withMode(context.Background(), "echo", "3"), &testpb.SimpleRequest{}, grpc.PerRPCCredentials(tokenCreds{md: map[string]string{"x-echo-only": "1"}}), grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if len(hdr.Get("x-echo-only")) != 1 || len(hdr.Get("x-echo-conn")) != 0 {
		t.Errorf("headers %v, want x-echo-only alone", hdr)
	}
}
