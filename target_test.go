package notnets

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct{ target, name string }{
		{"greeter", "greeter"},
		{"notnets:///greeter", "greeter"},
		{"notnets://authority/greeter", "greeter"},
		{"greeter.prod:50051", "greeter.prod"},
		{"dns:///greeter.prod:443", "greeter.prod"},
		{"dns://8.8.8.8/greeter:443", "greeter"},
		{"passthrough:///greeter:50051", "greeter"},
		{"localhost:50051", "localhost"},
	} {
		got, err := parseTarget(tc.target)
		if err != nil || got != tc.name {
			t.Errorf("parseTarget(%q) = %q, %v; want %q", tc.target, got, err, tc.name)
		}
	}
	for _, target := range []string{
		"", "unix:///tmp/sock", "xds:///svc", "notnets:///", "notnets:///a/b", "dns:///", "127.0.0.1:50051",
		"[::1]:50051", "host:port:extra", ".hidden", "sp ace", "notnets://no-endpoint",
	} {
		if name, err := parseTarget(target); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseTarget(%q) = %q, %v; want InvalidArgument", target, name, err)
		}
	}
}
