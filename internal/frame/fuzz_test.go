package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"google.golang.org/grpc/metadata"
)

// FuzzParse feeds arbitrary records to Parse. A record it accepts must
// satisfy every documented check, and its payload must be the rest of the
// record.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, rec []byte) {
		orig := slices.Clone(rec)
		h, p, err := Parse(rec)
		if !bytes.Equal(rec, orig) {
			t.Fatal("Parse modified the record")
		}
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned a %d-byte payload with error %v", len(p), err)
			}
			return
		}
		if len(rec) < HeaderSize {
			t.Fatalf("Parse accepted a %d-byte record", len(rec))
		}
		if h.Length != len(rec)-HeaderSize || len(p) != h.Length {
			t.Fatalf("length %d, payload %d bytes, record %d bytes", h.Length, len(p), len(rec))
		}
		if len(p) > 0 && &p[0] != &rec[HeaderSize] {
			t.Fatal("payload does not alias the record")
		}
		if h.Type < TypeHeaders || h.Type > TypeMessageRef {
			t.Fatalf("accepted type %d", h.Type)
		}
		if h.Flags&^knownFlags != 0 || h.Flags == FlagMore|FlagEndStream {
			t.Fatalf("accepted flags %#x", byte(h.Flags))
		}
		if h.Flags&FlagRefused != 0 && (h.Type != TypeTrailers || h.Flags != FlagRefused) {
			t.Fatalf("accepted REFUSED on %v with flags %#x (H8)", h.Type, byte(h.Flags))
		}
		if h.Stream == 0 && h.Type != TypeGoAway {
			t.Fatalf("accepted %v on stream 0", h.Type)
		}
		if h.Type == TypeMessageRef && h.Flags&FlagMore != 0 {
			t.Fatal("accepted a fragmented MESSAGE_REF")
		}
		// Rebuilding the header the way the writer does gives the record.
		b := make([]byte, HeaderSize)
		binary.LittleEndian.PutUint32(b[0:4], uint32(h.Length))
		b[4] = byte(h.Type)
		Put(b, h.Flags, h.Stream, h.Aux)
		if !bytes.Equal(b, rec[:HeaderSize]) {
			t.Fatalf("header % x rebuilds as % x", rec[:HeaderSize], b)
		}
	})
}

// FuzzPayloads decodes arbitrary bytes as each payload type. Decoding fails
// only with ErrPayload; what decodes re-encodes (at most as long as the
// input, since the encoder uses minimal varints), with Size matching, to
// bytes that decode to an equal value.
func FuzzPayloads(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, p := range []payload{&RequestHeaders{}, &ResponseHeaders{}, &Status{}, &GoAway{}} {
			orig := slices.Clone(in)
			err := p.Decode(in)
			if !bytes.Equal(in, orig) {
				t.Fatalf("%T.Decode modified its input", p)
			}
			if err != nil {
				if !errors.Is(err, ErrPayload) {
					t.Fatalf("%T.Decode error %q does not wrap ErrPayload", p, err)
				}
				continue
			}
			checkDecodedMD(t, p)
			enc := p.Append(nil)
			if p.Size() != len(enc) {
				t.Fatalf("%T: Size() = %d, len(Append(nil)) = %d", p, p.Size(), len(enc))
			}
			if len(enc) > len(in) {
				t.Fatalf("%T: %d input bytes re-encode to %d", p, len(in), len(enc))
			}
			q := newLike(p)
			if err := q.Decode(enc); err != nil {
				t.Fatalf("%T: re-encoding of %+v does not decode: %v", p, p, err)
			}
			if !payloadEqual(p, q) {
				t.Fatalf("%T: round trip changed the value:\n got %+v\nwant %+v", p, q, p)
			}
			if enc2 := q.Append(nil); len(enc2) != len(enc) {
				t.Fatalf("%T: second encoding is %d bytes, first %d", p, len(enc2), len(enc))
			}
		}
	})
}

// checkDecodedMD checks the metadata Decode produced: nil when there are no
// pairs, no empty key, no key without values.
func checkDecodedMD(t *testing.T, p payload) {
	var md metadata.MD
	switch p := p.(type) {
	case *RequestHeaders:
		md = p.MD
	case *ResponseHeaders:
		md = p.MD
	case *Status:
		md = p.MD
	default:
		return
	}
	if md != nil && len(md) == 0 {
		t.Fatalf("%T: decoded empty non-nil metadata", p)
	}
	for k, vs := range md {
		if k == "" {
			t.Fatalf("%T: decoded an empty metadata key", p)
		}
		if len(vs) == 0 {
			t.Fatalf("%T: decoded key %q without values", p, k)
		}
	}
}
