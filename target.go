package notnets

import (
	"net"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/pool"
)

// parseTarget returns the listener name a NewClient target names: a bare
// name, "notnets:///name", or the host of "host:port", "dns:///host:port"
// (any authority) or "passthrough:///host:port". Anything else, or a host
// that is not a valid listener name (an IP address literal, say), is an
// InvalidArgument error.
func parseTarget(target string) (string, error) {
	bad := func(why string) (string, error) {
		return "", status.Errorf(codes.InvalidArgument, "notnets: target %q: %s", target, why)
	}
	rest := target
	if scheme, after, ok := strings.Cut(target, "://"); ok {
		switch scheme {
		case "notnets", "dns", "passthrough":
		default:
			return bad("scheme " + scheme + " names no listener in a pool (use a name, notnets:///name, host:port or dns:///host:port)")
		}
		// "scheme://authority/endpoint": the authority is ignored.
		_, endpoint, ok := strings.Cut(after, "/")
		if !ok {
			return bad("no endpoint after the authority")
		}
		rest = endpoint
		if scheme == "notnets" {
			if err := pool.ValidName(rest); err != nil {
				return bad(err.Error())
			}
			return rest, nil
		}
	}
	name := rest
	if strings.Contains(rest, ":") {
		host, _, err := net.SplitHostPort(rest)
		if err != nil {
			return bad(err.Error())
		}
		name = host
	}
	if net.ParseIP(name) != nil {
		return bad("an IP address names no listener in a pool")
	}
	if err := pool.ValidName(name); err != nil {
		return bad(err.Error())
	}
	return name, nil
}
