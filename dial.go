package notnets

import (
	"context"
	"errors"
	"os"
	"runtime"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// connect creates a connection segment, announces it through the listener
// name, and waits until the server has mapped it. The segment's file is
// removed from the pool as soon as both sides have it mapped.
// It also returns what it knows of the server, from its listener.
func connect(ctx context.Context, o *dialOptions, name string) (*pool.Segment, *pool.ConnLayout, AuthInfo, error) {
	lseg, err := pool.OpenIn(o.pool, pool.ListenerFile(name), pool.ListenerSize, pool.ListenerSize, o.access)
	if errors.Is(err, pool.ErrAccess) {
		return nil, nil, AuthInfo{}, status.Error(codes.PermissionDenied, err.Error())
	}
	if err != nil {
		return nil, nil, AuthInfo{}, status.Errorf(codes.Unavailable, "notnets: no listener %q in pool %s: %v", name, o.pool, err)
	}
	defer lseg.Close()
	lis, err := pool.MapListener(lseg.Mem)
	if err != nil {
		return nil, nil, AuthInfo{}, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	server := authInfoOf(lseg, lis.PID) // while the server has its listener mapped
	if server.Mismatch {
		return nil, nil, AuthInfo{}, status.Errorf(codes.PermissionDenied, "notnets: listener %q belongs to uid %d but process %d, which maps it, runs as another user", name, server.UID, server.PID)
	}
	if seg, lay, cred, tried, err := dialCreds(ctx, o, name, lis, lseg.Owner.UID); tried {
		return seg, lay, cred, err
	}
	if lis.Flags&pool.ListenerSocketOnly != 0 {
		// Its slots are not read: someone removed the socket, or this
		// client is poll-only and cannot use it.
		return nil, nil, AuthInfo{}, status.Errorf(codes.Unavailable, "notnets: listener %q takes connections only through its socket %s, which this client cannot use (removed, or WithPollOnly)", name, sockName(name))
	}
	if lis.Server.State.Load() != pool.StateOpen {
		return nil, nil, AuthInfo{}, status.Errorf(codes.Unavailable, "notnets: listener %q is closed", name)
	}
	segName, err := pool.NewConnName()
	if err != nil {
		return nil, nil, AuthInfo{}, err
	}
	spec := pool.ConnSpec{C2S: o.ringSize, S2C: o.ringSize, C2SHeap: o.arenaSize, S2CHeap: o.arenaSize}
	seg, err := pool.CreateIn(o.pool, segName, spec.Size(), o.access)
	if err != nil {
		return nil, nil, AuthInfo{}, status.Error(codes.Unavailable, err.Error())
	}
	pool.InitConnSpec(seg.Mem, spec, os.Getpid())
	lay, err := pool.MapConn(seg.Mem, ring.CheckCap)
	if err == nil {
		err = protectPeer(seg, lay, true)
	}
	if err != nil {
		seg.Unlink()
		seg.Close()
		return nil, nil, AuthInfo{}, err
	}
	lay.Client.State.Store(pool.StateOpen)
	if err := announce(ctx, o, lis, segName, lay); err != nil {
		lay.Client.State.Store(pool.StateClosed)
		seg.Unlink()
		seg.Close()
		return nil, nil, AuthInfo{}, err
	}
	seg.Unlink()
	return seg, lay, server, nil
}

// announce puts segName in a free slot of the listener and waits for the
// server to open the connection.
func announce(ctx context.Context, o *dialOptions, lis *pool.ListenerLayout, segName string, lay *pool.ConnLayout) error {
	var slot pool.Slot
	var word uint32
	err := poll(ctx, o.wait, func() (bool, error) {
		if lis.Server.State.Load() != pool.StateOpen {
			return false, status.Error(codes.Unavailable, "notnets: listener closed")
		}
		for _, s := range lis.Slots {
			w, ok := s.Claim()
			if !ok {
				continue
			}
			s.PID.Store(uint32(os.Getpid()))
			s.SetName(segName)
			// Fails if the server reclaimed the slot meanwhile; then try again.
			if word, ok = s.Advance(w, pool.SlotReady); ok {
				slot = s
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	lis.Knock.Add(1)
	pool.FutexWake(lis.Knock, 1)
	err = waitAccepted(ctx, o, lay, func() error {
		if lis.Server.State.Load() != pool.StateOpen {
			return status.Error(codes.Unavailable, "notnets: listener closed before accepting")
		}
		return nil
	})
	if err != nil {
		slot.Free(word) // withdraw, unless the server has taken it
	}
	return err
}

// waitAccepted waits until the server opens the connection of lay, or
// refuses it, or gone reports that the server has gone.
func waitAccepted(ctx context.Context, o *dialOptions, lay *pool.ConnLayout, gone func() error) error {
	return poll(ctx, o.wait, func() (bool, error) {
		switch lay.Server.State.Load() {
		case pool.StateOpen:
			return true, nil
		case pool.StateClosed:
			return false, status.Error(codes.Unavailable, "notnets: server refused the connection")
		}
		return false, gone()
	})
}

// poll calls try until it reports done or an error, spinning first and then
// sleeping between tries, for at most as long as ctx allows.
func poll(ctx context.Context, w waitConfig, try func() (bool, error)) error {
	start := time.Now()
	for {
		done, err := try()
		if done || err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return status.Errorf(status.FromContextError(err).Code(), "notnets: connect: %v", err)
		}
		if time.Since(start) < w.spin {
			runtime.Gosched()
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// checkPool checks, before anything is named in it, that the pool exists
// (Unavailable otherwise: no server has made it yet) and can be trusted
// (PermissionDenied otherwise).
func checkPool(dir string, access pool.Access) error {
	if _, err := os.Lstat(dir); err != nil {
		return status.Errorf(codes.Unavailable, "notnets: pool %s: %v", dir, err)
	}
	if err := pool.CheckDir(dir, access); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}
