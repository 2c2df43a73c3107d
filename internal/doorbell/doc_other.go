//go:build !linux

package doorbell

// notnets needs Linux: its doorbell is a futex on shared memory, its pools
// live on tmpfs, and its handshake passes sealed memfds with the kernel's
// credentials. This file stops builds for other systems here, with this
// identifier in the error, instead of deep inside the system calls.
var _ = notnets_requires_linux
