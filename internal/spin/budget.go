//go:build linux

package spin

import (
	"slices"
	"sync/atomic"
	"time"
)

// Why the spin period is learned.
//
// A side that spins longer than the gaps between its messages never pays a
// wake-up (about 9 us at the median after 150 us idle on the 2-core
// development machine, 40 us after 1 ms, when the vCPU halts), but burns
// the gap in CPU; one that spins shorter burns its spin period for nothing
// and pays the wake-up anyway. A Budget watches the idle gaps that ended
// with a message and spins just past the usual one when that is short
// enough to be worth a core (up to its maximum), and only MinSpin (enough
// for a reply to come back within a burst) when the usual gap is longer.

// MinSpin is the spin period of a Budget whose recent gaps are all longer
// than its maximum: long enough for the next message of a burst.
const MinSpin = 20 * time.Microsecond

// budgetGaps is how many recent gaps a Budget remembers.
const budgetGaps = 16

// Budget is a spin period learned from recent idle gaps. Observe and Spin
// may be called from different goroutines; Observe is called by the one
// that saw the gap end.
type Budget struct {
	max  time.Duration
	spin atomic.Int64 // the current period, ns

	gaps [budgetGaps]time.Duration // owned by Observe's caller
	n    int
}

// NewBudget returns a budget that spins at most max, starting at max.
func NewBudget(max time.Duration) *Budget {
	b := &Budget{max: max}
	b.spin.Store(int64(max))
	return b
}

// Spin returns the current spin period.
func (b *Budget) Spin() time.Duration { return time.Duration(b.spin.Load()) }

// Observe records an idle gap that a message ended, and recomputes the
// period every budgetGaps/4 gaps: the third quartile of the recent gaps
// plus a quarter, when that is within max, else MinSpin.
func (b *Budget) Observe(gap time.Duration) {
	b.gaps[b.n%budgetGaps] = gap
	b.n++
	if b.n%(budgetGaps/4) != 0 || b.n < budgetGaps/2 {
		return
	}
	k := min(b.n, budgetGaps)
	var tmp [budgetGaps]time.Duration
	sorted := tmp[:k]
	copy(sorted, b.gaps[:k])
	slices.Sort(sorted)
	q3 := sorted[k*3/4]
	spin := MinSpin
	if want := q3 + q3/4; want <= b.max {
		spin = max(want, MinSpin)
	}
	b.spin.Store(int64(min(spin, b.max))) // never beyond WithSpin
}
