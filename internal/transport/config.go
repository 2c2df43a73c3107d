package transport

import (
	"time"

	"github.com/notnets/notnets/internal/chz"
	"github.com/notnets/notnets/internal/pool"
)

// Wait says how a side waits for its peer once it has polled for Spin
// without seeing anything.
type Wait struct {
	// Spin is how long a side polls before it blocks: the most the
	// adaptive strategy spins, and the caller's spin for its reply.
	Spin time.Duration
	// Idle chooses how a side waits (idle.go).
	Idle IdleStrategy
	// PollOnly: never block in a futex; sleep instead. WithPollOnly sets
	// it, and every connection and listener of a cross-host pool has it
	// whatever the caller's Wait says (Listen, connect): a futex cannot
	// reach a peer on another host.
	PollOnly bool
	// CheckViews protects each received heap block while nobody holds it
	// (WithViewChecks).
	CheckViews bool
}

// DialConfig is what a client needs to make a connection.
type DialConfig struct {
	Pool      string      // the pool directory, cleaned
	Access    pool.Access // the pool's access rules
	Name      string      // the listener name
	RingSize  int         // each ring's capacity
	ArenaSize int         // each heap's size, 0 for none
	Wait      Wait
	Window    int           // each stream's receive window
	Liveness  time.Duration // how long the peer's heartbeat may stand still
	// Info is what the client says of itself in the connection header:
	// its header block limit and user agent.
	Info pool.ConnInfo
	// Stream makes a byte-stream connection (PROTOCOL.md 17, DialStream)
	// instead of a frame connection: to instances that serve byte
	// streams only, without heaps.
	Stream bool
	// CrossHost says the caller expects a cross-host pool
	// (WithCrossHost): connecting in a pool without the marker fails
	// with FailedPrecondition instead of treating peers as local. A
	// cross-host pool is one whatever this says (pool.ReadMode).
	CrossHost bool
}

// spec is the connection segment the client creates: byte-stream
// connections have no heaps (PROTOCOL.md 17.1, S7).
func (o *DialConfig) spec() pool.ConnSpec {
	if o.Stream {
		return pool.ConnSpec{C2S: o.RingSize, S2C: o.RingSize, Flags: pool.ConnByteStream}
	}
	return pool.ConnSpec{C2S: o.RingSize, S2C: o.RingSize, C2SHeap: o.ArenaSize, S2CHeap: o.ArenaSize}
}

// ServerConfig is what a server transport needs.
type ServerConfig struct {
	Wait       Wait
	Window     int // each stream's receive window
	MaxRecv    int // the largest request message accepted
	Liveness   time.Duration
	MaxStreams uint32 // open streams a client may have; 0 for no limit
	// MaxHeader is the largest header block the server accepts, which it
	// announces to the client (0: pool.DefaultHeaderLimit).
	MaxHeader uint32
	// Streams, if not nil, counts the connection's streams for channelz
	// (countEnd).
	Streams *chz.Counts
}
