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

// dialed is a connection segment that the server has opened, and what
// the client knows of the server.
type dialed struct {
	seg    *pool.Segment
	lay    *pool.ConnLayout
	server Identity // from the kernel (socket), else from the listener
	// livePID is the server's pid where this process can look it up
	// (the kernel's pid, or the listener's of the same pid domain, F14),
	// else 0: liveness by heartbeat alone.
	livePID int
	// wait is the caller's, poll-only in a cross-host pool.
	wait Wait
}

// connect creates a connection segment, announces it through the listener
// name, and waits until the server has mapped it. The segment's file is
// removed from the pool as soon as both sides have it mapped.
// It also returns what it knows of the server, from its listener.
//
// The pool's marker decides how (PROTOCOL.md 3.7, F13): in a cross-host
// pool the client never uses the socket, never looks up the server's pid
// and never waits on a futex, whatever o.Wait says; elsewhere it uses
// the socket, and the server's pid where it is of its pid domain (F14).
func connect(ctx context.Context, o *DialConfig) (*dialed, error) {
	name := o.Name
	mode, err := pool.ReadMode(o.Pool, o.Access)
	if errors.Is(err, pool.ErrAccess) {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: pool %s: %v", o.Pool, err)
	}
	if o.CrossHost && !mode.CrossHost {
		return nil, NotCrossHost(o.Pool, mode)
	}
	d := &dialed{wait: o.Wait}
	if mode.CrossHost {
		d.wait.PollOnly = true // no futex reaches another host
	}
	// Read only: a listener taking connections through its socket is
	// writable by its server alone (3.2); the slots' path opens it again
	// for writing below.
	lseg, err := pool.OpenReadOnlyIn(o.Pool, pool.ListenerFile(name), pool.ListenerSize, pool.ListenerSize, o.Access)
	if errors.Is(err, pool.ErrAccess) {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: no listener %q in pool %s: %v", name, o.Pool, err)
	}
	defer lseg.Close()
	if err := lseg.UseCoherence(mode.Coherence); err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	lis, err := mapListener(lseg, name)
	if err != nil {
		return nil, err
	}
	// Whether the listener's pid is one of this process's pid domain.
	remote := mode.CrossHost || !lis.Host.Local()
	// While the server has its listener mapped.
	d.server = peerIdentity(lseg, lis.PID, remote)
	if d.server.Mismatch {
		return nil, status.Errorf(codes.PermissionDenied, "notnets: listener %q belongs to uid %d but process %d, which maps it, runs as another user", name, d.server.UID, d.server.PID)
	}
	if err := checkKind(name, lis, o.Stream); err != nil {
		return nil, err
	}
	if !mode.CrossHost && mode.Device == nil { // a memfd would keep a device pool's connection out of the device
		if tried, err := dialCreds(ctx, o, d, name, lis, lseg.Owner.UID, remote); tried {
			return d, err
		}
	}
	if lis.Flags&pool.ListenerSocketOnly != 0 {
		// Its slots are not read: someone removed the socket, or the
		// listener is on another host (a pool shared across hosts but
		// not marked so), or the pool was marked cross-host after it
		// listened.
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q takes connections only through its socket %s, which this client cannot use (removed, or the listener is on another host: a pool shared by hosts must be made cross-host, with WithCrossHost on Listen or notnets pool init -cross-host)", name, sockName(name))
	}
	wseg, err := pool.OpenIn(o.Pool, pool.ListenerFile(name), pool.ListenerSize, pool.ListenerSize, o.Access)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: open the slots of listener %q: %v", name, err)
	}
	defer wseg.Close()
	if wseg.Owner.Dev != lseg.Owner.Dev || wseg.Owner.Ino != lseg.Owner.Ino {
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q was replaced while connecting", name)
	}
	if err := wseg.UseCoherence(mode.Coherence); err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	if lis, err = mapListener(wseg, name); err != nil {
		return nil, err
	}
	if lis.Server.State.Load() != pool.StateOpen {
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q is closed", name)
	}
	var seg *pool.Segment
	var lay *pool.ConnLayout
	for try := 1; ; try++ {
		var segName string
		segName, seg, lay, err = namedConn(o, mode)
		if err != nil {
			return nil, err
		}
		lay.Client.State.Store(pool.StateOpen)
		err = announce(ctx, o, name, lis, segName, lay)
		if err == nil {
			break
		}
		lay.Client.State.Store(pool.StateClosed)
		seg.Unlink()
		seg.Close()
		if !errors.Is(err, errSlotLost) {
			return nil, err
		}
		if try == maxAnnounces {
			return nil, status.Errorf(codes.Unavailable, "notnets: listener %q did not serve %d announcements in a row (each lost its slot, to another host's claim (PROTOCOL.md 18.4), or the server dropped it)", name, try)
		}
	}
	seg.Unlink()
	d.seg, d.lay = seg, lay
	if !remote {
		d.livePID = lis.PID
	}
	return d, nil
}

