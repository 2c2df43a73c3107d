//go:build linux

package pool

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/notnets/notnets/internal/ring"
)

// TestConnInfo: the client's header limit and user agent sit where
// PROTOCOL.md section 4 puts them and come back from MapConn; a user agent
// length over MaxUserAgent reads as none (F12), without refusing the
// segment; WriteConnInfo refuses a user agent that long.
func TestConnInfo(t *testing.T) {
	const a, b = 4096, 4096
	seg := newSeg(t, ConnSize(a, b))
	mem := seg.Mem
	InitConn(mem, a, b, 1)
	if err := WriteConnInfo(mem, ConnInfo{MaxHeader: 1 << 20, UserAgent: "app/1 grpc-go/1.85.0"}); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if l, n := le.Uint32(mem[40:]), le.Uint16(mem[44:]); l != 1<<20 || n != 20 || string(mem[46:66]) != "app/1 grpc-go/1.85.0" {
		t.Errorf("header bytes 40-65: limit %d, length %d, %q", l, n, mem[46:66])
	}
	lay, err := MapConn(mem, ring.CheckCap)
	if err != nil || lay.Info != (ConnInfo{MaxHeader: 1 << 20, UserAgent: "app/1 grpc-go/1.85.0"}) {
		t.Errorf("MapConn = %+v, %v", lay.Info, err)
	}
	le.PutUint16(mem[44:], MaxUserAgent+1)
	if lay, err := MapConn(mem, ring.CheckCap); err != nil || lay.Info.UserAgent != "" {
		t.Errorf("user agent length %d: MapConn = %+v, %v; want no user agent and no error (F12)", MaxUserAgent+1, lay.Info, err)
	}
	if err := WriteConnInfo(mem, ConnInfo{UserAgent: strings.Repeat("u", MaxUserAgent+1)}); err == nil {
		t.Error("WriteConnInfo took a user agent over MaxUserAgent")
	}
}
