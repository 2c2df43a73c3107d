package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/notnets/notnets/internal/ring"
)

// rawHeader builds a 16-byte frame header followed by payload.
type rawHeader struct {
	length     int // -1: len(payload)
	typ        byte
	flags      byte
	res6, res7 byte
	stream     uint32
	aux        uint32
}

func (r rawHeader) build(payload []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	n := r.length
	if n < 0 {
		n = len(payload)
	}
	binary.LittleEndian.PutUint32(b[0:4], uint32(n))
	b[4] = r.typ
	b[5] = r.flags
	b[6] = r.res6
	b[7] = r.res7
	binary.LittleEndian.PutUint32(b[8:12], r.stream)
	binary.LittleEndian.PutUint32(b[12:16], r.aux)
	return append(b, payload...)
}

func TestTypeString(t *testing.T) {
	for _, tc := range []struct {
		t    Type
		want string
	}{
		{TypeHeaders, "HEADERS"}, {TypeMessage, "MESSAGE"}, {TypeTrailers, "TRAILERS"},
		{TypeCancel, "CANCEL"}, {TypeHalfClose, "HALF_CLOSE"},
		{TypeWindowUpdate, "WINDOW_UPDATE"}, {TypeGoAway, "GOAWAY"}, {TypeMessageRef, "MESSAGE_REF"},
		{0, "type(0)"}, {1, "type(1)"}, {10, "type(10)"}, {255, "type(255)"},
	} {
		if got := tc.t.String(); got != tc.want {
			t.Errorf("Type(%d).String() = %q, want %q", byte(tc.t), got, tc.want)
		}
	}
}

func TestHeaderSize(t *testing.T) {
	if HeaderSize != ring.HeaderSize {
		t.Fatalf("HeaderSize = %d, ring.HeaderSize = %d", HeaderSize, ring.HeaderSize)
	}
	if len(rawHeader{}.build(nil)) != HeaderSize {
		t.Fatalf("HeaderSize = %d, the layout has 16 bytes", HeaderSize)
	}
	if byte(TypeHeaders) <= ring.KindPad {
		t.Fatal("frame types overlap the ring's kinds")
	}
}

