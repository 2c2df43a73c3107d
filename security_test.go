package notnets

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/transport"
)

// whoGreeter answers with what the server knows of its caller:
// "uid gid pid verified".
type whoGreeter struct{ pb.UnimplementedGreeterServer }

func (whoGreeter) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	p, _ := peer.FromContext(ctx)
	a, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return nil, status.Errorf(codes.Internal, "AuthInfo is %T", p.AuthInfo)
	}
	return &pb.HelloReply{Message: fmt.Sprintf("%d %d %d %v", a.UID, a.GID, a.PID, a.PIDVerified)}, nil
}

// serveWho serves whoGreeter under name in dir with the given options,
// until the test ends.
func serveWho(t *testing.T, dir, name string, lopts []ListenOption, sopts ...ServerOption) *Server {
	lis, err := Listen(name, append([]ListenOption{WithPool(dir)}, lopts...)...)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(sopts...)
	pb.RegisterGreeterServer(srv, whoGreeter{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return srv
}

// openBase returns a new directory that every user can traverse (but not
// write), for pools that processes of other users must reach.
func openBase(t *testing.T) string {
	base, err := os.MkdirTemp("", "notnets-sec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	return base
}

// otherUserClient runs the test binary as uid 65534 with the given groups,
// as a client that dials name in dir (with the pool group, if not empty),
// calls once and reports what happened in one line.
func otherUserClient(t *testing.T, base, dir, name, group string, groups ...uint32) string {
	t.Helper()
	exe := filepath.Join(base, "notnets.test")
	if _, err := os.Stat(exe); err != nil {
		copyExecutable(t, os.Args[0], exe)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "NOTNETS_TEST_ROLE=call-client", "NOTNETS_POOL="+dir, "NOTNETS_TEST_NAME="+name, "NOTNETS_TEST_GROUP="+group)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
	cmd.Dir = base
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client as uid 65534: %v (%s)", err, out)
	}
	return strings.TrimSpace(string(out))
}

func copyExecutable(t *testing.T, from, to string) {
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root, to run a client as another user (uid 65534); run the tests as root to cover it")
	}
}

// testGroup is the gid of the shared pools in these tests; it need not
// exist in /etc/group.
const testGroup = 4242

// TestOtherUserCannotUseAPrivatePool runs a client as another user against
// a pool of one user: it cannot open the listener, and cannot open a
// segment file either.
func TestOtherUserCannotUseAPrivatePool(t *testing.T) {
	needRoot(t)
	base := openBase(t)
	dir := filepath.Join(base, "pool")
	serveWho(t, dir, "private", nil)
	got := otherUserClient(t, base, dir, "private", "")
	if !strings.HasPrefix(got, "dial Unavailable") || !strings.Contains(got, "permission denied") {
		t.Errorf("client of another user: %q, want Unavailable with permission denied", got)
	}
	// Even knowing a segment's name does not help: the directory is closed.
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("pool directory: %v, %v; want mode 0700", fi, err)
	}
	cmd := exec.Command("/bin/cat", filepath.Join(dir, "private.listener"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil || !bytes.Contains(out, []byte("Permission denied")) {
		t.Errorf("another user read the listener segment: %v %q", err, out)
	}
}

// TestGroupPool shares a pool through a group: a client of another user
// in the group can call, and the server sees its uid; one outside the group
// cannot.
func TestGroupPool(t *testing.T) {
	needRoot(t)
	base := openBase(t)
	dir := filepath.Join(base, "pool")
	group := fmt.Sprint(testGroup)
	serveWho(t, dir, "shared", []ListenOption{WithPoolGroup(group)})
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil || st.Mode&0o7777 != 0o3770 || st.Gid != testGroup {
		t.Fatalf("shared pool directory: mode %o gid %d (%v), want 3770 and gid %d", st.Mode&0o7777, st.Gid, err, testGroup)
	}
	// The server learns the caller's own uid and gid from the kernel
	// (SO_PEERCRED on the handshake socket), with a verified pid.
	got := otherUserClient(t, base, dir, "shared", group, testGroup)
	if !strings.HasPrefix(got, "ok 65534 65534 ") || !strings.HasSuffix(got, " true") {
		t.Errorf("client in the group: %q, want ok with uid 65534, gid 65534 and a verified pid as the server saw them", got)
	}
	got = otherUserClient(t, base, dir, "shared", group)
	if !strings.HasPrefix(got, "dial Unavailable") || !strings.Contains(got, "permission denied") {
		t.Errorf("client outside the group: %q, want Unavailable with permission denied", got)
	}
}

// TestAuthorizationAcrossUsers refuses a caller of another user by uid and
// allows it by name, with the refusal counted.
func TestAuthorizationAcrossUsers(t *testing.T) {
	needRoot(t)
	base := openBase(t)
	dir := filepath.Join(base, "pool")
	group := fmt.Sprint(testGroup)
	deny := serveWho(t, dir, "deny", []ListenOption{WithPoolGroup(group)}, AllowUIDs(0))
	serveWho(t, dir, "allow", []ListenOption{WithPoolGroup(group)}, AllowUIDs(0, 65534))
	got := otherUserClient(t, base, dir, "deny", group, testGroup)
	if !strings.HasPrefix(got, "call PermissionDenied") || !strings.Contains(got, "uid 65534") {
		t.Errorf("refused caller: %q, want PermissionDenied naming uid 65534", got)
	}
	if n := deny.RefusedCalls(); n != 1 {
		t.Errorf("RefusedCalls = %d, want 1", n)
	}
	if got := otherUserClient(t, base, dir, "allow", group, testGroup); !strings.HasPrefix(got, "ok 65534") {
		t.Errorf("allowed caller: %q", got)
	}
}

// TestAuthorization checks the authorization options with callers of this
// user: refused ones get PermissionDenied before any interceptor or
// handler runs, and are counted.
func TestAuthorization(t *testing.T) {
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	me := func(a AuthInfo) error {
		if a.PIDVerified && a.PID == os.Getpid() {
			return nil
		}
		return fmt.Errorf("pid %d (verified %v) is not the test's", a.PID, a.PIDVerified)
	}
	tests := []struct {
		name  string
		opts  []ServerOption
		allow bool
		why   string
	}{
		{"no rule", nil, true, ""},
		{"uid allowed", []ServerOption{AllowUIDs(uid+1, uid)}, true, ""},
		{"uid refused", []ServerOption{AllowUIDs(uid + 1)}, false, fmt.Sprintf("uid %d, gid %d not allowed", uid, gid)},
		{"gid allowed", []ServerOption{AllowGIDs(gid)}, true, ""},
		{"gid refused", []ServerOption{AllowGIDs(gid + 1)}, false, "not allowed"},
		{"function allows", []ServerOption{WithAuthorizer(me)}, true, ""},
		{"function refuses", []ServerOption{WithAuthorizer(func(AuthInfo) error { return fmt.Errorf("closed today") })}, false, "closed today"},
		{"any rule allows", []ServerOption{AllowUIDs(uid + 1), WithAuthorizer(me)}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var ran atomic.Int32 // the race detector cannot see the ordering through shared memory
			count := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				ran.Add(1)
				return h(ctx, req)
			}
			srv := serveWho(t, dir, "authz", nil, append(tc.opts, UnaryInterceptor(count))...)
			cc := dialT(t, "authz", dir)
			for i := 0; i < 3; i++ {
				r, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{})
				if tc.allow {
					want := fmt.Sprintf("%d %d %d true", uid, gid, os.Getpid())
					if err != nil || r.GetMessage() != want {
						t.Fatalf("call %d: %q, %v; want %q", i, r.GetMessage(), err, want)
					}
					continue
				}
				if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), tc.why) {
					t.Fatalf("call %d: %v, want PermissionDenied containing %q", i, err, tc.why)
				}
			}
			wantRefused, wantRan := uint64(0), int32(3)
			if !tc.allow {
				wantRefused, wantRan = 3, 0
			}
			if n := srv.RefusedCalls(); n != wantRefused {
				t.Errorf("RefusedCalls = %d, want %d", n, wantRefused)
			}
			if n := ran.Load(); n != wantRan {
				t.Errorf("the interceptor ran %d times, want %d", n, wantRan)
			}
		})
	}
}

