package notnets_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/pool"
)

// TestDeviceCalls: a server in another process serves calls over a pool
// on a device, a regular file standing in for /dev/daxX.Y. The pool's
// files are descriptors, the connection went through the listener's
// slots (a named segment: a socket's memfd would not be in the device),
// and the bytes of the calls are in the device file: the server read
// the request there, since it echoed it. In the suite as separate hosts
// (hostsSuite) the server runs as another host, in a cross-host pool on
// the device.
func TestDeviceCalls(t *testing.T) {
	dir := testPool(t)
	// In the pool directory: visible wherever the pool is, also to a
	// server that runs as another host (whose /dev/shm is its own).
	dev := filepath.Join(dir, "dax0.0")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := pool.PrepareDevice(dir, pool.OwnerOnly, pool.DeviceConfig{Path: dev}); err != nil {
		t.Fatal(err)
	}
	srv := startServerIn(t, dir)
	// Heaps of 64 KiB: a device's segments are claimed whole.
	cc := srv.dial(t, notnets.WithArenaSize(64<<10))
	c := semanticsClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r [16]byte
	rand.Read(r[:])
	token := "device-" + hex.EncodeToString(r[:])
	for _, size := range []int{0, 40 << 10, 300 << 10} { // the ring, the heap, fragments
		body := append([]byte(token), bytes.Repeat([]byte{'x'}, size)...)
		resp, err := c.UnaryCall(withMode(ctx, "echo", "u"), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
		if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
			t.Fatalf("echo of %d bytes: %v", len(body), err)
		}
	}
	if notnets.SegmentPath(cc) == "" {
		t.Error("the connection segment has no name: it went through a socket (a memfd), not into the device")
	}
	img, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(img, []byte(token)) {
		t.Error("the bytes of the calls are not in the device file")
	}
	files, err := pool.ScanIn(dir, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	var listeners int
	for _, e := range files {
		if e.Kind != "listener" {
			continue
		}
		listeners++
		fi, err := os.Stat(filepath.Join(dir, e.Name))
		if err != nil || fi.Size() >= pool.ListenerSize || e.Size != pool.ListenerSize || e.Stale {
			t.Errorf("listener %s: file %v (%v), segment of %d bytes, stale %v (%s): want a descriptor of a live %d-byte segment", e.Name, fi, err, e.Size, e.Stale, e.Why, pool.ListenerSize)
		}
	}
	if listeners != 1 {
		t.Errorf("%d listeners, want 1: %+v", listeners, files)
	}
	// The listener, the registry and the connection, at least.
	if claimed, err := pool.ClaimedChunks(dir, pool.OwnerOnly); err != nil || len(claimed) < 3 {
		t.Errorf("claimed chunks %v, %v: want at least 3", claimed, err)
	}
}
