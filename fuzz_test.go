package notnets

import (
	"context"
	"encoding/binary"
	"testing"

	"google.golang.org/grpc/metadata"

	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

const fuzzRing = ring.MinCap

// fuzzSegment builds a connection segment in ordinary memory whose client
// side (control page and client-to-server ring) comes from data: the first
// 256 bytes overlay the client's control block, the rest its ring.
func fuzzSegment(data []byte) (*pool.Segment, *pool.ConnLayout) {
	mem := make([]byte, pool.ConnSize(fuzzRing, fuzzRing))
	pool.InitConn(mem, fuzzRing, fuzzRing, 0)
	lay, err := pool.MapConn(mem, ring.CheckCap)
	if err != nil {
		panic(err)
	}
	if len(data) > 256 {
		copy(lay.C2S, data[256:])
		data = data[:256]
	}
	copy(mem[pool.PageSize:], data)
	return &pool.Segment{Mem: mem}, lay
}

// seedCall is a well-formed unary call: HEADERS, then MESSAGE with the end
// of the stream, as the client would write them.
func seedCall() []byte {
	var c2s []byte
	put := func(t frame.Type, flags frame.Flags, stream, aux uint32, p []byte) {
		rec := make([]byte, ring.RecordSize(len(p)))
		binary.LittleEndian.PutUint32(rec, uint32(len(p)))
		rec[4] = byte(t)
		frame.Put(rec, flags, stream, aux)
		copy(rec[frame.HeaderSize:], p)
		c2s = append(c2s, rec...)
	}
	h := frame.RequestHeaders{Method: "/helloworld.Greeter/SayHello", MD: metadata.Pairs("k", "v")}
	put(frame.TypeHeaders, 0, 1, 0, h.Append(nil))
	msg := []byte{0x0a, 0x03, 'a', 'b', 'c'}
	put(frame.TypeMessage, frame.FlagEndStream, 1, uint32(len(msg)), msg)
	put(frame.TypeCancel, 0, 1, 0, (&frame.Status{Code: 1, Message: "x"}).Append(nil))
	ctl := make([]byte, 256)
	ctl[0] = pool.StateOpen
	binary.LittleEndian.PutUint64(ctl[64:], uint64(len(c2s))) // tail
	return append(ctl, c2s...)
}

// FuzzServerReadsSegment puts arbitrary bytes where the client writes (its
// control block and its ring) and lets a server connection read them: it
// must never panic, and it either serves what it reads or closes the
// connection with a status.
func FuzzServerReadsSegment(f *testing.F) {
	f.Add(seedCall())
	f.Add(make([]byte, 300))
	broken := seedCall()
	binary.LittleEndian.PutUint64(broken[64:], 3) // unaligned tail
	f.Add(broken)
	broken = seedCall()
	broken[256+4] = 99 // unknown frame type
	f.Add(broken)
	srv := NewServer()
	pb.RegisterGreeterServer(srv, echoGreeter{})
	lis := &Listener{dir: "fuzz", name: "fuzz"}
	f.Fuzz(func(t *testing.T, data []byte) {
		seg, lay := fuzzSegment(data)
		sc := newServerConn(srv, lis, &accepted{seg: seg, lay: lay})
		for i := 0; i < 3; i++ {
			if n, ok := sc.c.drainOrCheck(); !ok || n == 0 {
				break
			}
			for _, st := range sc.ready {
				st.run() // answers into the server-to-client ring
			}
			sc.ready = sc.ready[:0]
		}
		if err := sc.c.closeErr(); err != nil && err.Error() == "" {
			t.Fatal("closed without a reason")
		}
		sc.c.fail(context.Canceled)
		sc.c.endReader()
		sc.c.waitReleased()
	})
}