func TestParse(t *testing.T) {
	payload := []byte("hello, payload")
	for _, tc := range []struct {
		name    string
		h       rawHeader
		payload []byte
		wantErr string // "" for success
	}{
		{"headers", rawHeader{length: -1, typ: 2, stream: 1}, payload, ""},
		{"message more", rawHeader{length: -1, typ: 3, flags: 1, stream: 7, aux: 1 << 20}, payload, ""},
		{"message end stream", rawHeader{length: -1, typ: 3, flags: 2, stream: 7}, nil, ""},
		{"message both flags", rawHeader{length: -1, typ: 3, flags: 3, stream: 0xffffffff, aux: 0xffffffff}, payload, "ends the stream in the middle of a message"},
		{"message max stream and aux", rawHeader{length: -1, typ: 3, flags: 2, stream: 0xffffffff, aux: 0xffffffff}, payload, ""},
		{"trailers", rawHeader{length: -1, typ: 4, stream: 3}, payload, ""},
		{"cancel", rawHeader{length: -1, typ: 5, stream: 3}, payload, ""},
		{"half close", rawHeader{length: -1, typ: 6, stream: 3}, nil, ""},
		{"window update", rawHeader{length: -1, typ: 7, stream: 9, aux: 65536}, nil, ""},
		{"goaway stream 0", rawHeader{length: -1, typ: 8}, payload, ""},
		{"goaway stream 5", rawHeader{length: -1, typ: 8, stream: 5}, payload, ""},
		{"empty payload", rawHeader{length: -1, typ: 2, stream: 1}, nil, ""},
		{"large payload", rawHeader{length: -1, typ: 3, stream: 1}, make([]byte, 70000), ""},

		{"type 0", rawHeader{length: -1, typ: 0, stream: 1}, payload, "unknown frame type 0"},
		{"type pad", rawHeader{length: -1, typ: 1, stream: 1}, payload, "unknown frame type 1"},
		{"type 10", rawHeader{length: -1, typ: 10, stream: 1}, payload, "unknown frame type 10"},
		{"fragmented reference", rawHeader{length: -1, typ: 9, flags: 1, stream: 1}, payload, "never fragmented"},
		{"type 255", rawHeader{length: -1, typ: 255, stream: 1}, nil, "unknown frame type 255"},
		{"flag 8", rawHeader{length: -1, typ: 3, flags: 8, stream: 1}, payload, "unknown flags"},
		{"refused on a message", rawHeader{length: -1, typ: 3, flags: 4, stream: 1}, payload, "REFUSED goes alone on TRAILERS"},
		{"refused with more", rawHeader{length: -1, typ: 4, flags: 5, stream: 1}, payload, "REFUSED goes alone on TRAILERS"},
		{"flag 0x80", rawHeader{length: -1, typ: 2, flags: 0x80, stream: 1}, payload, "unknown flags"},
		{"all flags", rawHeader{length: -1, typ: 8, flags: 0xff}, payload, "unknown flags"},
		{"reserved byte 6", rawHeader{length: -1, typ: 2, res6: 1, stream: 1}, payload, "reserved"},
		{"reserved byte 7", rawHeader{length: -1, typ: 3, res7: 0x80, stream: 1}, payload, "reserved"},
		{"reserved on goaway", rawHeader{length: -1, typ: 8, res6: 2, res7: 2}, nil, "reserved"},
		{"headers stream 0", rawHeader{length: -1, typ: 2}, payload, "stream 0"},
		{"message stream 0", rawHeader{length: -1, typ: 3}, payload, "stream 0"},
		{"trailers stream 0", rawHeader{length: -1, typ: 4}, payload, "stream 0"},
		{"cancel stream 0", rawHeader{length: -1, typ: 5}, payload, "stream 0"},
		{"half close stream 0", rawHeader{length: -1, typ: 6}, nil, "stream 0"},
		{"window update stream 0", rawHeader{length: -1, typ: 7, aux: 5}, nil, "stream 0"},
		{"length too big", rawHeader{length: len(payload) + 1, typ: 2, stream: 1}, payload, "length"},
		{"length too small", rawHeader{length: len(payload) - 1, typ: 2, stream: 1}, payload, "length"},
		{"length 0 with payload", rawHeader{length: 0, typ: 2, stream: 1}, payload, "length"},
		{"length huge", rawHeader{length: 0xffffffff, typ: 2, stream: 1}, payload, "length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.h.build(tc.payload)
			orig := slices.Clone(rec)
			h, p, err := Parse(rec)
			if !bytes.Equal(rec, orig) {
				t.Fatal("Parse modified the record")
			}
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse = %+v, nil error; want error containing %q", h, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Parse error %q does not mention %q", err, tc.wantErr)
				}
				if p != nil {
					t.Errorf("Parse returned a %d-byte payload with an error", len(p))
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := Header{Length: len(tc.payload), Type: Type(tc.h.typ), Flags: Flags(tc.h.flags), Stream: tc.h.stream, Aux: tc.h.aux}
			if h != want {
				t.Errorf("Parse header = %+v, want %+v", h, want)
			}
			if !bytes.Equal(p, tc.payload) {
				t.Errorf("Parse payload = %q, want %q", p, tc.payload)
			}
			if len(p) > 0 && &p[0] != &rec[HeaderSize] {
				t.Error("Parse payload does not alias the record")
			}
		})
	}
}

// TestParseShort checks records shorter than a header: they never match
// their length field and must not panic.
func TestParseShort(t *testing.T) {
	full := rawHeader{length: 0, typ: 8}.build(nil)
	for n := 0; n < HeaderSize; n++ {
		for _, rec := range [][]byte{full[:n], make([]byte, n)} {
			_, p, err := Parse(rec)
			if err == nil || p != nil {
				t.Errorf("Parse of %d bytes = %v, %v; want an error", n, p, err)
			}
		}
	}
	if _, _, err := Parse(nil); err == nil {
		t.Error("Parse(nil) succeeded")
	}
}

// TestParseChecksCopy checks that Parse decides on a copy of the header:
// changing the record after Parse does not change the returned header.
func TestParseChecksCopy(t *testing.T) {
	rec := rawHeader{length: -1, typ: 3, flags: 1, stream: 42, aux: 7}.build([]byte("abc"))
	h, _, err := Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range HeaderSize {
		rec[i] = 0xff
	}
	if h != (Header{Length: 3, Type: TypeMessage, Flags: FlagMore, Stream: 42, Aux: 7}) {
		t.Errorf("header changed with the record: %+v", h)
	}
}

