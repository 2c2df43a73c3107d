package transport

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// ErrListenerClosed is returned by Accept after Close.
var ErrListenerClosed = errors.New("notnets: listener closed")

// Listener is a name published in a pool, through which clients hand
// over new connections: on one host through its socket (accept_socket.go),
// across hosts through the slots of its segment.
//
// Locks: mu is held by Accept while it touches the segment (Close takes it
// to wait for Accept to leave); hsMu guards the handshakes in progress.
// Neither is held while the other is taken.
type Listener struct {
	dir, name string // name: the instance's base name, <service>+<id>
	service   string
	access    pool.Access
	stream    bool // serves byte-stream connections (PROTOCOL.md 17), not frames
	seg       *pool.Segment
	lay       *pool.ListenerLayout
	wait      Wait
	// cross: the pool is cross-host (its marker, PROTOCOL.md 3.7): no
	// socket, slots only, no pid looked up, and wait is poll-only, for
	// the listener and every connection it accepts.
	cross bool
	// coherence is how the pool's memory is kept coherent (PROTOCOL.md
	// 18), for the segments the listener maps.
	coherence pool.Coherence
	// reaping: the listener counts in its pool's reaper (reap.go); set
	// by Listen before it returns, read by Close.
	reaping bool

	// creds is the socket of the credentialed handshake (handshake.go), or
	// nil; incoming carries what it receives to accept.
	creds      *net.UnixListener
	credsDir   int // descriptor of the pool directory the socket is named in
	incoming   chan *Accepted
	handshakes sync.WaitGroup // acceptCreds and the handshakes in progress
	hsMu       sync.Mutex
	hsConns    map[*net.UnixConn]bool // handshakes in progress, to end at Close
	hsClosed   bool

	closeOnce  sync.Once // Stop
	unlinkOnce sync.Once // the rest of Close
	done       chan struct{}
	mu         sync.Mutex // held by Accept while it touches the segment
	claimed    [pool.Slots]claimSeen
}

// ListenConfig is how a listener is published.
type ListenConfig struct {
	Wait Wait
	// Exclusive makes Listen fail with an error wrapping ErrInstanceExists
	// when another live instance of the same kind serves the service.
	Exclusive bool
	// Stream publishes an instance that serves byte-stream connections
	// (PROTOCOL.md 17; NewStreamServer serves them), not frames.
	Stream bool
	// CrossHost makes the pool cross-host if it does not exist yet, or
	// marks it if nobody uses it (pool.PrepareCrossHost), and fails
	// otherwise. Without it, Listen follows whatever the pool's marker
	// says.
	CrossHost bool
}

// ErrInstanceExists is wrapped by the error of an exclusive Listen of a
// service that another live instance serves.
var ErrInstanceExists = errors.New("notnets: the service has a live instance")

