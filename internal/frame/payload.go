package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc/metadata"
)

// ErrPayload wraps every error about a malformed frame payload.
var ErrPayload = errors.New("malformed frame payload")

// RequestHeaders is the payload of a client HEADERS frame: the start of a
// call. Encoding: uvarint timeout in nanoseconds (0: none), string method,
// string content subtype, metadata.
type RequestHeaders struct {
	Timeout        time.Duration
	Method         string
	ContentSubtype string
	MD             metadata.MD
}

// Size returns the encoded size of h.
func (h *RequestHeaders) Size() int {
	return uvarintSize(uint64(h.Timeout)) + strSize(h.Method) + strSize(h.ContentSubtype) + mdSize(h.MD)
}

// Append appends the encoding of h to b.
func (h *RequestHeaders) Append(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(h.Timeout))
	b = appendStr(b, h.Method)
	b = appendStr(b, h.ContentSubtype)
	return appendMD(b, h.MD)
}

// ServerKeys is the room a request's metadata map has beyond its pairs:
// a server adds :authority, content-type and user-agent to it, which then
// need no larger map.
const ServerKeys = 3

// Decode parses p into h. Its metadata map has room for ServerKeys more
// keys.
func (h *RequestHeaders) Decode(p []byte) error {
	d := decoder{b: p}
	t := d.uvarint()
	if t > uint64(1<<63-1) {
		d.fail("timeout %d out of range", t)
	}
	h.Timeout = time.Duration(t)
	h.Method = d.str()
	h.ContentSubtype = d.str()
	h.MD = d.md(ServerKeys)
	return d.finish("request headers")
}

// ResponseHeaders is the payload of a server HEADERS frame: metadata.
type ResponseHeaders struct{ MD metadata.MD }

// Size returns the encoded size of h.
func (h *ResponseHeaders) Size() int { return mdSize(h.MD) }

// Append appends the encoding of h to b.
func (h *ResponseHeaders) Append(b []byte) []byte { return appendMD(b, h.MD) }

// Decode parses p into h.
func (h *ResponseHeaders) Decode(p []byte) error {
	d := decoder{b: p}
	h.MD = d.md(0)
	return d.finish("response headers")
}

// Status is the payload of TRAILERS and CANCEL frames: uvarint code, string
// message, bytes details (a serialized google.rpc.Status, or empty when the
// status has no details), metadata (trailers; always empty in CANCEL).
type Status struct {
	Code    uint32
	Message string
	Details []byte
	MD      metadata.MD
}

// Size returns the encoded size of s.
func (s *Status) Size() int {
	return uvarintSize(uint64(s.Code)) + strSize(s.Message) + uvarintSize(uint64(len(s.Details))) + len(s.Details) + mdSize(s.MD)
}

// Append appends the encoding of s to b.
func (s *Status) Append(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(s.Code))
	b = appendStr(b, s.Message)
	b = binary.AppendUvarint(b, uint64(len(s.Details)))
	b = append(b, s.Details...)
	return appendMD(b, s.MD)
}

// Decode parses p into s. Details alias p; copy them to keep them.
func (s *Status) Decode(p []byte) error {
	d := decoder{b: p}
	c := d.uvarint()
	if c > math.MaxUint32 {
		d.fail("status code %d out of range", c)
	}
	s.Code = uint32(c)
	s.Message = d.str()
	s.Details = d.bytes()
	s.MD = d.md(0)
	return d.finish("status")
}

// GoAway is the payload of a GOAWAY frame: a human-readable reason.
type GoAway struct{ Reason string }

// Size returns the encoded size of g.
func (g *GoAway) Size() int { return strSize(g.Reason) }

// Append appends the encoding of g to b.
func (g *GoAway) Append(b []byte) []byte { return appendStr(b, g.Reason) }

// Decode parses p into g.
func (g *GoAway) Decode(p []byte) error {
	d := decoder{b: p}
	g.Reason = d.str()
	return d.finish("goaway")
}

func uvarintSize(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func strSize(s string) int { return uvarintSize(uint64(len(s))) + len(s) }

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Metadata: uvarint number of pairs, then each pair as string key, string
// value. A key with several values appears once per value, in order.
func mdSize(md metadata.MD) int {
	n, pairs := 0, 0
	for k, vs := range md {
		for _, v := range vs {
			n += strSize(k) + strSize(v)
			pairs++
		}
	}
	return n + uvarintSize(uint64(pairs))
}

func appendMD(b []byte, md metadata.MD) []byte {
	pairs := 0
	for _, vs := range md {
		pairs += len(vs)
	}
	b = binary.AppendUvarint(b, uint64(pairs))
	for k, vs := range md {
		for _, v := range vs {
			b = appendStr(b, k)
			b = appendStr(b, v)
		}
	}
	return b
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrPayload}, args...)...)
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the %d bytes left", n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }

// md decodes metadata into a map with room for extra more keys.
func (d *decoder) md(extra int) metadata.MD {
	pairs := d.uvarint()
	if d.err != nil {
		return nil
	}
	// Each pair takes at least two bytes, which bounds the count before
	// anything is allocated for it.
	if pairs > uint64(len(d.b)/2) {
		d.fail("%d metadata pairs in %d bytes", pairs, len(d.b))
		return nil
	}
	if pairs == 0 {
		return nil
	}
	md := make(metadata.MD, int(pairs)+extra)
	for i := uint64(0); i < pairs && d.err == nil; i++ {
		k := d.str()
		v := d.str()
		if d.err == nil && k == "" {
			d.fail("empty metadata key")
		}
		md[k] = append(md[k], v)
	}
	return md
}

func (d *decoder) finish(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("%s: %w", what, d.err)
	}
	return nil
}
