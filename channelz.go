package notnets

import (
	"fmt"

	"github.com/notnets/notnets/internal/chz"
)

// Channelz: a program that imports github.com/notnets/notnets/channelz
// has its notnets servers, their listeners and connections, and their
// counts of calls and streams in the channelz service that package
// serves. Without that import nothing here registers or counts (chz.IsOn
// is false): a call pays one nil check.
//
// A call counts as started when its handler is about to run (calls of
// unknown methods and calls refused by AllowUIDs and the like are not
// counted, as grpc-go counts only calls it dispatches), and as succeeded
// or failed by its status when it is written, before the client can
// read it; a call its client cancels, or whose connection closes, counts
// as failed at once. Each stream of a connection counts as started when
// its HEADERS arrive, and as succeeded when the server writes its
// TRAILERS, failed otherwise (channelz's meaning for a server socket).

// newChannelz registers s with channelz, if a program asked for it.
func (s *Server) newChannelz() {
	if chz.IsOn() {
		s.cz = chz.NewServer("notnets")
	}
}

// czListen registers lis as a listen socket of s, and returns what
// unregisters it.
func (s *Server) czListen(lis *Listener) func() {
	if s.cz == nil {
		return func() {}
	}
	sk := s.cz.AddListener(lis.l.Instance(), lis.Addr().String())
	return func() { s.cz.RemoveSocket(sk) }
}

// czConn registers a connection and returns the counts of its streams,
// or nil.
func (sc *serverConn) czConn() *chz.Counts {
	cz := sc.srv.cz
	if cz == nil {
		return nil
	}
	a, _ := sc.peer.AuthInfo.(AuthInfo)
	sc.czSock = cz.AddConn(sc.peer.Addr.String(), sc.peer.LocalAddr.String(), sc.peer.Addr.String(),
		fmt.Sprintf("notnets uid=%d gid=%d pid=%d verified=%v", a.UID, a.GID, a.PID, a.PIDVerified))
	return &sc.czSock.Streams
}

// czClosed unregisters a connection that has closed.
func (sc *serverConn) czClosed() {
	if sc.czSock != nil {
		sc.srv.cz.RemoveSocket(sc.czSock)
	}
}

// The states of a call for channelz (serverStream.czState).
const (
	czNotRun  = iota // not counted
	czRunning        // counted as started
	czEnded          // counted as ended too
)

// czStart counts the call as started, when its handler is about to run.
func (st *serverStream) czStart() {
	if cz := st.sc.srv.cz; cz != nil && st.err == nil && st.czState.CompareAndSwap(czNotRun, czRunning) {
		cz.Calls.Start()
	}
}

// czEnd counts the started call as ended, once.
func (st *serverStream) czEnd(ok bool) {
	if cz := st.sc.srv.cz; cz != nil && st.czState.CompareAndSwap(czRunning, czEnded) {
		cz.Calls.End(ok)
	}
}

// czNeverRan counts a call whose handler never ran as started and failed,
// as grpc-go counts a call that fails while it reads its request.
func (st *serverStream) czNeverRan() {
	if cz := st.sc.srv.cz; cz != nil && st.err == nil && st.czState.CompareAndSwap(czNotRun, czEnded) {
		cz.Calls.Start()
		cz.Calls.End(false)
	}
}
