package notnets_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
)

// runFiller writes zeros to $NOTNETS_TEST_FILL until the file system is
// full, as any local user can do to /dev/shm, and prints "full" and the
// error that stopped it.
func runFiller() {
	f, err := os.Create(os.Getenv("NOTNETS_TEST_FILL"))
	if err != nil {
		fmt.Println("error", err)
		return
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			fmt.Println("full", err)
			return
		}
	}
}

// smallTmpfs mounts a tmpfs of size bytes for the test, or skips the test
// when this process may not mount one.
func smallTmpfs(t *testing.T, size int) string {
	dir := t.TempDir()
	if err := unix.Mount("notnets-test", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("skipped: mounting a small tmpfs needs root (CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestFullPool fills a small pool's file system from another process, as
// a user with no access to the pool can fill /dev/shm: a Listen and a Dial
// that need room fail with ResourceExhausted, and a live connection (in a
// cross-host pool, so that its segment lies in the pool) carries a ring
// call and a
// 3 MiB call, whose heap blocks cannot be allocated, through its rings.
// Before notnets allocated blocks before writing them, each of these died
// of SIGBUS. Once the pool has room again, large messages go through the
// heaps again.
func TestFullPool(t *testing.T) {
	mnt := smallTmpfs(t, 16<<20)
	dir := filepath.Join(mnt, "pool")
	srv := startServerIn(t, dir, crossHostEnv+"=1")
	cc := srv.dial(t)
	c := semanticsClient(cc)
	ctx := context.Background()
	if _, err := c.UnaryCall(withMode(ctx, "echo", "before"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}

	fill := filepath.Join(mnt, "fill")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=filler", "NOTNETS_TEST_FILL="+fill)
	out, err := cmd.Output()
	if !strings.HasPrefix(string(out), "full") || !strings.Contains(string(out), "no space") {
		t.Fatalf("filler: %q, %v; want it to fill the file system", out, err)
	}

	_, err = notnets.Listen("another", notnets.WithPool(dir))
	if status.Code(err) != codes.ResourceExhausted || !errors.Is(err, notnets.ErrPoolExhausted) {
		t.Errorf("Listen in a full pool: %v, want ResourceExhausted wrapping ErrPoolExhausted", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := notnets.Dial(dctx, listenName, notnets.WithPool(dir)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("Dial in a full cross-host pool: %v, want ResourceExhausted", err)
	}

	if _, err := c.UnaryCall(withMode(ctx, "echo", "ring"), &testpb.SimpleRequest{}); err != nil {
		t.Errorf("ring call in a full pool: %v", err)
	}
	bigCall := func(tag string) {
		t.Helper()
		body := bytes.Repeat([]byte{7}, 3<<20)
		r, err := c.UnaryCall(withMode(ctx, "echo", tag), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
		if err != nil {
			t.Fatalf("3 MiB call (%s): %v", tag, err)
		}
		if !bytes.Equal(r.GetPayload().GetBody(), body) {
			t.Fatalf("3 MiB call (%s): reply of %d bytes differs", tag, len(r.GetPayload().GetBody()))
		}
	}
	bigCall("full")
	if sent, recv := notnets.HeapRefs(cc); sent != 0 || recv != 0 {
		t.Errorf("in a full pool %d messages went by reference, %d came back so; want both through the rings", sent, recv)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	bigCall("room")
	if sent, recv := notnets.HeapRefs(cc); sent == 0 || recv == 0 {
		t.Errorf("with room again: %d sent and %d received by reference, want both", sent, recv)
	}
}