func TestPut(t *testing.T) {
	rec := make([]byte, HeaderSize+4)
	for i := range rec {
		rec[i] = 0xaa
	}
	binary.LittleEndian.PutUint32(rec[0:4], 4)
	rec[4] = byte(TypeMessage)
	rec[6], rec[7] = 0, 0
	Put(rec, FlagEndStream, 0x01020304, 0xa0b0c0d0)
	want := []byte{4, 0, 0, 0, 3, 2, 0, 0, 4, 3, 2, 1, 0xd0, 0xc0, 0xb0, 0xa0, 0xaa, 0xaa, 0xaa, 0xaa}
	if !bytes.Equal(rec, want) {
		t.Fatalf("Put wrote % x, want % x", rec, want)
	}
	h, p, err := Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	if h != (Header{Length: 4, Type: TypeMessage, Flags: FlagEndStream, Stream: 0x01020304, Aux: 0xa0b0c0d0}) {
		t.Errorf("Parse after Put = %+v", h)
	}
	if len(p) != 4 {
		t.Errorf("payload of %d bytes", len(p))
	}
}

// TestThroughRing sends frames of every type through a ring with Reserve,
// Put and Append, and reads them back with Next, Parse and Decode.
func TestThroughRing(t *testing.T) {
	data := make([]byte, 8192)
	var tail, head atomic.Uint64
	p := ring.NewProducer(data, &tail, &head)
	c := ring.NewConsumer(data, &tail, &head)
	st := &Status{Code: 5, Message: "not found", Details: []byte{1, 2, 3}, MD: metadata.Pairs("k", "v")}
	rh := &RequestHeaders{Timeout: time.Second, Method: "/svc/M", MD: metadata.Pairs("a", "1", "a", "2")}
	var frames []sentFrame
	for i := range 40 {
		var f sentFrame
		switch i % 5 {
		case 0:
			f = sentFrame{TypeHeaders, 0, uint32(i + 1), 0, rh.Append(nil)}
		case 1:
			f = sentFrame{TypeMessage, FlagMore, uint32(i + 1), 9000, bytes.Repeat([]byte{byte(i)}, 1000+i)}
		case 2:
			f = sentFrame{TypeTrailers, 0, uint32(i + 1), 0, st.Append(nil)}
		case 3:
			f = sentFrame{TypeWindowUpdate, 0, uint32(i + 1), 1234, nil}
		case 4:
			f = sentFrame{TypeGoAway, 0, 0, 0, (&GoAway{Reason: "bye"}).Append(nil)}
		}
		frames = append(frames, f)
	}
	next := 0
	for _, f := range frames {
		rec := p.Reserve(len(f.body), byte(f.typ))
		for rec == nil { // drain to make room
			p.Publish()
			next += readFrames(t, c, frames[next:])
			rec = p.Reserve(len(f.body), byte(f.typ))
		}
		Put(rec, f.flags, f.stream, f.aux)
		copy(rec[HeaderSize:], f.body)
	}
	p.Publish()
	next += readFrames(t, c, frames[next:])
	if next != len(frames) {
		t.Fatalf("read %d frames, sent %d", next, len(frames))
	}
}

type sentFrame struct {
	typ    Type
	flags  Flags
	stream uint32
	aux    uint32
	body   []byte
}

func readFrames(t *testing.T, c *ring.Consumer, want []sentFrame) int {
	t.Helper()
	n := 0
	for ; ; n++ {
		rec, err := c.Next()
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil {
			c.Release()
			return n
		}
		h, p, err := Parse(rec)
		if err != nil {
			t.Fatalf("frame %d: %v", n, err)
		}
		w := want[n]
		if h.Type != w.typ || h.Flags != w.flags || h.Stream != w.stream || h.Aux != w.aux ||
			h.Length != len(w.body) || !bytes.Equal(p, w.body) {
			t.Fatalf("frame %d: got %+v with %d bytes, want %+v", n, h, len(p), want[n])
		}
		switch h.Type {
		case TypeHeaders:
			var x RequestHeaders
			mustDecode(t, &x, p)
		case TypeTrailers:
			var x Status
			mustDecode(t, &x, p)
		case TypeGoAway:
			var x GoAway
			mustDecode(t, &x, p)
			if x.Reason != "bye" {
				t.Fatalf("goaway reason %q", x.Reason)
			}
		}
	}
}