// Listen publishes a new instance of service in the pool dir, which it
// prepares with access: a listener named <service>+<random id>
// (PROTOCOL.md 10.6). Other instances of the service may be live; with
// cfg.Exclusive, their presence is an error.
func Listen(dir, service string, access pool.Access, cfg ListenConfig) (*Listener, error) {
	if err := pool.ValidName(service); err != nil {
		return nil, err
	}
	prepare := pool.Prepare
	if cfg.CrossHost {
		prepare = pool.PrepareCrossHost
	}
	if err := prepare(dir, access); err != nil {
		return nil, err
	}
	// The pool's marker decides, not this process's options (F13).
	mode, err := pool.ReadMode(dir, access)
	if err != nil {
		return nil, err
	}
	wait := cfg.Wait
	if mode.CrossHost {
		wait.PollOnly = true // no futex reaches another host
	}
	pool.CleanIn(dir, access) // best effort: files of processes that died

	base, err := pool.NewInstance(service)
	if err != nil {
		return nil, err
	}
	// Writable by this server only, unless clients need the slots.
	seg, err := pool.CreateListenerIn(dir, pool.ListenerFile(base), pool.ListenerSize, access)
	if err != nil {
		return nil, err
	}
	l := &Listener{dir: dir, name: base, service: service, access: access, stream: cfg.Stream, cross: mode.CrossHost, coherence: mode.Coherence, seg: seg, wait: wait, done: make(chan struct{})}
	err = seg.UseCoherence(mode.Coherence)
	// A pool on a device takes its connections through the slots, into
	// the device: a socket would hand over memfds.
	if err == nil && mode.Device == nil {
		err = l.listenCreds()
	}
	if err != nil {
		seg.Unlink()
		seg.Close()
		return nil, err
	}
	var flags uint32
	if l.creds != nil {
		flags = pool.ListenerSocketOnly // clients must not be talked down to the slots
	} else if err := seg.OpenPeersWrite(); err != nil { // clients write the slots
		seg.Unlink()
		seg.Close()
		return nil, err
	}
	if cfg.Stream {
		flags |= pool.ListenerByteStream // clients of the other kind skip it (F11)
	}
	pool.InitListener(seg.Mem, os.Getpid(), flags)
	seg.Flush(seg.Mem[:pool.PageSize]) // before clients read it (18.3)
	if l.lay, err = pool.MapListener(seg.Mem); err != nil {
		l.stopCreds()
		seg.Unlink()
		seg.Close()
		return nil, err
	}
	l.lay.SetCoherence(seg.Coherence())
	l.lay.Load.Workers.Store(uint32(runtime.GOMAXPROCS(0)))
	l.startCreds()
	l.lay.Server.State.Store(pool.StateOpen)
	// The mapping outlives Close: calls still running count their load
	// in it until they end (Load), and a cleanup unmaps it once nothing
	// refers to the listener.
	runtime.AddCleanup(l, func(s *pool.Segment) { s.Close() }, seg)
	if cfg.Exclusive {
		if pid := liveInstance(dir, service, base, access, cfg.Stream, seg.Owner.UID, mode); pid != 0 {
			l.Close()
			return nil, fmt.Errorf("%w: listen %s/%s: instance of process %d is live", ErrInstanceExists, dir, service, pid)
		}
	}
	watchListener(l)
	if l.cross {
		startReaper(dir, access) // reap.go
		l.reaping = true
	}
	balance.Announce(dir, access)
	return l, nil
}

// liveInstance returns the pid of a live instance of service other than
// base, run by uid and serving the same kind of connection (byte streams
// or not), or 0. Another user's instance in a group pool does not count:
// it could otherwise keep every exclusive Listen out; nor does one of the
// other kind, which has other clients (F11). An instance whose pid
// cannot be looked up here (a cross-host pool; or another host or
// pid namespace, F14) is live if its heartbeat moves within
// remoteLiveWait.
func liveInstance(dir, service, base string, access pool.Access, stream bool, uid uint32, mode pool.Mode) int {
	bases, err := pool.ListInstances(dir, service, access)
	if err != nil {
		return 0
	}
	for _, b := range bases {
		if b == base {
			continue
		}
		in, err := balance.OpenInstance(dir, b, access, mode.Coherence)
		if err != nil || in.Owner.UID != uid || in.ByteStream() != stream || !in.Open() {
			continue
		}
		if mode.CrossHost || !in.Host.Local() {
			if beating(in) {
				return in.PID
			}
		} else if pool.ProcessAlive(in.PID) {
			return in.PID
		}
	}
	return 0
}

// remoteLiveWait is how long an exclusive Listen watches the heartbeat of
// an instance it cannot judge by its pid: three beats, so that a tick a
// little late does not read as a dead instance.
const remoteLiveWait = 3 * beatInterval

// beating reports whether in's heartbeat moves within remoteLiveWait.
func beating(in *balance.Instance) bool {
	first := in.Heartbeat()
	deadline := time.Now().Add(remoteLiveWait)
	for time.Now().Before(deadline) {
		if in.Heartbeat() != first {
			return true
		}
		time.Sleep(10 * time.Millisecond) // heartbeats move every 100 ms: a sample, not a wait for an event
	}
	return false
}

// Dir returns the pool directory the listener is published in.
func (l *Listener) Dir() string { return l.dir }

// Name returns the service the listener serves.
func (l *Listener) Name() string { return l.service }

