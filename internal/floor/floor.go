// Package floor is the benchmark floor: a bare ping-pong of a payload
// through the same segment, ring and waiting code as a notnets connection,
// with no gRPC layer. Its round trip is the limit that notnets approaches.
//
// In spin mode (Conn.Spin) both sides only loop on the ring: no pacing, no
// yield, no doorbell. Its round trip is the limit of any polling design.
// A spinning server would take a core from whatever runs next, so the
// client parks it between measurements (Pause), and wakes it before the
// next (Resume).
//
// Wake (wake.go) is the other reference: a bare futex wake-up from one
// process to a thread sleeping in the other, the limit of any design that
// sleeps in the kernel.
package floor

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/spin"
)

// RingSize is the capacity of each ring: room for one record of up to 4 MiB.
const RingSize = 8 << 20

// spinFor is how long a side polls before it blocks on the doorbell, as a
// notnets connection does by default.
const spinFor = 100 * time.Microsecond

// Record kinds the floor uses (any kinds above the ring's): an echo, and
// a pause, after which a spinning server waits as the floor does (spin
// then doorbell) until the next echo.
const (
	kindEcho  = 3
	kindPause = 4
)

// Conn is one side of a floor connection.
type Conn struct {
	seg        *pool.Segment
	self, peer pool.Control
	out        *ring.Producer
	in         *ring.Consumer
	bell       *doorbell.Bell

	// Spin makes this side poll the ring without pacing, yielding or
	// ringing: set it on both sides before the first call.
	Spin bool
	// paused: the server got a pause and waits as the plain floor does;
	// the client sent one, and rings with its next record.
	paused bool
}

// Create makes a floor segment in dir for the client side and returns it
// with the file name the server side opens.
func Create(dir string) (*Conn, string, error) {
	name, err := pool.NewConnName()
	if err != nil {
		return nil, "", err
	}
	seg, err := pool.Create(dir, name, pool.ConnSize(RingSize, RingSize))
	if err != nil {
		return nil, "", err
	}
	pool.InitConn(seg.Mem, RingSize, RingSize, os.Getpid())
	lay, err := pool.MapConn(seg.Mem, ring.CheckCap)
	if err != nil {
		seg.Close()
		return nil, "", err
	}
	lay.Client.State.Store(pool.StateOpen)
	return newConn(seg, lay.Client, lay.Server, lay.C2S, lay.S2C), name, nil
}

// Open maps the floor segment name in dir as the server side.
func Open(dir, name string) (*Conn, error) {
	seg, err := pool.Open(dir, name, 0, 1<<30)
	if err != nil {
		return nil, err
	}
	lay, err := pool.MapConn(seg.Mem, ring.CheckCap)
	if err != nil {
		seg.Close()
		return nil, err
	}
	lay.Server.State.Store(pool.StateOpen)
	return newConn(seg, lay.Server, lay.Client, lay.S2C, lay.C2S), nil
}

func newConn(seg *pool.Segment, self, peer pool.Control, out, in []byte) *Conn {
	return &Conn{
		seg: seg, self: self, peer: peer,
		out:  ring.NewProducerAt(out, self.Tail.Ptr(), peer.Head.Ptr(), 0),
		in:   ring.NewConsumerAt(in, peer.Tail.Ptr(), self.Head.Ptr(), 0),
		bell: doorbell.New(ring.TailWord(self.Tail.Ptr()), self.Sleeping.Ptr(), ring.TailWord(peer.Tail.Ptr()), peer.Sleeping.Ptr(), false),
	}
}

// WaitPeer waits until the other side has opened the segment, then removes
// its file from the pool.
func (c *Conn) WaitPeer(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var idle spin.Idler
	for c.peer.State.Load() != pool.StateOpen {
		if time.Now().After(deadline) {
			return errors.New("floor: the other side did not open the segment")
		}
		if idle.Spent(spinFor) {
			time.Sleep(doorbell.PollSleep)
		}
	}
	return c.seg.Unlink()
}

// RoundTrip sends payload and waits for it to come back.
func (c *Conn) RoundTrip(payload []byte) error {
	if err := c.send(payload); err != nil {
		return err
	}
	rec, err := c.recv()
	if err != nil {
		return err
	}
	if rec == nil {
		return errors.New("floor: peer closed")
	}
	if len(rec) != ring.HeaderSize+len(payload) {
		return fmt.Errorf("floor: sent %d bytes, got %d back", len(payload), len(rec)-ring.HeaderSize)
	}
	c.in.Release()
	return nil
}

// Serve echoes every record back until the client closes.
func (c *Conn) Serve() error {
	for {
		rec, err := c.recv()
		if err != nil || rec == nil {
			return err
		}
		if rec[4] == kindPause { // the kind byte of the record header
			c.in.Release()
			c.paused = true
			continue
		}
		c.paused = false
		err = c.send(rec[ring.HeaderSize:])
		c.in.Release()
		if err != nil {
			return err
		}
	}
}

// Close tells the peer, and unmaps the segment.
func (c *Conn) Close() error {
	c.self.State.Store(pool.StateClosed)
	c.bell.RingAlways()
	c.seg.Unlink()
	return c.seg.Close()
}

// Pause parks a spinning server: it stops spinning and waits as the plain
// floor does (spin, then the doorbell) until the next record. Call it
// between measurements so that the server leaves the cores to others;
// Resume before the next.
func (c *Conn) Pause() error {
	if !c.Spin {
		return nil
	}
	if err := c.sendKind(nil, kindPause); err != nil {
		return err
	}
	c.paused = true
	return nil
}

// Resume wakes a paused server with one round trip of payload, after
// which it spins again.
func (c *Conn) Resume(payload []byte) error {
	if !c.Spin || !c.paused {
		return nil
	}
	return c.RoundTrip(payload)
}

func (c *Conn) send(p []byte) error { return c.sendKind(p, kindEcho) }

func (c *Conn) sendKind(p []byte, kind byte) error {
	if len(p) > c.out.MaxPayload() {
		return fmt.Errorf("floor: payload of %d bytes exceeds %d", len(p), c.out.MaxPayload())
	}
	var idle spin.Idler
	rec := c.out.Reserve(len(p), kind)
	for rec == nil {
		if c.peer.State.Load() == pool.StateClosed {
			return errors.New("floor: peer closed")
		}
		if !c.Spin {
			idle.Spent(spinFor)
		}
		rec = c.out.Reserve(len(p), kind)
	}
	copy(rec[ring.HeaderSize:], p)
	c.out.Publish()
	switch {
	case !c.Spin:
		c.bell.Ring()
	case c.paused && kind == kindEcho: // the server may sleep: the first record after a pause rings
		c.bell.Ring()
		c.paused = false
	}
	return nil
}

// recv waits for the next record; nil when the peer has closed.
func (c *Conn) recv() ([]byte, error) {
	var idle spin.Idler
	for {
		rec, err := c.in.Next()
		if rec != nil || err != nil {
			return rec, err
		}
		if c.peer.State.Load() == pool.StateClosed && !c.in.Published() {
			return nil, nil
		}
		if c.Spin && !c.paused {
			continue // pure spin: nothing but the ring and the peer's state
		}
		if idle.Spent(spinFor) {
			c.bell.Wait(func() (uint32, bool) { return uint32(c.in.Position()), c.in.Published() })
			idle.Reset()
		}
	}
}
