// Package floor is the benchmark floor: a bare ping-pong of a payload
// through the same segment, ring and waiting code as a notnets connection,
// with no gRPC layer. Its round trip is the limit that notnets approaches.
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

// kindEcho is the record kind the floor uses (any kind above the ring's).
const kindEcho = 3

// Conn is one side of a floor connection.
type Conn struct {
	seg        *pool.Segment
	self, peer pool.Control
	out        *ring.Producer
	in         *ring.Consumer
	bell       *doorbell.Bell
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
		out:  ring.NewProducerAt(out, self.Tail, peer.Head, 0),
		in:   ring.NewConsumerAt(in, peer.Tail, self.Head, 0),
		bell: doorbell.New(ring.TailWord(self.Tail), self.Sleeping, ring.TailWord(peer.Tail), peer.Sleeping, false),
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

func (c *Conn) send(p []byte) error {
	if len(p) > c.out.MaxPayload() {
		return fmt.Errorf("floor: payload of %d bytes exceeds %d", len(p), c.out.MaxPayload())
	}
	var idle spin.Idler
	rec := c.out.Reserve(len(p), kindEcho)
	for rec == nil {
		if c.peer.State.Load() == pool.StateClosed {
			return errors.New("floor: peer closed")
		}
		idle.Spent(spinFor)
		rec = c.out.Reserve(len(p), kindEcho)
	}
	copy(rec[ring.HeaderSize:], p)
	c.out.Publish()
	c.bell.Ring()
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
		if idle.Spent(spinFor) {
			c.bell.Wait(func() (uint32, bool) { return uint32(c.in.Position()), c.in.Published() })
			idle.Reset()
		}
	}
}
