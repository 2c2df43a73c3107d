package transport

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// connect creates a connection segment, announces it through the listener
// name, and waits until the server has mapped it. The segment's file is
// removed from the pool as soon as both sides have it mapped.
// It also returns what it knows of the server, from its listener.
func connect(ctx context.Context, o *DialConfig) (*pool.Segment, *pool.ConnLayout, Identity, error) {
	name := o.Name
	// Read only: a listener taking connections through its socket is
	// writable by its server alone (3.2); the slots' path opens it again
	// for writing below.
	lseg, err := pool.OpenReadOnlyIn(o.Pool, pool.ListenerFile(name), pool.ListenerSize, pool.ListenerSize, o.Access)
	if errors.Is(err, pool.ErrAccess) {
		return nil, nil, Identity{}, status.Error(codes.PermissionDenied, err.Error())
	}
	if err != nil {
		return nil, nil, Identity{}, status.Errorf(codes.Unavailable, "notnets: no listener %q in pool %s: %v", name, o.Pool, err)
	}
	defer lseg.Close()
	lis, err := mapListener(lseg, name)
	if err != nil {
		return nil, nil, Identity{}, err
	}
	server := identityOf(lseg, lis.PID) // while the server has its listener mapped
	if server.Mismatch {
		return nil, nil, Identity{}, status.Errorf(codes.PermissionDenied, "notnets: listener %q belongs to uid %d but process %d, which maps it, runs as another user", name, server.UID, server.PID)
	}
	if err := checkKind(name, lis, o.Stream); err != nil {
		return nil, nil, Identity{}, err
	}
	if seg, lay, cred, tried, err := dialCreds(ctx, o, name, lis, lseg.Owner.UID); tried {
		return seg, lay, cred, err
	}
	if lis.Flags&pool.ListenerSocketOnly != 0 {
		// Its slots are not read: someone removed the socket, or this
		// client is poll-only and cannot use it.
		return nil, nil, Identity{}, status.Errorf(codes.Unavailable, "notnets: listener %q takes connections only through its socket %s, which this client cannot use (removed, or WithPollOnly)", name, sockName(name))
	}
	wseg, err := pool.OpenIn(o.Pool, pool.ListenerFile(name), pool.ListenerSize, pool.ListenerSize, o.Access)
	if err != nil {
		return nil, nil, Identity{}, status.Errorf(codes.Unavailable, "notnets: open the slots of listener %q: %v", name, err)
	}
	defer wseg.Close()
	if wseg.Owner.Dev != lseg.Owner.Dev || wseg.Owner.Ino != lseg.Owner.Ino {
		return nil, nil, Identity{}, status.Errorf(codes.Unavailable, "notnets: listener %q was replaced while connecting", name)
	}
	if lis, err = mapListener(wseg, name); err != nil {
		return nil, nil, Identity{}, err
	}
	if lis.Server.State.Load() != pool.StateOpen {
		return nil, nil, Identity{}, status.Errorf(codes.Unavailable, "notnets: listener %q is closed", name)
	}
	segName, err := pool.NewConnName()
	if err != nil {
		return nil, nil, Identity{}, err
	}
	spec := o.spec()
	seg, err := pool.CreateConn(o.Pool, segName, spec, o.Access)
	if err != nil {
		return nil, nil, Identity{}, createError(err)
	}
	pool.InitConnSpec(seg.Mem, spec, os.Getpid())
	err = pool.WriteConnInfo(seg.Mem, o.Info)
	var lay *pool.ConnLayout
	if err == nil {
		lay, err = pool.MapConn(seg.Mem, ring.CheckCap)
	}
	if err == nil {
		err = protectPeer(seg, lay, true)
	}
	if err != nil {
		seg.Unlink()
		seg.Close()
		return nil, nil, Identity{}, err
	}
	lay.Client.State.Store(pool.StateOpen)
	if err := announce(ctx, o, lis, segName, lay); err != nil {
		lay.Client.State.Store(pool.StateClosed)
		seg.Unlink()
		seg.Close()
		return nil, nil, Identity{}, err
	}
	seg.Unlink()
	return seg, lay, server, nil
}

// mapListener validates the listener segment seg, whose file its owner
// can truncate under us (pool.Guard).
func mapListener(seg *pool.Segment, name string) (*pool.ListenerLayout, error) {
	var lis *pool.ListenerLayout
	err := pool.Guard("listener "+name, func() (err error) {
		lis, err = pool.MapListener(seg.Mem)
		return err
	})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	return lis, nil
}

// checkKind checks that the listener of the instance name serves the kind
// of connection the client makes, frames or a byte stream (PROTOCOL.md
// F11): a server would refuse the other kind (S7).
func checkKind(name string, lis *pool.ListenerLayout, stream bool) error {
	serves := lis.Flags&pool.ListenerByteStream != 0
	switch {
	case serves && !stream:
		return status.Errorf(codes.Unavailable, "notnets: instance %q serves byte streams (ListenConn, for grpc-go), not notnets calls", name)
	case !serves && stream:
		return status.Errorf(codes.Unavailable, "notnets: instance %q serves notnets calls (Listen), not byte streams", name)
	}
	return nil
}

// createError is the status of a failure to create a connection segment:
// ResourceExhausted when the pool has no room for it (PROTOCOL.md 3.4).
func createError(err error) error {
	if errors.Is(err, pool.ErrExhausted) {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

// announce puts segName in a free slot of the listener and waits for the
// server to open the connection.
func announce(ctx context.Context, o *DialConfig, lis *pool.ListenerLayout, segName string, lay *pool.ConnLayout) error {
	var slot pool.Slot
	var word uint32
	err := setupPoll(ctx, o.Wait.Spin, func() (bool, error) {
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
	doorbell.Knock(lis.Knock, 1)
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
func waitAccepted(ctx context.Context, o *DialConfig, lay *pool.ConnLayout, gone func() error) error {
	return setupPoll(ctx, o.Wait.Spin, func() (bool, error) {
		switch lay.Server.State.Load() {
		case pool.StateOpen:
			return true, nil
		case pool.StateClosed:
			return false, status.Error(codes.Unavailable, "notnets: server refused the connection"+refusalReason(lay))
		}
		return false, gone()
	})
}

// refusalReason returns ": " and the reason of a GOAWAY the server wrote
// before closing a connection it refused (PROTOCOL.md 16), or "". The
// record is checked as any other (14.3 to 14.5); nothing else is read, and
// the reason is cut to a line's length.
func refusalReason(lay *pool.ConnLayout) string {
	in := ring.NewConsumerAt(lay.S2C, lay.Server.Tail, lay.Client.Head, 0)
	rec, err := in.Next()
	if err != nil || rec == nil {
		return ""
	}
	h, p, err := frame.Parse(rec)
	if err != nil || h.Type != frame.TypeGoAway {
		return ""
	}
	var g frame.GoAway
	if g.Decode(p) != nil || g.Reason == "" {
		return ""
	}
	const maxReason = 200
	r := strings.ToValidUTF8(g.Reason, "?")
	if len(r) > maxReason {
		r = r[:maxReason] + "..."
	}
	return ": " + strings.TrimPrefix(r, "notnets: ")
}

// setupPoll is doorbell.Poll for a connection being set up, with ctx's end
// as a status error.
func setupPoll(ctx context.Context, spin time.Duration, try func() (bool, error)) error {
	err := doorbell.Poll(ctx, spin, try)
	if err != nil && ctx.Err() != nil && err == ctx.Err() {
		return status.Errorf(status.FromContextError(err).Code(), "notnets: connect: %v", err)
	}
	return err
}
