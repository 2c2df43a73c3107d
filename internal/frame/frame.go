// Package frame defines the frames that notnets peers exchange through a
// ring, and the encodings of their payloads.
//
// A frame is one ring record (see package ring). Its 16-byte header is:
//
//	offset size field
//	0      4    payload length (ring)
//	4      1    type (ring: 0 invalid, 1 pad)
//	5      1    flags
//	6      2    reserved, zero
//	8      4    stream id
//	12     4    aux: MESSAGE: total message length on the first fragment;
//	            MESSAGE_REF: the message length;
//	            WINDOW_UPDATE: bytes returned; otherwise zero
//
// All integers are little-endian. Payload encodings use unsigned varints
// (as in protobuf) and strings as a varint length followed by the bytes.
package frame

import (
	"encoding/binary"
	"fmt"

	"github.com/notnets/notnets/internal/ring"
)

// Type is the type of a frame.
type Type byte

// Frame types. Values 0 and 1 belong to the ring.
const (
	TypeHeaders      Type = 2 // client: call start; server: response headers
	TypeMessage      Type = 3 // one fragment of a message
	TypeTrailers     Type = 4 // server: status and trailers; ends the stream
	TypeCancel       Type = 5 // client: abort the stream with a status
	TypeHalfClose    Type = 6 // client: no more messages on the stream
	TypeWindowUpdate Type = 7 // receiver: aux bytes of the stream's window consumed
	TypeGoAway       Type = 8 // stream 0; server: no new streams; either side: why it closes
	TypeMessageRef   Type = 9 // a whole message in the sender's heap (package arena)
	maxType          Type = 9
)

func (t Type) String() string {
	switch t {
	case TypeHeaders:
		return "HEADERS"
	case TypeMessage:
		return "MESSAGE"
	case TypeTrailers:
		return "TRAILERS"
	case TypeCancel:
		return "CANCEL"
	case TypeHalfClose:
		return "HALF_CLOSE"
	case TypeWindowUpdate:
		return "WINDOW_UPDATE"
	case TypeGoAway:
		return "GOAWAY"
	case TypeMessageRef:
		return "MESSAGE_REF"
	}
	return fmt.Sprintf("type(%d)", byte(t))
}

// Flags modify a frame.
type Flags byte

const (
	// FlagMore marks a MESSAGE fragment that more fragments of the same
	// message follow.
	FlagMore Flags = 1
	// FlagEndStream on a client MESSAGE or HEADERS frame means the client
	// sends nothing more on the stream (a half-close).
	FlagEndStream Flags = 2
	// FlagRefused on a server TRAILERS frame means the server did not run
	// the call and will not: the client may send it again (PROTOCOL.md
	// 10.8), as HTTP/2's REFUSED_STREAM allows.
	FlagRefused Flags = 4
	knownFlags        = FlagMore | FlagEndStream | FlagRefused
)

// HeaderSize is the size of a frame header.
const HeaderSize = ring.HeaderSize

// Header is a decoded frame header.
type Header struct {
	Length int
	Type   Type
	Flags  Flags
	Stream uint32
	Aux    uint32
}

// Put writes h's fields other than length and type (which the ring wrote
// at Reserve) into the record rec.
func Put(rec []byte, flags Flags, stream, aux uint32) {
	rec[5] = byte(flags)
	binary.LittleEndian.PutUint32(rec[8:12], stream)
	binary.LittleEndian.PutUint32(rec[12:16], aux)
}

// Parse decodes and checks the header of the ring record rec, and returns
// it with the payload. The header is copied before it is checked, so a peer
// that changes it afterwards cannot invalidate the check.
func Parse(rec []byte) (Header, []byte, error) {
	var b [HeaderSize]byte
	copy(b[:], rec)
	h := Header{
		Length: int(binary.LittleEndian.Uint32(b[0:4])),
		Type:   Type(b[4]),
		Flags:  Flags(b[5]),
		Stream: binary.LittleEndian.Uint32(b[8:12]),
		Aux:    binary.LittleEndian.Uint32(b[12:16]),
	}
	if h.Length != len(rec)-HeaderSize {
		return h, nil, fmt.Errorf("frame length %d changed under the reader (record holds %d)", h.Length, len(rec)-HeaderSize)
	}
	if h.Type < TypeHeaders || h.Type > maxType {
		return h, nil, fmt.Errorf("unknown frame type %d", byte(h.Type))
	}
	if h.Flags&^knownFlags != 0 {
		return h, nil, fmt.Errorf("%v frame with unknown flags %#x", h.Type, byte(h.Flags))
	}
	if h.Flags&FlagRefused != 0 && (h.Type != TypeTrailers || h.Flags != FlagRefused) {
		return h, nil, fmt.Errorf("%v frame with flags %#x: REFUSED goes alone on TRAILERS (H8)", h.Type, byte(h.Flags))
	}
	if h.Flags == FlagMore|FlagEndStream {
		return h, nil, fmt.Errorf("%v frame ends the stream in the middle of a message", h.Type)
	}
	if h.Type == TypeMessageRef && h.Flags&FlagMore != 0 {
		return h, nil, fmt.Errorf("%v frame with the MORE flag (a reference is never fragmented)", h.Type)
	}
	if b[6] != 0 || b[7] != 0 {
		return h, nil, fmt.Errorf("%v frame with non-zero reserved bytes", h.Type)
	}
	if h.Stream == 0 && h.Type != TypeGoAway {
		return h, nil, fmt.Errorf("%v frame on stream 0", h.Type)
	}
	return h, rec[HeaderSize:], nil
}
