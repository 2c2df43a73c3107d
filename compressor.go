package notnets

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// Compression over notnets: nothing is compressed (a message crosses
// shared memory once, or not at all when it travels by reference), and a
// notnets client advertises no compressor. A handler that asks finds
// what grpc-go reports for a client that advertises none.
//
// grpc.SetSendCompressor and grpc.ClientSupportedCompressors cannot be
// made to work on a notnets call: grpc-go type-asserts the context's
// grpc.ServerTransportStream to the concrete *transport.ServerStream of
// its internal transport package, which no other package can make, and
// fails otherwise ("failed to fetch the stream from the given context").
// The two functions below answer for notnets calls and hand every other
// call (those Server.ServeGRPC serves, or a grpc.Server's) to grpc-go's.

// SetSendCompressor sets the compressor of the call's response messages,
// as grpc.SetSendCompressor does, in a handler served over notnets or by
// grpc-go. Over notnets "identity" (no compression) is accepted until
// the response headers are sent, and any other name fails with grpc-go's
// error for a compressor the client did not advertise: "unable to set
// send compressor: compressor not registered" when no compressor of that
// name is registered in the process, "unable to set send compressor:
// client does not support compressor" when one is.
func SetSendCompressor(ctx context.Context, name string) error {
	ts, ok := grpc.ServerTransportStreamFromContext(ctx).(transportStream)
	if !ok {
		return grpc.SetSendCompressor(ctx, name)
	}
	if err := validateSendCompressor(name, compressorRegistered); err != nil {
		return fmt.Errorf("unable to set send compressor: %w", err)
	}
	return ts.ts.SetSendCompress()
}

// ClientSupportedCompressors returns the compressors the call's client
// advertised, as grpc.ClientSupportedCompressors does, in a handler
// served over notnets or by grpc-go. A notnets client advertises none,
// and the answer is then grpc-go's for a client that sends no
// grpc-accept-encoding header: a list holding one empty name.
func ClientSupportedCompressors(ctx context.Context) ([]string, error) {
	if _, ok := grpc.ServerTransportStreamFromContext(ctx).(transportStream); !ok {
		return grpc.ClientSupportedCompressors(ctx)
	}
	return []string{""}, nil
}

// validateSendCompressor is grpc-go's check of a compressor name against
// a client that advertised none.
func validateSendCompressor(name string, registered func(string) bool) error {
	if name == encoding.Identity {
		return nil
	}
	if !registered(name) {
		return fmt.Errorf("compressor not registered %q", name)
	}
	return fmt.Errorf("client does not support compressor %q", name)
}

func compressorRegistered(name string) bool { return encoding.GetCompressor(name) != nil }
