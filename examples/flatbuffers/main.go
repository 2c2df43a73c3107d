// Command flatbuffers serves map tiles as FlatBuffers tables through
// notnets and reads them in place: the reply's bytes stay in the server's
// heap in shared memory, and the client's accessors read them there, with
// no copy and no decoding step. It starts itself again as the server, in
// another process.
//
//	go run ./examples/flatbuffers            # fetch 1000 tiles of 256 KiB
//	go run ./examples/flatbuffers -n 10000
//
// The service has no generated gRPC stubs: it is a grpc.ServiceDesc whose
// messages are notnets.Bytes, selected per call with
// grpc.CallContentSubtype(notnets.BytesCodecName).
//
// Lifetime: a received notnets.Bytes views the peer's memory until Free.
// Everything read from it (here, the tile's pixel slice) must be used or
// copied before Free. The peer can also change its memory while it is
// read, and FlatBuffers' Go accessors trust the buffer (they panic on a
// malformed one); readTile therefore checks what it uses and turns a
// panic into an error, so a broken or hostile server costs one call, not
// the process.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"hash/crc32"
	"log"
	"os"
	"os/exec"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/examples/flatbuffers/tilesfb"
)

// tileSize is the size of a tile's pixels: 256 x 256 x 4 bytes.
const tileSize = 256 * 256 * 4

const getMethod = "/tiles.Tiles/Get"

var bytesCodec = grpc.CallContentSubtype(notnets.BytesCodecName)

// tilesDesc describes the Tiles service. Get takes a TileRequest table
// and returns a Tile table.
var tilesDesc = grpc.ServiceDesc{
	ServiceName: "tiles.Tiles",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Get",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(notnets.Bytes)
			if err := dec(in); err != nil {
				return nil, err
			}
			defer in.Free()
			return getTile(ctx, in.Data())
		},
	}},
}

// getTile reads the request in place and builds the tile. The finished
// table is copied once, into the connection's heap (notnets.Alloc), and
// sent from there by reference.
func getTile(ctx context.Context, req []byte) (*notnets.Bytes, error) {
	x, y, zoom, err := readRequest(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "tiles: %v", err)
	}
	b := flatbuffers.NewBuilder(tileSize + 64)
	pixels := b.CreateByteVector(render(x, y, zoom))
	tilesfb.TileStart(b)
	tilesfb.TileAddX(b, x)
	tilesfb.TileAddY(b, y)
	tilesfb.TileAddZoom(b, zoom)
	tilesfb.TileAddPixels(b, pixels)
	b.Finish(tilesfb.TileEnd(b))
	fin := b.FinishedBytes()
	out := notnets.Alloc(ctx, len(fin))
	copy(out.Data(), fin)
	return out, nil
}

// render draws a tile: a pattern that depends on its coordinates.
func render(x, y int32, zoom byte) []byte {
	p := make([]byte, tileSize)
	for i := range p {
		p[i] = byte(int32(i) ^ x*31 ^ y*17 ^ int32(zoom))
	}
	return p
}

func readRequest(b []byte) (x, y int32, zoom byte, err error) {
	defer recoverInto(&err)
	if len(b) < 8 {
		return 0, 0, 0, fmt.Errorf("request of %d bytes is not a TileRequest", len(b))
	}
	r := tilesfb.GetRootAsTileRequest(b, 0)
	return r.X(), r.Y(), r.Zoom(), nil
}

// tileInfo is what the client takes from a tile before freeing it.
type tileInfo struct {
	x, y  int32
	zoom  byte
	crc   uint32
	bytes int
}

// readTile reads a Tile table where it lies: PixelsBytes is a slice of
// the server's heap.
func readTile(b []byte) (t tileInfo, err error) {
	defer recoverInto(&err)
	if len(b) < 8 {
		return t, fmt.Errorf("reply of %d bytes is not a Tile", len(b))
	}
	tile := tilesfb.GetRootAsTile(b, 0)
	px := tile.PixelsBytes()
	if len(px) != tileSize {
		return t, fmt.Errorf("tile has %d bytes of pixels, want %d", len(px), tileSize)
	}
	return tileInfo{x: tile.X(), y: tile.Y(), zoom: tile.Zoom(), crc: crc32.ChecksumIEEE(px), bytes: len(px)}, nil
}

// recoverInto turns a panic of a FlatBuffers accessor on a malformed
// buffer into an error.
func recoverInto(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("malformed FlatBuffers table: %v", r)
	}
}

func request(x, y int32, zoom byte) []byte {
	b := flatbuffers.NewBuilder(64)
	tilesfb.TileRequestStart(b)
	tilesfb.TileRequestAddX(b, x)
	tilesfb.TileRequestAddY(b, y)
	tilesfb.TileRequestAddZoom(b, zoom)
	b.Finish(tilesfb.TileRequestEnd(b))
	return b.FinishedBytes()
}

func main() {
	server := flag.Bool("server", false, "run as the server (the client starts it)")
	name := flag.String("name", fmt.Sprintf("tiles-%d", os.Getpid()), "listener name in the pool")
	n := flag.Int("n", 1000, "tiles to fetch")
	flag.Parse()
	if *server {
		serve(*name)
		return
	}
	if err := run(*name, *n); err != nil {
		log.Fatal(err)
	}
}

func serve(name string) {
	lis, err := notnets.Listen(name)
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	srv.RegisterService(&tilesDesc, struct{}{})
	go srv.Serve(lis)
	fmt.Println("ready")
	os.Stdin.Read(make([]byte, 1))
	srv.Stop()
}

// serverCommand starts this program as the server; tests replace it.
var serverCommand = func(exe, name string) *exec.Cmd { return exec.Command(exe, "-server", "-name", name) }

func run(name string, n int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	child := serverCommand(exe, name)
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); child.Wait() }()
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		return fmt.Errorf("server did not start: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cc, err := notnets.Dial(ctx, name)
	if err != nil {
		return err
	}
	defer cc.Close()

	start := time.Now()
	var out notnets.Bytes
	for i := 0; i < n; i++ {
		x, y, zoom := int32(i%64), int32(i/64), byte(12)
		if err := cc.Invoke(ctx, getMethod, notnets.NewBytes(request(x, y, zoom)), &out, bytesCodec); err != nil {
			return err
		}
		t, err := readTile(out.Data())
		out.Free() // the tile's memory goes back to the server; t holds copies
		if err != nil {
			return err
		}
		if t.x != x || t.y != y || t.zoom != zoom || t.crc != crc32.ChecksumIEEE(render(x, y, zoom)) {
			return fmt.Errorf("tile %d came back as (%d, %d, %d) with crc %08x", i, t.x, t.y, t.zoom, t.crc)
		}
	}
	d := time.Since(start)
	fmt.Printf("%d tiles of %d KiB from the server (pid %d), read in place and checked: %v per tile, %.0f MB/s of tiles\n",
		n, tileSize>>10, child.Process.Pid, (d / time.Duration(n)).Round(100*time.Nanosecond), float64(n*tileSize)/d.Seconds()/1e6)
	return nil
}
