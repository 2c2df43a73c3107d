// Package balance chooses, for each call, which instance of a service in
// a pool serves it, from the load each instance publishes in its
// listener segment (PROTOCOL.md 10.6); and tells clients when instances
// come and go, from the pool's registry generation (10.7).
//
// The pick reads shared memory only: no system call and no allocation
// per call. What it reads a peer controls, so every value is bounded
// before use, and a fault from a mapping that its owner truncated is
// recovered into "not usable" (SIGBUS must not kill a client).
package balance
