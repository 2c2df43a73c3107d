package notnets

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/pool"
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
// In pools shared across hosts (WithPollOnly), UID and GID are the owner
// and group of the segment file the peer created (the client's connection
// segment, the server's listener), read with fstat; in a shared pool
// (WithPoolGroup) GID is then the pool's group for every peer. PID is what
// the peer wrote into its header: PIDVerified when this process could read
// /proc/PID/maps and found the segment mapped there (same user, or root)
// by a process whose file-system uid is UID. A mapped pid of another uid
// means the segment was passed on by someone other than its creator:
// Mismatch is set, and a server refuses the connection's calls.
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

// securityLevel is what notnets connections offer: nobody outside the
// pool's users can read or write the segment (docs/SECURITY.md says
// against whom that holds).
var securityLevel = credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}

// authInfoOf builds the AuthInfo of the peer that created seg and claims
// to be pid.
func authInfoOf(seg *pool.Segment, pid int) AuthInfo {
	a := AuthInfo{
		CommonAuthInfo: securityLevel,
		UID:            seg.Owner.UID,
		GID:            seg.Owner.GID,
		PID:            pid,
	}
	if pid > 0 && mapsInode(pid, seg.Owner.Dev, seg.Owner.Ino) {
		fsuid, groups := procIDs(pid)
		switch {
		case fsuid == seg.Owner.UID:
			a.PIDVerified, a.Groups = true, groups
		case fsuid == ^uint32(0) || seg.Owner.UID == 0:
			// Unknown (the process is gone), or a file root made for a
			// process that has dropped its privileges since: unverified.
		default:
			a.Mismatch = true
		}
	}
	return a
}

// mapsInode reports whether /proc/pid/maps shows a mapping of the file
// with device dev and inode ino.
func mapsInode(pid int, dev, ino uint64) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	want := fmt.Sprintf(" %02x:%02x %d ", unix.Major(dev), unix.Minor(dev), ino)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte(want)) {
			return true
		}
	}
	return false
}

// procIDs returns the file-system uid of pid (the uid its new files get;
// ^uint32(0) if unknown), and its effective gid and supplementary groups.
func procIDs(pid int) (fsuid uint32, gids []uint32) {
	fsuid = ^uint32(0)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fsuid, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "Uid" && key != "Gid" && key != "Groups") {
			continue
		}
		fields := strings.Fields(val)
		if key == "Uid" {
			if len(fields) == 4 {
				if u, err := strconv.ParseUint(fields[3], 10, 32); err == nil {
					fsuid = uint32(u)
				}
			}
			continue
		}
		if key == "Gid" && len(fields) > 1 {
			fields = fields[1:2] // real, effective, saved, fs: keep the effective
		}
		for _, f := range fields {
			if g, err := strconv.ParseUint(f, 10, 32); err == nil && !slices.Contains(gids, uint32(g)) {
				gids = append(gids, uint32(g))
			}
		}
	}
	return fsuid, gids
}

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