// Instance returns the listener's instance name, <service>+<id>.
func (l *Listener) Instance() string { return l.name }

// CrossHost reports whether the listener's pool is cross-host (its
// marker): its connections then poll only and know their clients by
// heartbeat alone.
func (l *Listener) CrossHost() bool { return l.cross }

// Load returns the load words the instance publishes; the server counts
// its calls in them. They stay valid after Close.
func (l *Listener) Load() *pool.Load { return &l.lay.Load }

// Drain tells clients to start no new calls on this instance (its
// GracefulStop has begun); they see it at their next pick.
func (l *Listener) Drain() { l.lay.Load.Draining.Store(1) }

// Close removes the listener from the pool (Stop, then its file goes).
// Accepted connections stay open.
func (l *Listener) Close() error {
	l.Stop()
	l.unlinkOnce.Do(func() {
		l.seg.Unlink()
		unwatchListener(l)
		if l.reaping { // not for a Listen that failed before it started it
			stopReaper(l.dir)
		}
		balance.Announce(l.dir, l.access)
	})
	return nil
}

// Stop makes the listener take no more connections: Accept returns
// ErrListenerClosed, its socket goes, and its state word says closed, so
// that no client connects to it. Its file stays in the pool, with its
// load words and heartbeat, until Close: a server draining its calls
// (GracefulStop) stays visible, as draining, to those who look at the
// pool (notnets pool ls), until the calls end.
func (l *Listener) Stop() {
	l.closeOnce.Do(func() {
		close(l.done)
		l.stopCreds()
		l.lay.Server.State.Store(pool.StateClosed)
		// A new knock value, so that an accept about to wait on the old
		// one returns at once instead of after doorbell.MaxBlock.
		doorbell.KnockWord(l.lay.Knock, 1<<30)
		l.mu.Lock() // wait for Accept to leave the segment
		defer l.mu.Unlock()
		for len(l.incoming) > 0 { // received, never accepted
			a := <-l.incoming
			a.Refuse()
		}
		balance.Announce(l.dir, l.access)
	})
}

// checkFresh checks that a connection segment is as a client leaves it
// before announcing it: client open, server control block and both rings'
// counters and both return queues' counters zero. The counters are trusted from here on only because they
// start at zero.
func checkFresh(lay *pool.ConnLayout) error {
	if lay.Client.State.Load() != pool.StateOpen {
		return errors.New("notnets: client gave up on the connection")
	}
	if lay.Server.State.Load() != pool.StateNew || lay.Server.Sleeping.Load() != 0 ||
		lay.Client.Tail.Load() != 0 || lay.Client.Head.Load() != 0 ||
		lay.Server.Tail.Load() != 0 || lay.Server.Head.Load() != 0 ||
		lay.Client.ReturnTail.Load() != 0 || lay.Client.ReturnHead.Load() != 0 ||
		lay.Server.ReturnTail.Load() != 0 || lay.Server.ReturnHead.Load() != 0 {
		return errors.New("notnets: connection segment announced with used control blocks")
	}
	return nil
}

// checkConnKind checks the connection flags of a segment against the kind
// of connection the listener serves (PROTOCOL.md S7): no unknown bit, the
// byte-stream bit as the listener's, and no heaps on a byte stream, whose
// records carry no references.
func checkConnKind(lay *pool.ConnLayout, stream bool) error {
	f := lay.Spec.Flags
	switch {
	case f&^pool.ConnByteStream != 0:
		return fmt.Errorf("notnets: connection flags %#x have unknown bits (S7)", f)
	case stream && f&pool.ConnByteStream == 0:
		return errors.New("notnets: a frame connection for a listener that serves byte streams (S7)")
	case !stream && f&pool.ConnByteStream != 0:
		return errors.New("notnets: a byte-stream connection for a listener that serves frames (S7)")
	case stream && (lay.Spec.C2SHeap != 0 || lay.Spec.S2CHeap != 0):
		return errors.New("notnets: a byte-stream connection with heaps (S7)")
	}
	return nil
}

