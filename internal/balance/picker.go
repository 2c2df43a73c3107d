package balance

import (
	"math/rand/v2"
	"sync/atomic"
)

// Policy is how a Picker chooses among instances.
type Policy uint8

const (
	// LeastLoad picks the less loaded of two instances chosen at random
	// (power of two choices), load being published calls in flight plus
	// queued, per worker: gRPC's least_request, on the server's own count.
	LeastLoad Policy = iota
	// RoundRobin takes the usable instances in turn.
	RoundRobin
	// PickFirst takes the first usable instance, in the order given.
	PickFirst
)

// String returns the policy's name as gRPC service configs spell it.
func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round_robin"
	case PickFirst:
		return "pick_first"
	}
	return "least_request"
}

// Candidate is one instance a Picker may choose.
type Candidate interface {
	// Usable reports whether the candidate can take a new call now.
	Usable() bool
	// Load returns the candidate's load and workers, and false if it
	// takes no calls.
	Load() (load, workers uint32, ok bool)
}

// Picker chooses a candidate per call. Its zero value is LeastLoad. It is
// safe for concurrent use and allocates nothing.
type Picker struct {
	Policy Policy
	next   atomic.Uint32 // RoundRobin's position
}

// Pick returns the index in cs of the candidate for the next call, or -1
// if none is usable.
func Pick[C Candidate](p *Picker, cs []C) int {
	n := len(cs)
	switch {
	case n == 0:
		return -1
	case n == 1:
		if _, _, ok := load(cs[0]); ok {
			return 0 // a lone instance that drains takes no new call either
		}
		return -1
	}
	switch p.Policy {
	case RoundRobin:
		return firstUsable(cs, int(p.next.Add(1)%uint32(n)))
	case PickFirst:
		return firstUsable(cs, 0)
	}
	i := int(rand.Uint32N(uint32(n)))
	j := int(rand.Uint32N(uint32(n - 1)))
	if j >= i {
		j++
	}
	li, wi, oki := load(cs[i])
	lj, wj, okj := load(cs[j])
	switch {
	case oki && okj:
		// li/wi against lj/wj, in integers (each below 2^24).
		if uint64(lj)*uint64(wi) < uint64(li)*uint64(wj) {
			return j
		}
		return i
	case oki:
		return i
	case okj:
		return j
	}
	return firstUsable(cs, i)
}

// load is the candidate's load if it is usable.
func load[C Candidate](c C) (uint32, uint32, bool) {
	if !c.Usable() {
		return 0, 0, false
	}
	return c.Load()
}

// firstUsable returns the first usable candidate from start on, wrapping
// around, or -1.
func firstUsable[C Candidate](cs []C, start int) int {
	for k := range cs {
		i := (start + k) % len(cs)
		if _, _, ok := load(cs[i]); ok {
			return i
		}
	}
	return -1
}
