//go:build linux

package pool

import (
	"fmt"
	"runtime/debug"
)

// Guard runs f, which reads a mapping that another process can truncate
// (a listener or the registry: files of a pool's users, not sealed), and
// turns the fault (SIGBUS) of a read past the new end into an error
// instead of a crash. f must only read shared memory and may be stopped
// at any point.
func Guard(what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("notnets: %s faulted (the file was truncated under the reader): %v", what, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return f()
}