// namedConn makes a new named connection segment for o in a pool of
// mode, with its header written (and written back, 18.3), mapped and
// protected.
func namedConn(o *DialConfig, mode pool.Mode) (string, *pool.Segment, *pool.ConnLayout, error) {
	segName, err := pool.NewConnName()
	if err != nil {
		return "", nil, nil, err
	}
	spec := o.spec()
	seg, err := pool.CreateConn(o.Pool, segName, spec, o.Access)
	if err != nil {
		return "", nil, nil, createError(err)
	}
	err = seg.UseCoherence(mode.Coherence)
	if err == nil {
		pool.InitConnSpec(seg.Mem, spec, os.Getpid())
		err = pool.WriteConnInfo(seg.Mem, o.Info)
		seg.Flush(seg.Mem[:pool.PageSize]) // before the server reads it (18.3)
	}
	var lay *pool.ConnLayout
	if err == nil {
		lay, err = pool.MapConn(seg.Mem, ring.CheckCap)
	}
	if err == nil {
		lay.SetCoherence(seg.Coherence())
		err = protectPeer(seg, lay, true)
	}
	if err != nil {
		seg.Unlink()
		seg.Close()
		return "", nil, nil, err
	}
	return segName, seg, lay, nil
}

// NotCrossHost is the error (FailedPrecondition) of a client that asked
// for a cross-host pool (WithCrossHost) in the pool dir, whose marker
// says mode: going on would treat as local the peers the caller says are
// remote, which is the mismatch the marker exists to prevent.
func NotCrossHost(dir string, mode pool.Mode) error {
	why := "it has no " + pool.HostsFile + " marker"
	if mode.Ignored != "" {
		why = "its " + pool.HostsFile + " file is ignored, " + mode.Ignored
	}
	return status.Errorf(codes.FailedPrecondition, "notnets: WithCrossHost was given, but pool %s is a pool of one host (%s); a pool becomes cross-host when it is made: WithCrossHost on the first Listen, or notnets pool init -cross-host", dir, why)
}