func mustDecode(t *testing.T, x interface{ Decode([]byte) error }, p []byte) {
	t.Helper()
	if err := x.Decode(p); err != nil {
		t.Fatalf("Decode: %v", err)
	}
}

// payload is what the four payload types have in common.
type payload interface {
	Size() int
	Append([]byte) []byte
	Decode([]byte) error
}

// mdEqual compares metadata, treating nil and empty as equal and keys with
// no values as absent (they encode to nothing).
func mdEqual(a, b metadata.MD) bool {
	count := func(md metadata.MD) int {
		n := 0
		for _, vs := range md {
			if len(vs) > 0 {
				n++
			}
		}
		return n
	}
	if count(a) != count(b) {
		return false
	}
	for k, vs := range a {
		if len(vs) == 0 {
			continue
		}
		if !slices.Equal(vs, b[k]) {
			return false
		}
	}
	return true
}

// payloadEqual compares two payloads of the same type by value.
func payloadEqual(a, b payload) bool {
	switch a := a.(type) {
	case *RequestHeaders:
		b := b.(*RequestHeaders)
		return a.Timeout == b.Timeout && a.Method == b.Method && a.ContentSubtype == b.ContentSubtype && mdEqual(a.MD, b.MD)
	case *ResponseHeaders:
		return mdEqual(a.MD, b.(*ResponseHeaders).MD)
	case *Status:
		b := b.(*Status)
		return a.Code == b.Code && a.Message == b.Message && bytes.Equal(a.Details, b.Details) && mdEqual(a.MD, b.MD)
	case *GoAway:
		return *a == *b.(*GoAway)
	}
	panic("unknown payload type")
}

// newLike returns a new zero payload of p's type.
func newLike(p payload) payload {
	return reflect.New(reflect.TypeOf(p).Elem()).Interface().(payload)
}

// checkRoundTrip encodes p, checks Size, decodes into a new value and
// compares it with p; it returns the encoding.
func checkRoundTrip(t *testing.T, p payload) []byte {
	t.Helper()
	enc := p.Append(nil)
	if p.Size() != len(enc) {
		t.Errorf("Size() = %d, len(Append(nil)) = %d", p.Size(), len(enc))
	}
	prefix := []byte("prefix")
	enc2 := p.Append(slices.Clip(prefix))
	if !bytes.HasPrefix(enc2, []byte("prefix")) || len(enc2) != len(prefix)+len(enc) {
		t.Errorf("Append to a prefix gave %d bytes, want prefix + %d", len(enc2), len(enc))
	}
	got := newLike(p)
	if err := got.Decode(enc); err != nil {
		t.Fatalf("Decode(Append(%+v)): %v", p, err)
	}
	if !payloadEqual(p, got) {
		t.Errorf("round trip changed the value:\n got %+v\nwant %+v", got, p)
	}
	// Decoding the encoding appended after a prefix gives the same value.
	again := newLike(p)
	if err := again.Decode(enc2[len(prefix):]); err != nil || !payloadEqual(p, again) {
		t.Errorf("decoding after a prefix: %+v, %v", again, err)
	}
	return enc
}

var allBytes = func() string {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return string(b)
}()

// testMDs is metadata of many shapes for the round-trip tests.
var testMDs = map[string]metadata.MD{
	"nil":   nil,
	"empty": {},
	"one":   metadata.Pairs("key", "value"),
	"several values per key": {
		"accept": {"a", "b", "c", "a"},
		"x-one":  {"1"},
		"x-many": {"", "second", "", "fourth"},
	},
	"binary values": {
		"trace-bin": {allBytes, "\x00", "", "\xff\xfe\x00\x01"},
		"id-bin":    {string([]byte{0x80, 0x81, 0xc0})},
		"plain":     {"ascii"},
	},
	"empty value":  {"k": {""}},
	"unicode":      {"k": {"héllo wörld ✓"}},
	"long value":   {"big": {strings.Repeat("v", 70000)}},
	"long key":     {strings.Repeat("k", 200): {"v"}},
	"128 pairs":    manyPairs(128),
	"127 pairs":    manyPairs(127),
	"300 keys":     manyKeys(300),
	"key, no vals": {"a": {"1"}, "gone": {}},
}

