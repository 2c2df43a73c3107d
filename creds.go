package notnets

import (
	"context"
	"fmt"
	"strings"

	"github.com/notnets/notnets/internal/transport"
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

// withCredentials returns the request metadata of a call: the connection's
// per-RPC credentials' (a later one's value wins for a key both give), then
// the call's (grpc.PerRPCCredentials), then md, the context's. That is
// grpc-go's order, and its handling: keys in lower case and validated, and
// errors as statuses (a plain error is Unauthenticated from the
// connection's credentials and Internal from the call's; a code reserved
// for the control plane by gRFC A54 becomes Internal). md is not changed.
func (cc *ClientConn) withCredentials(ctx context.Context, t transport.ClientTransport, method string, ci *callInfo, md metadata.MD) (metadata.MD, error) {
	server := authInfo(t.Peer())
	ctx = credentials.NewContextWithRequestInfo(ctx, credentials.RequestInfo{Method: method, AuthInfo: server})
	service := method
	if i := strings.LastIndex(method, "/"); i >= 0 {
		service = method[:i]
	}
	audience := "https://" + cc.name + service
	connData := map[string]string{}
	for _, c := range cc.opts.perRPC {
		if err := requestMetadata(ctx, c, audience, codes.Unauthenticated, connData); err != nil {
			return nil, err
		}
	}
	var callData map[string]string
	if c := ci.creds; c != nil {
		if c.RequireTransportSecurity() && credentials.CheckSecurityLevel(server, credentials.PrivacyAndIntegrity) != nil {
			return nil, status.Error(codes.Unauthenticated, "transport: cannot send secure credentials on an insecure connection")
		}
		callData = map[string]string{}
		if err := requestMetadata(ctx, c, audience, codes.Internal, callData); err != nil {
			return nil, err
		}
	}
	out := make(metadata.MD, len(connData)+len(callData)+md.Len())
	for _, data := range []map[string]string{connData, callData} {
		for k, v := range data {
			out[k] = append(out[k], v)
		}
	}
	for k, vs := range md {
		out[k] = append(out[k], vs...)
	}
	return out, nil
}

// requestMetadata adds c's request metadata to into. A plain error from c
// becomes a status with code plain.
func requestMetadata(ctx context.Context, c credentials.PerRPCCredentials, audience string, plain codes.Code, into map[string]string) error {
	data, err := c.GetRequestMetadata(ctx, audience)
	if err != nil {
		if st, ok := status.FromError(err); ok {
			if restrictedCode(st.Code()) {
				return status.Errorf(codes.Internal, "transport: received per-RPC creds error with illegal status: %v", err)
			}
			return err
		}
		return status.Errorf(plain, "transport: per-RPC creds failed due to error: %v", err)
	}
	for k, v := range data {
		k = strings.ToLower(k)
		if err := validatePair(k, v); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		into[k] = v
	}
	return nil
}

// validatePair checks a metadata key and value as grpc-go does: keys of
// [0-9a-z-_.], and printable ASCII values unless the key ends in "-bin".
func validatePair(k, v string) error {
	if k == "" {
		return fmt.Errorf("there is an empty key in the header")
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("header key %q contains illegal characters not in [0-9a-z-_.]", k)
		}
	}
	if strings.HasSuffix(k, "-bin") {
		return nil
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return fmt.Errorf("header key %q contains value with non-printable ASCII characters", k)
		}
	}
	return nil
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
