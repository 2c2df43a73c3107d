package notnets

import (
	"fmt"
	"slices"

	"github.com/notnets/notnets/internal/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// AuthInfo identifies the process at the other end of a connection, as far
// as the kernel vouches for it. A server finds it in
// peer.FromContext(ctx).AuthInfo; a client gets it with grpc.Peer.
//
// On one host (the default), connections are set up through the
// listener's Unix socket: UID, GID and PID are the peer's as the kernel
// recorded them (SO_PEERCRED, checked against the credentials attached to
// the handshake message), and PIDVerified is true (false only for a peer
// in another pid namespace, whose PID is 0).
//
// Where connections are set up through the listener's slots (cross-host
// pools, WithCrossHost, and where there is no socket), UID and GID are the
// owner and group of the segment file the peer created (the client's
// connection segment, the server's listener), read with fstat; in a
// shared pool (WithPoolGroup) GID is then the pool's group for every
// peer. PID is what the peer wrote into its header. For a peer of this
// host and pid namespace in a pool that is not cross-host, PIDVerified
// when this process could read /proc/PID/maps and found the segment
// mapped there (same user, or root) by a process whose file-system uid is
// UID; a mapped pid of another uid means the segment was passed on by
// someone other than its creator: Mismatch is set, and a server refuses
// the connection's calls. For any other peer (another host, another pid
// namespace, a cross-host pool) this process's /proc knows nothing of
// PID: it is what the peer claims, PIDVerified is false.
//
// Groups, the peer's supplementary groups from /proc/PID/status, are
// filled in only for a verified PID. See docs/SECURITY.md.
type AuthInfo struct {
	credentials.CommonAuthInfo
	UID, GID    uint32
	PID         int
	PIDVerified bool
	Mismatch    bool
	Groups      []uint32
}

// AuthType returns "notnets".
func (AuthInfo) AuthType() string { return "notnets" }

var _ credentials.AuthInfo = AuthInfo{}

// authInfo is the AuthInfo of a peer the transport identified.
func authInfo(id transport.Identity) AuthInfo {
	return AuthInfo{CommonAuthInfo: securityLevel, UID: id.UID, GID: id.GID, PID: id.PID, PIDVerified: id.PIDVerified, Mismatch: id.Mismatch, Groups: id.Groups}
}

// securityLevel is what notnets connections offer: nobody outside the
// pool's users can read or write the segment (docs/SECURITY.md says
// against whom that holds).
var securityLevel = credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}

// authorizer decides whether a connection's calls may run.
type authorizer struct {
	uids  []uint32
	gids  []uint32
	funcs []func(AuthInfo) error
}

func (z *authorizer) set() bool { return len(z.uids)+len(z.gids)+len(z.funcs) > 0 }

// check returns nil if any rule allows a, else a PermissionDenied status
// that says why.
func (z *authorizer) check(a AuthInfo) error {
	if a.Mismatch {
		return status.Errorf(codes.PermissionDenied, "notnets: caller refused: its segment belongs to uid %d but process %d, which maps it, runs as another user", a.UID, a.PID)
	}
	if !z.set() {
		return nil
	}
	if slices.Contains(z.uids, a.UID) || slices.Contains(z.gids, a.GID) {
		return nil
	}
	for _, g := range a.Groups {
		if slices.Contains(z.gids, g) {
			return nil
		}
	}
	why := fmt.Sprintf("uid %d, gid %d not allowed", a.UID, a.GID)
	for _, f := range z.funcs {
		err := f(a)
		if err == nil {
			return nil
		}
		why = err.Error()
	}
	return status.Errorf(codes.PermissionDenied, "notnets: caller (pid %d) refused: %s", a.PID, why)
}

// AllowUIDs lets callers whose connection segment belongs to one of uids
// call this server. In a shared pool (WithPoolGroup) the members of the
// group can pass as one another; see docs/SECURITY.md. Authorization options add up: a caller that any of
// them allows may call; without any, every caller that can use the pool
// may. Refused calls end with PermissionDenied before any interceptor or
// handler runs, and are counted (Server.RefusedCalls).
func AllowUIDs(uids ...uint32) ServerOption {
	return serverFunc(func(o *serverOptions) { o.authz.uids = append(o.authz.uids, uids...) })
}

// AllowGIDs lets callers call whose AuthInfo GID, or one of whose Groups,
// is among gids. See AllowUIDs.
func AllowGIDs(gids ...uint32) ServerOption {
	return serverFunc(func(o *serverOptions) { o.authz.gids = append(o.authz.gids, gids...) })
}

// WithAuthorizer lets callers call for whom allow returns nil; its error
// says why a caller was refused. It runs once per connection. See
// AllowUIDs.
func WithAuthorizer(allow func(AuthInfo) error) ServerOption {
	return serverFunc(func(o *serverOptions) { o.authz.funcs = append(o.authz.funcs, allow) })
}
