package notnets

import (
	"context"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// WithPerRPCCredentials adds credentials whose request metadata (a token,
// say) every call on the connection carries, as grpc.WithPerRPCCredentials
// does. notnets connections count as PrivacyAndIntegrity, so credentials
// that require transport security may be used.
func WithPerRPCCredentials(creds credentials.PerRPCCredentials) DialOption {
	return dialFunc(func(o *dialOptions) { o.perRPC = append(o.perRPC, creds) })
}

// withCredentials returns md with the request metadata of the connection's
// per-RPC credentials and the call's (grpc.PerRPCCredentials) added, as
// grpc-go adds them: keys in lower case, an error that is not a status is
// Unauthenticated, and a status with a code reserved for the control plane
// (gRFC A54) becomes Internal. md itself is not changed.
func (cc *ClientConn) withCredentials(ctx context.Context, t *transport, method string, ci *callInfo, md metadata.MD) (metadata.MD, error) {
	ctx = credentials.NewContextWithRequestInfo(ctx, credentials.RequestInfo{Method: method, AuthInfo: t.server})
	service := method
	if i := strings.LastIndex(method, "/"); i >= 0 {
		service = method[:i]
	}
	audience := "https://" + cc.name + service
	out := md.Copy()
	if out == nil {
		out = metadata.MD{}
	}
	add := func(c credentials.PerRPCCredentials) error {
		data, err := c.GetRequestMetadata(ctx, audience)
		if err != nil {
			if st, ok := status.FromError(err); ok {
				if restrictedCode(st.Code()) {
					return status.Errorf(codes.Internal, "transport: received per-RPC creds error with illegal status: %v", err)
				}
				return err
			}
			return status.Errorf(codes.Unauthenticated, "transport: per-RPC creds failed due to error: %v", err)
		}
		for k, v := range data {
			k = strings.ToLower(k)
			out[k] = append(out[k], v)
		}
		return nil
	}
	for _, c := range cc.opts.perRPC {
		if err := add(c); err != nil {
			return nil, err
		}
	}
	if c := ci.creds; c != nil {
		if c.RequireTransportSecurity() && credentials.CheckSecurityLevel(t.server, credentials.PrivacyAndIntegrity) != nil {
			return nil, status.Error(codes.Unauthenticated, "transport: cannot send secure credentials on an insecure connection")
		}
		if err := add(c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// restrictedCode reports whether c is a code that gRFC A54 keeps for the
// control plane: credentials must not return it.
func restrictedCode(c codes.Code) bool {
	switch c {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted, codes.OutOfRange, codes.DataLoss:
		return true
	}
	return false
}
