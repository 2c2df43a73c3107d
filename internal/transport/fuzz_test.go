package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/notnets/notnets/internal/arena"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

const fuzzRing = ring.MinCap

// fuzzSegment builds a connection segment in ordinary memory whose client
// side (control page and client-to-server ring) comes from data: the first
// 256 bytes overlay the client's control block, the rest its ring.
func fuzzSegment(data []byte) (*pool.Segment, *pool.ConnLayout) {
	seg, lay := anonSegment(pool.ConnSpec{C2S: fuzzRing, S2C: fuzzRing, C2SHeap: pool.MinHeap, S2CHeap: pool.MinHeap})
	mem := seg.Mem
	if len(data) > 256 {
		copy(lay.C2S, data[256:])
		data = data[:256]
	}
	copy(mem[pool.PageSize:], data)
	return seg, lay
}

// anonSegment maps a segment in an anonymous memfd (so that closing it,
// which unmaps it, is right, and heap blocks can be reserved) with the
// given regions and a fresh header.
func anonSegment(spec pool.ConnSpec) (*pool.Segment, *pool.ConnLayout) {
	fd, err := unix.MemfdCreate("notnets-test", unix.MFD_CLOEXEC)
	if err != nil {
		panic(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(spec.Size())); err != nil {
		panic(err)
	}
	mem, err := unix.Mmap(fd, 0, spec.Size(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		panic(err)
	}
	seg, err := pool.NewSegmentFD(fd, mem, pool.FileOwner{})
	if err != nil {
		panic(err)
	}
	pool.InitConnSpec(mem, spec, 0)
	lay, err := pool.MapConn(mem, ring.CheckCap)
	if err != nil {
		panic(err)
	}
	return seg, lay
}

// seedFrame is one record of a seed.
type seedFrame struct {
	t           frame.Type
	flags       frame.Flags
	stream, aux uint32
	p           []byte
}

// seedSide is what one side writes, as fuzz input: its control block
// (state open, tail past the records) and then its ring holding frames.
func seedSide(frames ...seedFrame) []byte {
	var data []byte
	for _, f := range frames {
		rec := make([]byte, ring.RecordSize(len(f.p)))
		binary.LittleEndian.PutUint32(rec, uint32(len(f.p)))
		rec[4] = byte(f.t)
		frame.Put(rec, f.flags, f.stream, f.aux)
		copy(rec[frame.HeaderSize:], f.p)
		data = append(data, rec...)
	}
	ctl := make([]byte, 256)
	ctl[0] = pool.StateOpen
	binary.LittleEndian.PutUint64(ctl[64:], uint64(len(data))) // tail
	return append(ctl, data...)
}

// seedCall is a well-formed unary call: HEADERS, then MESSAGE with the end
// of the stream, as the client would write them.
func seedCall() []byte {
	h := frame.RequestHeaders{Method: "/helloworld.Greeter/SayHello", MD: metadata.Pairs("k", "v")}
	msg := []byte{0x0a, 0x03, 'a', 'b', 'c'}
	return seedSide(
		seedFrame{frame.TypeHeaders, 0, 1, 0, h.Append(nil)},
		seedFrame{frame.TypeMessage, frame.FlagEndStream, 1, uint32(len(msg)), msg},
		seedFrame{frame.TypeCancel, 0, 1, 0, (&frame.Status{Code: 1, Message: "x"}).Append(nil)},
	)
}

// seedFragmentedCall is a unary call whose request headers travel in
// three fragments (PROTOCOL.md 9.9).
func seedFragmentedCall() []byte {
	msg := []byte{0x0a, 0x01, 'x'}
	return seedSide(append(fragments(frame.TypeHeaders, 0, 1, bigRequest(1500), 600),
		seedFrame{frame.TypeMessage, frame.FlagEndStream, 1, uint32(len(msg)), msg})...)
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
	f.Add(seedFragmentedCall())
	f.Fuzz(func(t *testing.T, data []byte) {
		seg, lay := fuzzSegment(data)
		sc := NewServer(&Accepted{seg: seg, lay: lay}, ServerConfig{Window: 1 << 20, MaxRecv: 4 << 20}, NewWorkers(), echoHandler{})
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

// echoHandler serves every stream of a fuzzed server with a call that
// echoes the request's messages and ends with OK, as a unary call when
// the method says so.
type echoHandler struct{}

func (echoHandler) NewCall(st *ServerStream, rh *frame.RequestHeaders, _ int) ServerCall {
	return &echoCall{st: st, unary: strings.HasSuffix(rh.Method, "/SayHello")}
}
func (echoHandler) Closed(*Server, error)     {}
func (echoHandler) StreamEnded(*Server, bool) {}

type echoCall struct {
	st    *ServerStream
	unary bool
}

func (c *echoCall) Unary() bool    { return c.unary }
func (c *echoCall) Cancel(error)   {}
func (c *echoCall) NeverRan(error) {}
func (c *echoCall) Run() {
	ctx := context.Background()
	for {
		m, ok := c.st.NextMsg()
		if !ok {
			break
		}
		if m.Buf != nil {
			out := OutMsg{raw: true, rawData: m.Buf.ReadOnlyData(), size: m.Buf.Len()}
			var sent Sent
			c.st.Send(ctx, &out, &sent)
		}
		m.Free()
	}
	c.st.Finish(ctx, okStatus, nil, &Sent{})
}

// seedReply is a well-formed answer to stream 1, as the server would write
// it: HEADERS, a MESSAGE, a MESSAGE_REF to the start of its heap, and
// TRAILERS with a status and trailer metadata.
func seedReply() []byte {
	return seedSide(
		seedFrame{frame.TypeHeaders, 0, 1, 0, (&frame.ResponseHeaders{MD: metadata.Pairs("h", "v")}).Append(nil)},
		seedFrame{frame.TypeMessage, 0, 1, 3, []byte("abc")},
		seedFrame{frame.TypeMessageRef, 0, 1, 100, arena.Ref{Offset: 0, Length: 100}.Append(nil)},
		seedFrame{frame.TypeTrailers, 0, 1, 0, (&frame.Status{Code: 0, MD: metadata.Pairs("t", "v")}).Append(nil)},
	)
}

// FuzzClientReadsSegment puts arbitrary bytes where the server writes (its
// control block and its ring) and lets a client connection with one call
// open read them: it must never panic, every message it delivers must
// decode or fail as a message, and it either serves the call or closes the
// connection with a status.
func FuzzClientReadsSegment(f *testing.F) {
	f.Add(seedReply())
	f.Add(make([]byte, 300))
	broken := seedReply()
	broken[256+16+4] = 42 // unknown frame type in the second record
	f.Add(broken)
	// Response headers and trailers in fragments (PROTOCOL.md 9.9).
	hb := (&frame.ResponseHeaders{MD: metadata.Pairs("h", strings.Repeat("h", 1500))}).Append(nil)
	tb := (&frame.Status{Code: 0, MD: metadata.Pairs("t", strings.Repeat("t", 1500))}).Append(nil)
	f.Add(seedSide(append(fragments(frame.TypeHeaders, 0, 1, hb, 700), fragments(frame.TypeTrailers, 0, 1, tb, 700)...)...))
	seed := seedReply()
	f.Fuzz(func(t *testing.T, data []byte) {
		isSeed := bytes.Equal(data, seed)
		seg, lay := anonSegment(pool.ConnSpec{C2S: fuzzRing, S2C: fuzzRing, C2SHeap: pool.MinHeap, S2CHeap: pool.MinHeap})
		if len(data) > 256 {
			copy(lay.S2C, data[256:])
			data = data[:256]
		}
		copy(seg.Mem[2*pool.PageSize:], data)
		tr := &Client{streams: make(map[uint32]*ClientStream), goingAway: make(chan struct{}), events: ClientEvents{Lost: func(ClientTransport, error) {}, Closed: func() {}}}
		tr.c = newConn(seg, lay.Client, lay.Server, lay.C2S, lay.S2C, Wait{})
		tr.c.initHeaps(lay.C2SHeap, lay.C2SReturns, lay.S2CHeap, lay.S2CReturns, false)
		tr.c.onFrame, tr.c.onClose = tr.onFrame, tr.onClose
		s := &ClientStream{t: tr, ctx: context.Background(), maxRecv: 4 << 20}
		s.init(1, tr.c, s.maxRecv, 1<<20)
		tr.streams[1], tr.lastID = s, 1
		for i := 0; i < 3; i++ {
			if n, ok := tr.c.drainOrCheck(); !ok || n == 0 {
				break
			}
		}
		var lens []int
		for {
			m, ok, _ := s.NextMsg()
			if !ok {
				break
			}
			if m.Err == nil {
				lens = append(lens, len(m.Buf.ReadOnlyData()))
			}
			m.Free()
		}
		if isSeed && (len(lens) != 2 || lens[0] != 3 || lens[1] != 100 || s.st.Code() != codes.OK || tr.c.closeErr() != nil) {
			t.Fatalf("the well-formed reply was read as %v, status %v, closed %v", lens, s.st, tr.c.closeErr())
		}
		if err := tr.c.closeErr(); err != nil && err.Error() == "" {
			t.Fatal("closed without a reason")
		}
		tr.c.fail(context.Canceled)
		tr.c.endReader()
		tr.c.waitReleased()
	})
}