// Accepted is a connection segment a client handed over, mapped and
// checked; NewServer serves it.
type Accepted struct {
	seg  *pool.Segment
	lay  *pool.ConnLayout
	auth *Identity // the peer as the kernel reported it, when it came through the socket
	// hs is the handshake connection the segment came through, or nil. It
	// stays open until the server state is stored: a client that sees it
	// close with the state still 0 knows it was refused (PROTOCOL.md 10.4
	// server step 5).
	hs *net.UnixConn
	// lis is the listener that accepted the segment.
	lis *Listener
}

// settled closes the handshake connection, once the server state has been
// stored.
func (a *Accepted) settled() {
	if a.hs != nil {
		a.hs.Close()
		a.hs = nil
	}
}

// Peer returns the client's identity: the kernel's, when the segment came
// through the socket, else what the segment file and the client's header
// say (peerIdentity: verified through /proc only for a client of this
// process's pid domain in a pool of one host).
func (a *Accepted) Peer() Identity {
	if a.auth != nil {
		return *a.auth
	}
	return peerIdentity(a.seg, a.lay.PeerPID, a.remote())
}

// remote reports whether the client's header pid is not of this
// process's pid domain: the pool is cross-host, or the client wrote
// another host identity (F14).
func (a *Accepted) remote() bool {
	return (a.lis != nil && a.lis.cross) || !a.lay.Host.Local()
}

// wait returns w as the connection must wait: poll-only in a cross-host
// pool, whatever the server's options say.
func (a *Accepted) wait(w Wait) Wait {
	if a.lis != nil && a.lis.cross {
		w.PollOnly = true
	}
	return w
}

// UserAgent returns the user agent the client wrote in its connection
// header, or "" (PROTOCOL.md 4, rule F11).
func (a *Accepted) UserAgent() string { return a.lay.Info.UserAgent }

// livePID is the client's pid where this process can look it up: the
// kernel's, when the segment came through the socket (0 for a client in
// a pid namespace this process cannot see into), else the one the client
// wrote into its header, if it is of this process's pid domain; else 0
// (liveness by heartbeat alone).
func (a *Accepted) livePID() int {
	switch {
	case a.auth != nil:
		return a.auth.PID
	case a.remote():
		return 0
	}
	return a.lay.PeerPID
}

// Refuse tells the client its connection is refused (the server is
// stopping) and unmaps the segment.
func (a *Accepted) Refuse() {
	a.lay.Server.State.Store(pool.StateClosed)
	a.settled()
	a.seg.Close()
}

// Accept waits for a client to hand over a connection and maps its
// segment. Announcements that fail the checks are dropped, and the slot
// freed.
func (l *Listener) Accept() (*Accepted, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	idleSince := time.Now()
	var scanned time.Time // the last reading of the slots
	var scannedKnock uint32
	for {
		select {
		case <-l.done:
			return nil, ErrListenerClosed
		default:
		}
		knock := l.lay.Knock.Load()
		select {
		case a := <-l.incoming: // nil channel without a socket: never ready
			a.lis = l
			return a, nil
		default:
		}
		// On memory without coherence a slot costs an invalidate to read
		// (PROTOCOL.md 18.3): 31 lines a millisecond in the poll below
		// were 31,000 invalidates a second for an idle listener. There
		// the slots are read when the knock changed (a client knocks
		// after its slot is ready, 10.3), and every slotScanEvery for
		// the claims to reclaim and a knock lost to another host's.
		if l.coherence != pool.CoherenceHardware && knock == scannedKnock && !scanned.IsZero() && time.Since(scanned) < slotScanEvery {
			doorbell.WaitKnock(l.lay.Knock.Ptr(), knock, l.wait.PollOnly)
			continue
		}
		scanned, scannedKnock = time.Now(), knock
		for i, s := range l.lay.Slots {
			if l.creds != nil {
				break // socket only: slots are not read, so nobody can use them
			}
			w := s.State.Load()
			switch pool.SlotState(w) {
			case pool.SlotReady:
				a, err := l.take(s)
				// If the client withdrew meanwhile, it also marked its side
				// closed, and the connection ends as soon as it is served.
				s.Free(w)
				if err == nil {
					a.lis = l
					return a, nil
				}
				idleSince = time.Now()
			case pool.SlotClaimed:
				l.reclaim(i, s, w)
			}
		}
		if time.Since(idleSince) < l.wait.Spin {
			runtime.Gosched()
		} else {
			doorbell.WaitKnock(l.lay.Knock.Ptr(), knock, l.wait.PollOnly)
		}
	}
}

