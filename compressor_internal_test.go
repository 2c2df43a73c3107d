package notnets

import "testing"

// TestValidateSendCompressor: grpc-go's answers for a client that
// advertised no compressor, for a name registered in the process or not.
func TestValidateSendCompressor(t *testing.T) {
	registered := func(name string) bool { return name == "gzip" }
	for _, tc := range []struct{ name, want string }{
		{"identity", "<nil>"},
		{"gzip", `client does not support compressor "gzip"`},
		{"zstd", `compressor not registered "zstd"`},
	} {
		if got := fmtErr(validateSendCompressor(tc.name, registered)); got != tc.want {
			t.Errorf("validateSendCompressor(%q) = %s, want %s", tc.name, got, tc.want)
		}
	}
}

func fmtErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