func manyPairs(n int) metadata.MD {
	md := metadata.MD{}
	for i := range n {
		md["k"] = append(md["k"], strings.Repeat("x", i))
	}
	return md
}

func manyKeys(n int) metadata.MD {
	md := metadata.MD{}
	for i := range n {
		k := "key-" + strings.Repeat("z", i%7) + string(rune('a'+i%26)) + strings.Repeat("q", i/26)
		md[k] = append(md[k], k+"-value")
	}
	return md
}

func TestRequestHeadersRoundTrip(t *testing.T) {
	var cases []*RequestHeaders
	for _, d := range []time.Duration{0, 1, 127, 128, time.Millisecond, time.Hour, 1<<62 + 5, math.MaxInt64} {
		cases = append(cases, &RequestHeaders{Timeout: d, Method: "/pkg.Service/Method"})
	}
	for _, md := range testMDs {
		cases = append(cases, &RequestHeaders{Timeout: 3 * time.Second, Method: "/a/b", ContentSubtype: "proto", MD: md})
	}
	cases = append(cases,
		&RequestHeaders{},
		&RequestHeaders{Method: strings.Repeat("m", 127), ContentSubtype: strings.Repeat("c", 128)},
		&RequestHeaders{Method: strings.Repeat("m", 16384), ContentSubtype: "json"},
		&RequestHeaders{Method: "\x00\xff", MD: testMDs["binary values"]},
	)
	for _, c := range cases {
		checkRoundTrip(t, c)
	}
}

func TestResponseHeadersRoundTrip(t *testing.T) {
	for name, md := range testMDs {
		t.Run(name, func(t *testing.T) {
			enc := checkRoundTrip(t, &ResponseHeaders{MD: md})
			if len(md) == 0 && !bytes.Equal(enc, []byte{0}) {
				t.Errorf("empty metadata encodes to % x, want 00", enc)
			}
		})
	}
}

func TestStatusRoundTrip(t *testing.T) {
	var cases []*Status
	for _, code := range []uint32{0, 1, 16, 127, 128, 1 << 20, 1<<31 - 1, 1 << 31} {
		cases = append(cases, &Status{Code: code, Message: "m"})
	}
	for _, md := range testMDs {
		cases = append(cases, &Status{Code: 13, Message: "internal", Details: []byte{8, 13}, MD: md})
	}
	cases = append(cases,
		&Status{},
		&Status{Details: []byte{}},
		&Status{Details: []byte(allBytes)},
		&Status{Code: 2, Message: strings.Repeat("é", 5000), Details: make([]byte, 20000)},
	)
	for _, c := range cases {
		checkRoundTrip(t, c)
	}
}

func TestGoAwayRoundTrip(t *testing.T) {
	for _, r := range []string{"", "x", "server shutting down", allBytes, strings.Repeat("r", 127), strings.Repeat("r", 128), strings.Repeat("r", 1<<17)} {
		checkRoundTrip(t, &GoAway{Reason: r})
	}
}

// TestGolden pins the exact encodings.
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    payload
		want []byte
	}{
		{"goaway empty", &GoAway{}, []byte{0}},
		{"goaway", &GoAway{Reason: "hi"}, []byte{2, 'h', 'i'}},
		{"response headers nil", &ResponseHeaders{}, []byte{0}},
		{"response headers", &ResponseHeaders{MD: metadata.MD{"k": {"v1", "v2"}}},
			[]byte{2, 1, 'k', 2, 'v', '1', 1, 'k', 2, 'v', '2'}},
		{"status", &Status{Code: 5, Message: "x", Details: []byte{1, 2}, MD: metadata.MD{"k": {"v"}}},
			[]byte{5, 1, 'x', 2, 1, 2, 1, 1, 'k', 1, 'v'}},
		{"status big code", &Status{Code: 300}, []byte{0xac, 0x02, 0, 0, 0}},
		{"request headers", &RequestHeaders{Timeout: 200, Method: "/m", ContentSubtype: "c"},
			[]byte{0xc8, 0x01, 2, '/', 'm', 1, 'c', 0}},
		{"request headers max timeout", &RequestHeaders{Timeout: math.MaxInt64},
			[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0}},
	} {
		got := tc.p.Append(nil)
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: Append = % x, want % x", tc.name, got, tc.want)
		}
		d := newLike(tc.p)
		if err := d.Decode(tc.want); err != nil || !payloadEqual(d, tc.p) {
			t.Errorf("%s: Decode = %+v, %v", tc.name, d, err)
		}
	}
}

