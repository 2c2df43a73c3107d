package frame

// Regression tests for bugs found in review; each comment says what used
// to go wrong.

import (
	"math"
	"testing"
)

// Formerly: Status.Decode rejected codes above 1<<31, yet Code is
// a uint32 that Status.Append encodes for any value. So a Status with a
// code in (1<<31, 1<<32) encodes to a payload its own Decode calls
// malformed, and the bound is off by one either way: it accepts 1<<31,
// which is neither a valid int32 nor the top of the uint32 range.
//
// This is reachable: status.go builds the frame with
// Code: uint32(st.Code()), and a handler can return any codes.Code, e.g.
// status.ErrorProto(&spb.Status{Code: -1}) gives Code 0xffffffff. The peer
// then fails to decode the TRAILERS frame ("status code 4294967295 out of
// range") and tears the connection down instead of delivering the status.
// Fix: check c > math.MaxUint32 (or reject such codes in Append too).
func TestStatusCodeRoundTrip(t *testing.T) {
	for _, code := range []uint32{1<<31 + 1, 1 << 31 * 3 / 2, math.MaxUint32} {
		enc := (&Status{Code: code, Message: "m"}).Append(nil)
		var s Status
		if err := s.Decode(enc); err != nil {
			t.Errorf("Status{Code: %d} encodes to a payload that Decode rejects: %v", code, err)
		} else if s.Code != code {
			t.Errorf("Code %d decodes as %d", code, s.Code)
		}
	}
}
