package transport

import (
	"fmt"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/notnets/notnets/internal/frame"
)

// statusFromFrame rebuilds the status a TRAILERS or CANCEL frame carries.
// With details, the frame holds the whole google.rpc.Status, whose code
// and message must agree with the frame's.
func statusFromFrame(fs *frame.Status) (*status.Status, error) {
	if fs.Code == 0 && fs.Message == "" && len(fs.Details) == 0 {
		return okStatus, nil
	}
	if len(fs.Details) == 0 {
		return status.New(codes.Code(fs.Code), fs.Message), nil
	}
	var p spb.Status
	if err := proto.Unmarshal(fs.Details, &p); err != nil {
		return nil, fmt.Errorf("status details: %w", err)
	}
	if uint32(p.Code) != fs.Code || p.Message != fs.Message {
		return nil, fmt.Errorf("status details (code %d) disagree with the frame (code %d)", p.Code, fs.Code)
	}
	return status.FromProto(&p), nil
}

// statusToFrame encodes st; details travel as the serialized status.
func statusToFrame(st *status.Status) (frame.Status, error) {
	if st.Code() == codes.OK && st.Message() == "" {
		return frame.Status{}, nil
	}
	fs := frame.Status{Code: uint32(st.Code()), Message: st.Message()}
	p := st.Proto()
	if len(p.GetDetails()) > 0 {
		b, err := proto.Marshal(p)
		if err != nil {
			return fs, err
		}
		fs.Details = b
	}
	return fs, nil
}