// TestClientSeesServerIdentity checks the AuthInfo a client gets with
// grpc.Peer: the owner of the server's listener, and its verified pid.
func TestClientSeesServerIdentity(t *testing.T) {
	dir := t.TempDir()
	serveWho(t, dir, "who", nil)
	cc := dialT(t, "who", dir)
	var p peer.Peer
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	a, ok := p.AuthInfo.(AuthInfo)
	if !ok || a.AuthType() != "notnets" || a.UID != uint32(os.Geteuid()) || a.PID != os.Getpid() || !a.PIDVerified {
		t.Fatalf("client's view of the server: %#v", p.AuthInfo)
	}
}

// TestWriteIntoPeerRegionFaults writes from Go code into regions the peer
// writes, on both sides of a connection: each write faults, and the byte
// stays as it was.
func TestWriteIntoPeerRegionFaults(t *testing.T) {
	dir := t.TempDir()
	srv := serveWho(t, dir, "mmu", nil)
	cc := dialT(t, "mmu", dir)
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
		t.Fatal(err)
	}
	client := cc.conn()
	srv.mu.Lock()
	var server *conn
	for sc := range srv.conns {
		server = sc.t.Conn()
	}
	srv.mu.Unlock()
	for _, side := range []struct {
		name   string
		c      *conn
		client bool
	}{{"client", client, true}, {"server", server, false}} {
		// Held as the liveness watch holds it: the server's side closes
		// on its own goroutine when the test ends.
		side.c.MapMu().RLock()
		defer side.c.MapMu().RUnlock()
		lay, err := pool.MapConn(side.c.Seg().Mem, ring.CheckCap)
		if err != nil {
			t.Fatal(err)
		}
		regions := lay.PeerRegions(side.c.Seg().Mem, side.client)
		if len(regions) != 4 {
			t.Fatalf("%s: %d peer regions, want 4 (control, ring, heap, return queue)", side.name, len(regions))
		}
		for i, r := range regions {
			for _, at := range []int{0, len(r) / 2, len(r) - 1} {
				before := r[at]
				if err := writeFaults(r, at); err == nil {
					t.Errorf("%s: writing byte %d of peer region %d did not fault", side.name, at, i)
				}
				if r[at] != before {
					t.Errorf("%s: byte %d of peer region %d changed", side.name, at, i)
				}
			}
		}
	}
	// The conversation goes on.
	if _, err := pb.NewGreeterClient(cc).SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
		t.Fatalf("call after the faults: %v", err)
	}
}

