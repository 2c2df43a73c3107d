//go:build linux

package doorbell

import (
	"context"
	"runtime"
	"time"
)

// SetupSleep is how long connection set-up (a dial waiting for a free slot
// or to be accepted) sleeps between tries once it has spun: set-up is
// rare, and a sleep under a millisecond costs about a millisecond anyway.
const SetupSleep = 100 * time.Microsecond

// Poll calls try until it reports done or an error, yielding to the Go
// scheduler between tries for spin and then sleeping SetupSleep, for at
// most as long as ctx allows; it returns ctx's error when ctx ends first.
// It is for set-up waits, not the data path.
func Poll(ctx context.Context, spin time.Duration, try func() (bool, error)) error {
	start := time.Now()
	for {
		done, err := try()
		if done || err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Since(start) < spin {
			runtime.Gosched()
		} else {
			time.Sleep(SetupSleep)
		}
	}
}