// TestMetadataValueOrder checks that several values of one key keep their
// order, whatever the map iteration order.
func TestMetadataValueOrder(t *testing.T) {
	md := metadata.MD{}
	for i := range 50 {
		md["a"] = append(md["a"], string(rune('A'+i%26))+strings.Repeat("!", i))
		md["b"] = append(md["b"], strings.Repeat("?", 50-i))
	}
	for range 20 {
		var got ResponseHeaders
		if err := got.Decode((&ResponseHeaders{MD: md}).Append(nil)); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.MD, md) {
			t.Fatal("values reordered")
		}
	}
}

// TestDecodeResets checks that Decode overwrites every field, even with
// empty values.
func TestDecodeResets(t *testing.T) {
	rh := RequestHeaders{Timeout: 5, Method: "old", ContentSubtype: "old", MD: metadata.Pairs("old", "old")}
	mustDecode(t, &rh, (&RequestHeaders{}).Append(nil))
	if rh.Timeout != 0 || rh.Method != "" || rh.ContentSubtype != "" || rh.MD != nil {
		t.Errorf("RequestHeaders after decoding the zero value: %+v", rh)
	}
	st := Status{Code: 3, Message: "old", Details: []byte("old"), MD: metadata.Pairs("old", "old")}
	mustDecode(t, &st, (&Status{}).Append(nil))
	if st.Code != 0 || st.Message != "" || len(st.Details) != 0 || st.MD != nil {
		t.Errorf("Status after decoding the zero value: %+v", st)
	}
	resp := ResponseHeaders{MD: metadata.Pairs("old", "old")}
	mustDecode(t, &resp, []byte{0})
	if resp.MD != nil {
		t.Errorf("ResponseHeaders after decoding no metadata: %+v", resp)
	}
	g := GoAway{Reason: "old"}
	mustDecode(t, &g, []byte{0})
	if g.Reason != "" {
		t.Errorf("GoAway after decoding an empty reason: %+v", g)
	}
}

// TestStatusDetailsAlias checks the documented aliasing of Details, and
// that Details cannot grow into the bytes that follow them.
func TestStatusDetailsAlias(t *testing.T) {
	enc := (&Status{Code: 1, Details: []byte{1, 2, 3}, MD: metadata.Pairs("k", "v")}).Append(nil)
	var st Status
	mustDecode(t, &st, enc)
	if cap(st.Details) != len(st.Details) {
		t.Errorf("Details has capacity %d beyond its %d bytes", cap(st.Details), len(st.Details))
	}
	i := bytes.Index(enc, []byte{1, 2, 3})
	enc[i] = 9
	if st.Details[0] != 9 {
		t.Error("Details do not alias the payload as documented")
	}
	_ = append(st.Details, 0xee) // must not overwrite the metadata
	var again Status
	enc[i] = 1
	mustDecode(t, &again, enc)
	if !mdEqual(again.MD, metadata.Pairs("k", "v")) {
		t.Error("appending to Details overwrote the payload")
	}
}

// decodeErrorCase is an encoding each listed payload type must reject.
type decodeErrorCase struct {
	name  string
	in    []byte
	types []payload
}