// writeFaults writes b[i] and returns the fault it caused, if any.
func writeFaults(b []byte, i int) (err error) {
	defer debugPanicOnFault()()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	b[i] ^= 0xff
	return nil
}

// TestPoolAttacks tries what another user of a shared machine could do to
// a pool before the server starts: a symbolic link where the pool or a
// listener should be, a directory others can write, one owned by someone
// else, a listener file planted by someone else. Each is refused with an
// error that says why, and what was planted is left alone.
func TestPoolAttacks(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "target")
	os.Mkdir(target, 0o700)
	link := filepath.Join(base, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	groupw := filepath.Join(base, "groupw")
	os.Mkdir(groupw, 0o700)
	os.Chmod(groupw, 0o770)

	tests := []struct {
		name, dir, want string
		opts            []ListenOption
		root            bool
	}{
		{"pool is a symbolic link", link, "symbolic link", nil, false},
		{"pool is a symbolic link, named with a trailing slash", link + "/", "symbolic link", nil, false},
		{"pool writable by others", open, "writable by others", nil, false},
		{"pool writable by its group, no group given", groupw, "writable by its group", nil, false},
		{"pool of another group", groupw, "not the pool group", []ListenOption{WithPoolGroup(fmt.Sprint(testGroup))}, false},
	}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(base, "theirs")
		os.Mkdir(theirs, 0o700)
		os.Chown(theirs, 65534, 65534)
		tests = append(tests, struct {
			name, dir, want string
			opts            []ListenOption
			root            bool
		}{"pool owned by another user", theirs, "owned by uid 65534", nil, true})
	} else {
		t.Log("not root: the case of a pool owned by another user is skipped (it needs chown)")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Listen("x", append([]ListenOption{WithPool(tc.dir)}, tc.opts...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Listen: %v, want an error containing %q", err, tc.want)
			}
			var dopts []DialOption
			for _, o := range tc.opts {
				if g, ok := o.(PoolGroupOption); ok {
					dopts = append(dopts, g)
				}
			}
			_, err = Dial(context.Background(), "x", append([]DialOption{WithPool(tc.dir)}, dopts...)...)
			if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("Dial: %v, want PermissionDenied containing %q", err, tc.want)
			}
		})
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the planted symbolic link was changed: %v %v", fi, err)
	}
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Errorf("something was created through the symbolic link: %v", entries)
	}

	// Planted listener files in a good pool.
	dir := filepath.Join(base, "pool")
	if err := pool.Prepare(dir, pool.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(base, "secret")
	os.WriteFile(secret, []byte("do not touch"), 0o600)
	// Instance files are named by their servers, so a planted one is never
	// replaced by a Listen (which makes its own instance) and never used
	// by a client.
	if err := os.Symlink(secret, filepath.Join(dir, "linked+0123456789abcdef.listener")); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(context.Background(), "linked", WithPool(dir)); status.Code(err) != codes.Unavailable {
		t.Errorf("Dial of a symbolic link: %v, want Unavailable", err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "do not touch" {
		t.Errorf("the link's target changed: %q", b)
	}
	if os.Geteuid() == 0 {
		planted := filepath.Join(dir, "planted+0123456789abcdef.listener")
		os.WriteFile(planted, make([]byte, pool.ListenerSize), 0o666)
		os.Chown(planted, 65534, 65534)
		os.Chmod(planted, 0o644)
		if _, err := Dial(context.Background(), "planted", WithPool(dir)); status.Code(err) != codes.PermissionDenied {
			t.Errorf("Dial of a file of another user: %v, want PermissionDenied", err)
		}
		if _, err := os.Stat(planted); err != nil {
			t.Errorf("the planted file was removed: %v", err)
		}
	}
}

// debugPanicOnFault turns faults into panics for the calling goroutine
// and returns what restores the setting.
func debugPanicOnFault() func() {
	old := debug.SetPanicOnFault(true)
	return func() { debug.SetPanicOnFault(old) }
}

// TestIdentityMismatch maps a segment that belongs to another user from
// this process, as one who passes on another's segment would: the
// identity is marked Mismatch, and the server's check refuses it.
func TestIdentityMismatch(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	seg, err := pool.Create(dir, "theirs", pool.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	if err := os.Chown(seg.Path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Stat(seg.Path, &st)
	seg.Owner.UID, seg.Owner.GID = st.Uid, st.Gid
	a := authInfoOf(seg, os.Getpid())
	if !a.Mismatch || a.PIDVerified || a.UID != 65534 {
		t.Fatalf("AuthInfo of another user's segment mapped here: %+v", a)
	}
	var z authorizer
	if err := z.check(a); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "runs as another user") {
		t.Errorf("check = %v, want PermissionDenied (another user)", err)
	}
	// The same segment, this process's own: consistent.
	os.Chown(seg.Path, 0, 0)
	seg.Owner.UID, seg.Owner.GID = 0, 0
	if a := authInfoOf(seg, os.Getpid()); a.Mismatch || !a.PIDVerified {
		t.Errorf("AuthInfo of our own segment: %+v", a)
	}
}

// TestHandshakeRefusesBadSegments hands the listener's socket segments it
// must refuse: not sealed against shrinking or growing, or no descriptor
// at all. The server closes the handshake and opens no connection; the
// same steps with every seal are accepted.
func TestHandshakeRefusesBadSegments(t *testing.T) {
	dir := t.TempDir()
	srv := serveWho(t, dir, "sealed", nil)
	spec := pool.ConnSpec{C2S: ring.MinCap, S2C: ring.MinCap}
	for _, tc := range []struct {
		name   string
		seals  int
		sendFD bool
		as     *unix.Ucred // credentials the sender claims (root may)
		accept bool
		data   []byte // the handshake message; one byte unless set
		sparse bool   // leave the fixed ranges unallocated (rings of 16 MiB)
	}{
		{"unsealed", 0, true, nil, false, nil, false},
		{"may shrink", unix.F_SEAL_GROW | unix.F_SEAL_SEAL, true, nil, false, nil, false},
		{"may grow", unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL, true, nil, false, nil, false},
		{"no descriptor", transport.RequiredSeals, false, nil, false, nil, false},
		{"sent as another process", transport.RequiredSeals, true, &unix.Ucred{Pid: 1, Uid: 0, Gid: 0}, false, nil, false},
		{"two bytes", transport.RequiredSeals, true, nil, false, []byte{1, 1}, false},
		{"sparse rings", transport.RequiredSeals, true, nil, true, nil, true},
		{"sealed", transport.RequiredSeals, true, nil, true, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.as != nil && os.Geteuid() != 0 {
				t.Skip("skipped: only root may claim another process's credentials")
			}
			spec := spec
			if tc.sparse {
				spec.C2S, spec.S2C = 16<<20, 16<<20
			}
			fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			unix.Ftruncate(fd, int64(spec.Size()))
			if !tc.sparse {
				// As an honest client does (PROTOCOL.md 3.4 step 4).
				if err := pool.Allocate(fd, spec.Fixed()...); err != nil {
					t.Fatal(err)
				}
			}
			if tc.seals != 0 {
				if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, tc.seals); err != nil {
					t.Fatal(err)
				}
			}
			mem, err := unix.Mmap(fd, 0, spec.Size(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(mem)
			pool.InitConnSpec(mem, spec, os.Getpid())
			lay, _ := pool.MapConn(mem, ring.CheckCap)
			lay.Client.State.Store(pool.StateOpen)
			before := srv.ConnCount()
			conn, err := net.Dial("unix", instanceSock(t, dir, "sealed"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var oob []byte
			if tc.sendFD {
				oob = unix.UnixRights(fd)
			}
			if tc.as != nil {
				oob = append(oob, unix.UnixCredentials(tc.as)...)
			}
			data := []byte{1}
			if tc.data != nil {
				data = tc.data
			}
			if _, _, err := conn.(*net.UnixConn).WriteMsgUnix(data, oob, nil); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := conn.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("handshake socket after the segment: %d bytes, %v; want the server to close it", n, err)
			}
			if tc.accept {
				eventually(t, "the server did not open the sealed segment", func() bool { return lay.Server.State.Load() == pool.StateOpen })
				// A client that left its rings sparse makes the server
				// allocate only what it writes: its control page.
				var st unix.Stat_t
				if err := unix.Fstat(fd, &st); err != nil {
					t.Fatal(err)
				}
				if tc.sparse && st.Blocks*512 > 1<<20 {
					t.Errorf("the server allocated %d bytes of a segment with sparse rings of 16 MiB", st.Blocks*512)
				}
				lay.Client.State.Store(pool.StateClosed)
				return
			}
			if got := srv.ConnCount(); got != before || lay.Server.State.Load() != pool.StateNew {
				t.Errorf("the server took or wrote the %s segment (connections %d -> %d, server state %d)", tc.name, before, got, lay.Server.State.Load())
			}

		})
	}
}

// TestDialFailsWhenHandshakeCloses puts, in place of a listener's socket, a
// socket of the same process that takes the client's segment and closes
// the connection without answering: Dial fails at once with Unavailable
// naming the reason, not at its deadline.
func TestDialFailsWhenHandshakeCloses(t *testing.T) {
	dir := t.TempDir()
	lis, err := Listen("hangup", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	sock := instanceSock(t, dir, "hangup")
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			c.Read(make([]byte, 1)) // the client's byte and segment, then nothing
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = Dial(ctx, "hangup", WithPool(dir))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "closed the handshake") {
		t.Fatalf("Dial through a socket that closes unanswered: %v, want Unavailable (closed the handshake)", err)
	}
}

// TestListenerSocketLifetime checks that a listener's socket appears with
// the listener, with a segment file's mode, and goes with it.
func TestListenerSocketLifetime(t *testing.T) {
	dir := t.TempDir()
	lis, err := Listen("life", WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	lifeSock := instanceSock(t, dir, "life")
	fi, err := os.Lstat(lifeSock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, %v; want a socket of mode 0600", fi, err)
	}
	lis.Close()
	if _, err := os.Lstat(lifeSock); !os.IsNotExist(err) {
		t.Fatalf("socket after Close: %v, want it gone", err)
	}
}

// TestSocketOnlyListener removes a listener's socket, as a member of a
// shared pool could, and then puts another process's socket in its place:
// a client neither falls back to the slots nor hands its segment to the
// squatter.
func TestSocketOnlyListener(t *testing.T) {
	dir := t.TempDir()
	serveWho(t, dir, "only", nil)
	sock := instanceSock(t, dir, "only")
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	_, err := Dial(context.Background(), "only", WithPool(dir))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "only through its socket") {
		t.Fatalf("Dial with the socket gone: %v, want Unavailable (only through its socket)", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NOTNETS_TEST_ROLE=sock-squatter", "NOTNETS_TEST_SOCK="+sock)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("squatter: %q, %v", line, err)
	}
	_, err = Dial(context.Background(), "only", WithPool(dir))
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "not by the listener's pid") {
		t.Fatalf("Dial with another process on the socket: %v, want PermissionDenied", err)
	}
}

// TestHandshakesInProgressAreBounded opens more silent connections to a
// listener's socket than it receives handshakes at once: those beyond the
// bound are closed at once, and once the silent ones are gone a client
// connects as usual.
func TestHandshakesInProgressAreBounded(t *testing.T) {
	dir := t.TempDir()
	serveWho(t, dir, "bounded", nil)
	sock := instanceSock(t, dir, "bounded")
	const extra = 8
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	closedAtOnce := 0
	for range transport.MaxHandshakes + extra {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	// The server sees them in order; the last ones find the bound reached.
	for _, c := range silent[transport.MaxHandshakes:] {
		c.SetReadDeadline(time.Now().Add(time.Second)) // well below the 2 s handshake deadline
		if n, err := c.Read(make([]byte, 1)); n == 0 && err == io.EOF {
			closedAtOnce++
		}
	}
	if closedAtOnce != extra {
		t.Errorf("%d of the %d connections beyond %d silent handshakes were closed at once, want all", closedAtOnce, extra, transport.MaxHandshakes)
	}
	for _, c := range silent {
		c.Close()
	}
	silent = nil
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		cc, err := Dial(ctx, "bounded", WithPool(dir))
		if err == nil {
			cc.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Dial after the silent connections closed: %v", err)
		}
	}
}

// instanceSock returns the path of the socket of the one instance of
// service in the pool dir.
func instanceSock(t *testing.T, dir, service string) string {
	t.Helper()
	bases, err := pool.ListInstances(dir, service, pool.OwnerOnly)
	if err != nil || len(bases) != 1 {
		t.Fatalf("instances of %q: %v, %v; want one", service, bases, err)
	}
	return filepath.Join(dir, pool.SockFile(bases[0]))
}
