package transport

// The load an instance publishes (PROTOCOL.md 10.6), counted per stream:
// a stream is queued from the moment it opens until its handler starts,
// then running until it is removed or its connection closes. Each
// stream's flags make every count-out happen once, whichever of the
// reader, the handler's goroutine or the closing connection gets there
// first, so the published words cannot drift.

// loadQueued counts a newly opened stream as queued.
func (t *Server) loadQueued(st *ServerStream) {
	if t.load == nil {
		return
	}
	st.queued.Store(true)
	t.load.Queued.Add(1)
}

// loadRunning moves st from queued to running, as its handler starts.
func (t *Server) loadRunning(st *ServerStream) {
	if t.load == nil {
		return
	}
	if st.queued.CompareAndSwap(true, false) {
		t.load.Queued.Add(^uint32(0))
	}
	t.load.InFlight.Add(1) // before the flag: loadDone never subtracts first
	st.running.Store(true)
}

// loadDone counts st out of the load, if it is still counted.
func (t *Server) loadDone(st *ServerStream) {
	if t.load == nil {
		return
	}
	if st.queued.CompareAndSwap(true, false) {
		t.load.Queued.Add(^uint32(0))
	}
	if st.running.CompareAndSwap(true, false) {
		t.load.InFlight.Add(^uint32(0))
	}
}
