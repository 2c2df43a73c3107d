//go:build !amd64 && !arm64

package coherence

// Supported reports false: the operations are implemented on amd64 and
// arm64 only so far.
func Supported() bool { return false }

// Instructions reports that there are none here.
func Instructions() (flush, invalidate string) { return "none", "none" }

func flush(b []byte)      { panic("coherence: Flush is not implemented on this architecture") }
func invalidate(b []byte) { panic("coherence: Invalidate is not implemented on this architecture") }
