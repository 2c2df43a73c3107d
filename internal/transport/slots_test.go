package transport

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/notnets/notnets/internal/pool"
)

// TestConcurrentClaimsWithoutCoherence: in a pool of simulated memory
// without coherence, every Dial works on its own private copy of the
// listener, as a host of its own would, so a claim of a slot (a
// compare-and-swap) is atomic only within the Dial: clients that dial at
// once can claim the same slot (PROTOCOL.md 18.4). Every one of them
// must still connect, within its deadline. A collision is rare (two
// claims within the same few hundred nanoseconds), so this test mostly
// shows that concurrent dials through private copies work;
// TestLostSlotAnnouncesAgain makes one happen for sure.
func TestConcurrentClaimsWithoutCoherence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pool")
	if err := pool.PrepareCoherence(dir, pool.OwnerOnly, pool.CoherenceSimulated); err != nil {
		t.Fatal(err)
	}
	wait := Wait{Spin: 100 * time.Microsecond}
	l, err := Listen(dir, "svc", pool.OwnerOnly, ListenConfig{Wait: wait, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var servers []*StreamConn
	var mu sync.Mutex
	go func() {
		for {
			a, err := l.Accept()
			if err != nil {
				return
			}
			s := NewStreamServer(a, wait, 10*time.Second)
			mu.Lock()
			servers = append(servers, s)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range servers {
			s.Close()
		}
	}()
	const rounds, dialers = 10, 8
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		errs := make(chan error, dialers)
		for i := 0; i < dialers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
				defer cancel()
				c, err := DialStream(ctx, &DialConfig{Pool: dir, Access: pool.OwnerOnly, Name: l.Instance(), RingSize: 4096, Wait: wait, Liveness: 10 * time.Second})
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", r, err)
		}
	}
}

// TestLostSlotAnnouncesAgain makes the collision of 18.4 happen for sure:
// another "host" (a mapping of the listener with a private copy of its
// own) writes its own name over a client's announcement before the
// server looks, as the later of two claimers of one slot does. The
// server finds no such segment and frees the slot; the client sees its
// announcement gone, announces again in another slot with a new segment,
// and connects well before its deadline.
func TestLostSlotAnnouncesAgain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pool")
	if err := pool.PrepareCoherence(dir, pool.OwnerOnly, pool.CoherenceSimulated); err != nil {
		t.Fatal(err)
	}
	wait := Wait{Spin: 100 * time.Microsecond}
	l, err := Listen(dir, "svc", pool.OwnerOnly, ListenConfig{Wait: wait, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := pool.OpenIn(dir, pool.ListenerFile(l.Instance()), pool.ListenerSize, pool.ListenerSize, pool.OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.UseCoherence(pool.CoherenceSimulated); err != nil {
		t.Fatal(err)
	}
	lis, err := mapListener(other, l.Instance())
	if err != nil {
		t.Fatal(err)
	}

	dialed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := DialStream(ctx, &DialConfig{Pool: dir, Access: pool.OwnerOnly, Name: l.Instance(), RingSize: 4096, Wait: wait, Liveness: 10 * time.Second})
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	// The server does not accept yet: the other host overwrites the
	// announcement first.
	deadline := time.Now().Add(10 * time.Second)
	for pool.SlotState(lis.Slots[0].State.Load()) != pool.SlotReady {
		if time.Now().After(deadline) {
			t.Fatal("the client never announced itself in slot 0")
		}
		time.Sleep(time.Millisecond)
	}
	lis.Slots[0].SetName("conn-" + strings.Repeat("0", 32)) // no such segment
	start := time.Now()
	served := make(chan *StreamConn, 4)
	go func() {
		for {
			a, err := l.Accept()
			if err != nil {
				return
			}
			served <- NewStreamServer(a, wait, 10*time.Second)
		}
	}()
	defer func() {
		for len(served) > 0 {
			(<-served).Close()
		}
	}()
	if err := <-dialed; err != nil {
		t.Fatalf("the client whose announcement was overwritten: %v", err)
	}
	if d := time.Since(start); d > 5*slotGrace {
		t.Errorf("connected %v after its announcement was lost; want about slotGrace (%v)", d, slotGrace)
	}
}