// mapListener validates the listener segment seg, whose file its owner
// can truncate under us (pool.Guard).
func mapListener(seg *pool.Segment, name string) (*pool.ListenerLayout, error) {
	var lis *pool.ListenerLayout
	err := pool.Guard("listener "+name, func() (err error) {
		seg.Invalidate(seg.Mem[:pool.PageSize]) // 18.3
		lis, err = pool.MapListener(seg.Mem)
		return err
	})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	lis.SetCoherence(seg.Coherence())
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
// server to open the connection. A listener whose heartbeat stands still
// for the liveness timeout meanwhile has lost its process (or its host):
// the client gives up then rather than at its deadline.
func announce(ctx context.Context, o *DialConfig, name string, lis *pool.ListenerLayout, segName string, lay *pool.ConnLayout) error {
	var slot pool.Slot
	var word uint32
	beat := newBeatWatch(lis.Server.Heartbeat, o.Liveness)
	gone := func() error {
		if lis.Server.State.Load() != pool.StateOpen {
			return status.Error(codes.Unavailable, "notnets: listener closed")
		}
		if d := beat.stood(); d > 0 {
			return status.Errorf(codes.Unavailable, "notnets: instance %q stopped beating (its listener's heartbeat has not moved for %v): its process or its host is gone", name, d.Round(time.Millisecond))
		}
		return nil
	}
	err := setupPoll(ctx, o.Wait.Spin, func() (bool, error) {
		if err := gone(); err != nil {
			return false, err
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
	doorbell.KnockWord(lis.Knock, 1)
	held := slotHeld{slot: slot, word: word, name: segName}
	err = waitAccepted(ctx, o, lay, func() error {
		if lis.Server.State.Load() != pool.StateOpen {
			return status.Error(codes.Unavailable, "notnets: listener closed before accepting")
		}
		if lay.Coh != nil { // a claim is exclusive on coherent memory
			if err := held.lost(); err != nil {
				return err
			}
		}
		return gone()
	})
	if err != nil && !errors.Is(err, errSlotLost) {
		// Withdraw, unless the server has taken it. A slot that no
		// longer names this client's segment is not its to free: on
		// memory without coherence it may hold another's announcement
		// of the same state word (18.4).
		if n, nerr := slot.Name(); nerr == nil && n == segName {
			slot.Free(word)
		}
	}
	return err
}

// errSlotLost is why announce gives up a slot that no longer names the
// client's segment: another client took it over (PROTOCOL.md 18.4).
// connect then announces again, with a new segment, up to maxAnnounces
// times.
var errSlotLost = errors.New("notnets: the slot was taken over by another client")

const maxAnnounces = 5

// slotGrace is how long a client waits for its connection to open once
// its slot no longer shows its announcement: the server frees a slot as
// soon as it has taken the name, and opens the connection a moment later.
const slotGrace = time.Second

// slotHeld is a client's announcement in a slot, while it waits for the
// server to open the connection. On coherent memory a claim is exclusive
// and the slot shows the announcement until the server takes it. On
// memory without coherence, two hosts can claim one slot at once and the
// last to write its name wins (18.4): the other would wait for a server
// that never read its name. So a client on such memory (only: lay.Coh)
// that sees its slot name another segment, or freed, while its
// connection is not open, gives the server
// slotGrace to open it (it may have read the name before it was
// overwritten), then gives up the announcement (errSlotLost). A server
// that did take it sees the client's side closed and ends the connection.
type slotHeld struct {
	slot  pool.Slot
	word  uint32
	name  string
	since time.Time // when the slot stopped showing the announcement
}

// lost reports errSlotLost once the slot has not shown the announcement
// for slotGrace.
func (h *slotHeld) lost() error {
	name, err := h.slot.Name()
	if h.slot.State.Load() == h.word && err == nil && name == h.name {
		h.since = time.Time{}
		return nil
	}
	if h.since.IsZero() {
		h.since = time.Now()
	} else if time.Since(h.since) >= slotGrace {
		return errSlotLost
	}
	return nil
}

// beatWatch follows a heartbeat word while a client waits on its
// listener.
type beatWatch struct {
	word    pool.Word64
	timeout time.Duration
	last    uint64
	since   time.Time
}

func newBeatWatch(word pool.Word64, timeout time.Duration) *beatWatch {
	return &beatWatch{word: word, timeout: timeout, last: word.Load(), since: time.Now()}
}

// stood returns how long the heartbeat has stood still, once that is
// the timeout or more; else 0. A timeout of 0 never gives up.
func (b *beatWatch) stood() time.Duration {
	if v := b.word.Load(); v != b.last {
		b.last, b.since = v, time.Now()
		return 0
	}
	if d := time.Since(b.since); b.timeout > 0 && d >= b.timeout {
		return d
	}
	return 0
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
	in := ring.NewConsumerAt(lay.S2C, lay.Server.Tail.Ptr(), lay.Client.Head.Ptr(), 0)
	in.SetCoherence(lay.Coh)
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