func uv(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func str(s string) []byte { return append(uv(uint64(len(s))), s...) }

func TestDecodeErrors(t *testing.T) {
	all := func() []payload { return []payload{&RequestHeaders{}, &ResponseHeaders{}, &Status{}, &GoAway{}} }
	rq := func() []payload { return []payload{&RequestHeaders{}} }
	rs := func() []payload { return []payload{&ResponseHeaders{}} }
	st := func() []payload { return []payload{&Status{}} }
	ga := func() []payload { return []payload{&GoAway{}} }
	okMD := cat(uv(1), str("k"), str("v"))
	overflow := bytes.Repeat([]byte{0xff}, 10) // 10-byte varint beyond 64 bits
	eleven := append(bytes.Repeat([]byte{0x80}, 10), 0)
	cases := []decodeErrorCase{
		{"empty input", nil, all()},
		{"lone continuation byte", []byte{0x80}, all()},
		{"varint overflow", overflow, all()},
		{"varint of 11 bytes", eleven, all()},

		{"timeout out of range", cat(uv(1<<63), str("/m"), str(""), uv(0)), rq()},
		{"timeout max uint64", cat(uv(math.MaxUint64), str("/m"), str(""), uv(0)), rq()},
		{"method length beyond input", cat(uv(0), uv(10), []byte("abc")), rq()},
		{"method length huge", cat(uv(0), uv(1<<62), []byte("abc")), rq()},
		{"method length max", cat(uv(0), uv(math.MaxUint64), []byte("abc")), rq()},
		{"missing subtype", cat(uv(0), str("/m")), rq()},
		{"missing metadata", cat(uv(0), str("/m"), str("")), rq()},
		{"request trailing byte", cat(uv(0), str("/m"), str(""), uv(0), []byte{0}), rq()},
		{"request empty key", cat(uv(0), str("/m"), str(""), uv(1), str(""), str("v")), rq()},

		{"md too many pairs", cat(uv(3), str("k"), str("v")), rs()},
		{"md pairs huge", cat(uv(1<<60), str("k"), str("v")), rs()},
		{"md pairs max", cat(uv(math.MaxUint64), str("k"), str("v")), rs()},
		{"md pairs one more than bytes/2", cat(uv(3), []byte{0, 0, 0, 0}), rs()},
		{"md empty key", cat(uv(1), str(""), str("v")), rs()},
		{"md empty key second", cat(uv(2), str("a"), str("1"), str(""), str("2")), rs()},
		{"md empty key and value", cat(uv(1), []byte{0, 0}), rs()},
		{"md key length beyond input", cat(uv(1), uv(50), []byte("kv")), rs()},
		{"md value length huge", cat(uv(1), str("k"), uv(1<<40), []byte("v")), rs()},
		{"md value missing", cat(uv(1), str("key"), []byte{}), rs()},
		{"md trailing bytes", cat(okMD, []byte{1, 2, 3}), rs()},
		{"md trailing zero", cat(okMD, []byte{0}), rs()},
		{"md bad varint in key", cat(uv(1), []byte{0x80, 0x80}), rs()},

		{"status code 2^32", cat(uv(1<<32), str(""), str(""), uv(0)), st()},
		{"status code huge", cat(uv(1<<60), str(""), str(""), uv(0)), st()},
		{"status details beyond input", cat(uv(0), str("m"), uv(5), []byte{1, 2}), st()},
		{"status details huge", cat(uv(0), str("m"), uv(math.MaxUint64)), st()},
		{"status missing metadata", cat(uv(0), str("m"), str("d")), st()},
		{"status trailing", cat(uv(0), str("m"), str("d"), uv(0), []byte{7}), st()},
		{"status empty key", cat(uv(0), str(""), str(""), uv(1), str(""), str("")), st()},

		{"goaway length beyond input", cat(uv(10), []byte("short")), ga()},
		{"goaway huge", cat(uv(1<<63), []byte("x")), ga()},
		{"goaway trailing", cat(str("bye"), []byte{0}), ga()},
	}
	for _, tc := range cases {
		for _, p := range tc.types {
			name := tc.name + "/" + reflect.TypeOf(p).Elem().Name()
			if err := decodeError(p, tc.in); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
}

// decodeError checks that p.Decode(in) fails with ErrPayload without
// panicking, and describes what went wrong otherwise.
func decodeError(p payload, in []byte) (problem error) {
	defer func() {
		if v := recover(); v != nil {
			problem = fmt.Errorf("Decode(% x) panicked: %v", head(in), v)
		}
	}()
	err := p.Decode(in)
	if err == nil {
		return fmt.Errorf("Decode(% x) = %+v, nil error; want an error", head(in), p)
	}
	if !errors.Is(err, ErrPayload) {
		return fmt.Errorf("Decode error %q does not wrap ErrPayload", err)
	}
	return nil
}

func head(b []byte) []byte { return b[:min(len(b), 32)] }

// TestDecodeTruncatedAndTrailing checks every strict prefix of valid
// encodings (all fields are required, so each must fail) and the encodings
// with a byte appended.
func TestDecodeTruncatedAndTrailing(t *testing.T) {
	values := []payload{
		&RequestHeaders{},
		&RequestHeaders{Timeout: time.Hour, Method: "/svc.S/M", ContentSubtype: "proto", MD: testMDs["several values per key"]},
		&RequestHeaders{Timeout: math.MaxInt64, Method: strings.Repeat("m", 200), MD: testMDs["binary values"]},
		&ResponseHeaders{},
		&ResponseHeaders{MD: testMDs["binary values"]},
		&ResponseHeaders{MD: manyPairs(130)},
		&Status{},
		&Status{Code: 1 << 31, Message: "msg", Details: []byte(allBytes), MD: testMDs["one"]},
		&Status{Code: 3, Details: make([]byte, 200)},
		&GoAway{},
		&GoAway{Reason: strings.Repeat("bye", 100)},
	}
	for _, v := range values {
		enc := v.Append(nil)
		for n := range len(enc) {
			if err := decodeError(newLike(v), enc[:n]); err != nil {
				t.Errorf("%T, %d of %d bytes: %v", v, n, len(enc), err)
				break
			}
		}
		for _, extra := range [][]byte{{0}, {0x80}, {1, 2, 3}, enc} {
			if err := decodeError(newLike(v), cat(enc, extra)); err != nil {
				t.Errorf("%T with %d trailing bytes: %v", v, len(extra), err)
			}
		}
	}
}

// TestDecodeNonMinimalVarint documents that non-minimal varints are
// accepted, and that they re-encode minimally.
func TestDecodeNonMinimalVarint(t *testing.T) {
	var g GoAway
	mustDecode(t, &g, []byte{0x82, 0x00, 'h', 'i'})
	if g.Reason != "hi" {
		t.Fatalf("Reason = %q", g.Reason)
	}
	if enc := g.Append(nil); !bytes.Equal(enc, []byte{2, 'h', 'i'}) {
		t.Errorf("re-encoding = % x", enc)
	}
}

func TestErrorMessagesNameThePayload(t *testing.T) {
	for _, tc := range []struct {
		p    payload
		want string
	}{
		{&RequestHeaders{}, "request headers"},
		{&ResponseHeaders{}, "response headers"},
		{&Status{}, "status"},
		{&GoAway{}, "goaway"},
	} {
		err := tc.p.Decode(nil)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want+": ") {
			t.Errorf("%T.Decode(nil) error %q does not start with %q", tc.p, err, tc.want)
		}
	}
}

// TestMetadataPairsBound checks that a pair count above half the remaining
// bytes is refused before anything is decoded (or allocated) for it, and
// that the bound is exact.
func TestMetadataPairsBound(t *testing.T) {
	var rh ResponseHeaders
	err := rh.Decode([]byte{3, 1, 'k', 1})
	if !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), "3 metadata pairs in 3 bytes") {
		t.Errorf("3 pairs in 3 bytes: %v", err)
	}
	err = rh.Decode([]byte{2, 1, 'k', 1})
	if !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), "2 metadata pairs in 3 bytes") {
		t.Errorf("2 pairs in 3 bytes: %v", err)
	}
	err = rh.Decode(cat(uv(1<<62), make([]byte, 100)))
	if !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), "metadata pairs in 100 bytes") {
		t.Errorf("2^62 pairs: %v", err)
	}
	// Two pairs in four bytes pass the bound; the empty keys fail later.
	err = rh.Decode([]byte{2, 0, 0, 0, 0})
	if !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), "empty metadata key") {
		t.Errorf("2 pairs in 4 bytes: %v", err)
	}
	// The smallest valid pairs: one-byte keys and empty values.
	mustDecode(t, &rh, []byte{2, 1, 'a', 0, 1, 'b', 0})
	if !mdEqual(rh.MD, metadata.MD{"a": {""}, "b": {""}}) {
		t.Errorf("MD = %v", rh.MD)
	}
}
