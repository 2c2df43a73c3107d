package transport

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// fragments splits block into frames of type t on stream, each payload
// at most size bytes, as writeBlock does: MORE and the block's length on
// the first, MORE on all but the last, flags on the last.
func fragments(t frame.Type, flags frame.Flags, stream uint32, block []byte, size int) []seedFrame {
	var fs []seedFrame
	aux := uint32(len(block))
	for len(block) > 0 {
		k := min(len(block), size)
		f := flags
		if k < len(block) {
			f = frame.FlagMore
		}
		fs = append(fs, seedFrame{t, f, stream, aux, block[:k]})
		block, aux = block[k:], 0
	}
	return fs
}

// bigRequest is the HEADERS block of a unary call with n bytes of
// metadata.
func bigRequest(n int) []byte {
	h := frame.RequestHeaders{Method: "/helloworld.Greeter/SayHello", MD: metadata.Pairs("k", strings.Repeat("v", n))}
	return h.Append(nil)
}

// serveSeed lets a server connection with the header limit maxHeader read
// what data puts in the client's control block and ring (seedSide), and
// returns why the connection closed (nil if it did not) and how many
// calls it ran.
func serveSeed(t *testing.T, data []byte, maxHeader uint32) (error, int) {
	t.Helper()
	seg, lay := fuzzSegment(data)
	calls := 0
	sc := NewServer(&Accepted{seg: seg, lay: lay}, ServerConfig{Window: 1 << 20, MaxRecv: 4 << 20, MaxHeader: maxHeader}, NewWorkers(), echoHandler{})
	for i := 0; i < 10; i++ {
		n, ok := sc.c.drainOrCheck()
		for _, st := range sc.ready {
			st.run()
			calls++
		}
		sc.ready = sc.ready[:0]
		if !ok || n == 0 {
			break
		}
	}
	err := sc.c.closeErr()
	sc.c.fail(context.Canceled)
	sc.c.endReader()
	sc.c.waitReleased()
	return err, calls
}

// TestHeaderBlockFragments: a request header block in fragments is
// served as one; blocks that break L1 to L4 close the connection with a
// violation naming the rule.
func TestHeaderBlockFragments(t *testing.T) {
	msg := []byte{0x0a, 0x01, 'x'}
	end := seedFrame{frame.TypeMessage, frame.FlagEndStream, 1, uint32(len(msg)), msg}
	big := bigRequest(1500) // fuzzRing's records hold 2032 bytes; fragments of 600
	other := bigRequest(100)
	for _, tc := range []struct {
		name      string
		frames    []seedFrame
		maxHeader uint32
		want      string // the rule in the violation, or "" for a call served
	}{
		{"fragmented", append(fragments(frame.TypeHeaders, 0, 1, big, 600), end), 0, ""},
		{"in one fragment with MORE and an empty last", []seedFrame{
			{frame.TypeHeaders, frame.FlagMore, 1, uint32(len(other)), other},
			{frame.TypeHeaders, 0, 1, 0, nil}, end}, 0, ""},
		{"a MESSAGE inside the block", append(fragments(frame.TypeHeaders, 0, 1, big, 600)[:1], end), 0, "(L1)"},
		{"another stream's HEADERS inside the block", append(fragments(frame.TypeHeaders, 0, 1, big, 600)[:1], fragments(frame.TypeHeaders, 0, 3, big, 600)...), 0, "(L1)"},
		{"first fragment longer than the block", []seedFrame{{frame.TypeHeaders, frame.FlagMore, 1, 10, other}}, 0, "(L2)"},
		{"block over the limit, announced", fragments(frame.TypeHeaders, 0, 1, big, 600)[:1], 1000, "(L3)"},
		{"block over the limit, in one frame", []seedFrame{{frame.TypeHeaders, 0, 1, 0, other}}, 100, "(L3)"},
		{"fragments beyond the block", []seedFrame{
			{frame.TypeHeaders, frame.FlagMore, 1, uint32(len(other)), other[:50]},
			{frame.TypeHeaders, frame.FlagMore, 1, 0, other[50:]},
			{frame.TypeHeaders, 0, 1, 0, []byte{1}}}, 0, "(L4)"},
		{"last fragment short of the block", []seedFrame{
			{frame.TypeHeaders, frame.FlagMore, 1, uint32(len(other)), other[:50]},
			{frame.TypeHeaders, 0, 1, 0, other[50:60]}}, 0, "(L4)"},
	} {
		err, calls := serveSeed(t, seedSide(tc.frames...), tc.maxHeader)
		switch {
		case tc.want == "" && (err != nil || calls != 1):
			t.Errorf("%s: closed with %v after %d calls, want 1 call served", tc.name, err, calls)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || calls != 0):
			t.Errorf("%s: closed with %v after %d calls, want a violation of %s and no call", tc.name, err, calls, tc.want)
		}
	}
}

// TestClientAssemblesResponseBlocks: response headers and trailers in
// fragments reach the call whole, and a block over the client's limit is
// a violation (L3).
func TestClientAssemblesResponseBlocks(t *testing.T) {
	hb := (&frame.ResponseHeaders{MD: metadata.Pairs("h", strings.Repeat("h", 1500))}).Append(nil)
	tb := (&frame.Status{Code: 5, Message: "not found", MD: metadata.Pairs("t", strings.Repeat("t", 1500))}).Append(nil)
	frames := append(fragments(frame.TypeHeaders, 0, 1, hb, 700), fragments(frame.TypeTrailers, 0, 1, tb, 700)...)
	for _, tc := range []struct {
		limit int
		want  string
	}{{pool.DefaultHeaderLimit, ""}, {1000, "(L3)"}} {
		tr, s := seedClient(seedSide(frames...), tc.limit)
		header, trailer, st := s.Result()
		err := tr.c.closeErr()
		switch {
		case tc.want == "" && (err != nil || len(header.Get("h")[0]) != 1500 || len(trailer.Get("t")[0]) != 1500 || st.Code() != codes.NotFound):
			t.Errorf("limit %d: closed with %v; header %v, trailer %v, status %v", tc.limit, err, len(header["h"]), len(trailer["t"]), st)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("limit %d: closed with %v, want a violation of %s", tc.limit, err, tc.want)
		}
		tr.c.fail(context.Canceled)
		tr.c.endReader()
		tr.c.waitReleased()
	}
}

// seedClient makes a client connection, with one call open on stream 1
// and the header limit limit, that reads what data puts where the server
// writes (seedSide), and lets it read.
func seedClient(data []byte, limit int) (*Client, *ClientStream) {
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
	tr.c.headerLimit = limit
	s := &ClientStream{t: tr, ctx: context.Background(), maxRecv: 4 << 20}
	s.init(1, tr.c, s.maxRecv, 1<<20)
	tr.streams[1], tr.lastID = s, 1
	for i := 0; i < 3; i++ {
		if n, ok := tr.c.drainOrCheck(); !ok || n == 0 {
			break
		}
	}
	return tr, s
}