// slotScanEvery is how often a listener on memory without coherence reads
// its slots when its knock has not changed (Accept).
const slotScanEvery = 100 * time.Millisecond

// claimLimit is how long a slot may stay claimed but not ready before the
// server frees it: a client fills a slot in microseconds.
const claimLimit = 10 * time.Second

// reclaim frees a slot whose client died between claiming and filling it,
// or has held it claimed for claimLimit.
func (l *Listener) reclaim(i int, s pool.Slot, w uint32) {
	if l.claimed[i].word != w {
		l.claimed[i] = claimSeen{word: w, since: time.Now()}
	}
	// The pid may still be the slot's previous user's for a moment after a
	// claim, so a dead pid counts only once the claim is a second old.
	age := time.Since(l.claimed[i].since)
	// A slot's pid is a raw number of the claimer's pid namespace: in a
	// cross-host pool it is never looked up, and the claim only times out.
	pid := int(s.PID.Load())
	if (age > time.Second && pid != 0 && !l.cross && !pool.ProcessAlive(pid)) || age > claimLimit {
		s.Free(w)
	}
}

type claimSeen struct {
	word  uint32
	since time.Time
}

func (l *Listener) take(s pool.Slot) (*Accepted, error) {
	name, err := s.Name()
	if err != nil {
		return nil, err
	}
	if !pool.ValidConnName(name) {
		return nil, fmt.Errorf("notnets: slot names %q, not a connection segment", name)
	}
	seg, err := pool.OpenIn(l.dir, name, pool.ConnSize(ring.MinCap, ring.MinCap), maxConnSize, l.access)
	if err != nil {
		return nil, err
	}
	if err := seg.UseCoherence(l.coherence); err != nil {
		seg.Close()
		return nil, err
	}
	return acceptSegment(seg, nil, l.stream)
}

// acceptSegment checks the mapped connection segment seg as a client
// leaves it and protects the client's regions; on a refusal it tells the
// client (if the header was valid) and unmaps the segment. auth is the
// client's identity when the kernel reported it; stream says whether the
// listener serves byte streams.
func acceptSegment(seg *pool.Segment, auth *Identity, stream bool) (*Accepted, error) {
	seg.Invalidate(seg.Mem[:pool.PageSize]) // the client's header (18.3)
	lay, err := pool.MapConn(seg.Mem, ring.CheckCap)
	if err != nil {
		seg.Close() // an invalid header: nothing written
		return nil, err
	}
	lay.SetCoherence(seg.Coherence())
	// Before this side writes anything (even the state word), it
	// allocates what it writes at once: its control page and the return
	// queue of the client's heap (PROTOCOL.md 3.4). An honest client
	// allocated them already (which costs nothing more); a hostile one
	// that left them sparse cannot make a store of ours fault. Not the
	// whole fixed part: that would let a client make the server allocate
	// rings of up to 1 GiB each; the S2C ring is allocated as it is
	// written (NewServer). A pool without room drops the segment
	// unwritten: the client sees it refused (10.4 server step 5) or waits
	// for its deadline (slots).
	err = seg.ReserveBytes(seg.Mem[2*pool.PageSize : 3*pool.PageSize])
	if err == nil {
		err = seg.ReserveBytes(lay.C2SReturns)
	}
	if err != nil {
		seg.Close()
		return nil, err
	}
	err = checkFresh(lay)
	if err == nil {
		err = checkConnKind(lay, stream)
	}
	if err == nil {
		err = protectPeer(seg, lay, false)
	}
	if err != nil {
		lay.Server.State.Store(pool.StateClosed) // tell the client at once
		seg.Close()
		return nil, err
	}
	return &Accepted{seg: seg, lay: lay, auth: auth}, nil
}
