// Package chz holds what notnets reports to channelz: its servers, their
// listeners and connections, and their counts of calls and streams. The
// root package registers and counts, but only once On is set, which
// package github.com/notnets/notnets/channelz does when a program links
// it in (as grpc-go's channelz/service turns grpc-go's channelz on); that
// package serves it. Without it nothing is registered or counted: a
// call pays one nil check.
//
// grpc-go keeps its own channelz entities in google.golang.org/grpc/internal/channelz,
// which no other module can import, and offers no public way to register
// a server or socket there (google.golang.org/grpc/channelz exports only
// the Identifier type): hence this registry of notnets' own.
package chz

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

var on atomic.Bool

// TurnOn makes notnets servers made from now on register and count.
func TurnOn() { on.Store(true) }

// IsOn reports whether notnets servers register and count.
func IsOn() bool { return on.Load() }

// IDBase is the first id of notnets entities: far above grpc-go's channelz
// ids (one counter from 1 for all its entities), so that one channelz
// service can answer for both without two entities sharing an id.
const IDBase = 1 << 48

var lastID atomic.Int64

func newID() int64 { return IDBase + lastID.Add(1) }

// Counts counts calls (of a server) or streams (of a connection).
type Counts struct {
	Started, Succeeded, Failed atomic.Int64
	LastStarted                atomic.Int64 // Unix nanoseconds; 0 before the first
}

// Start counts one started.
func (c *Counts) Start() {
	c.Started.Add(1)
	c.LastStarted.Store(time.Now().UnixNano())
}

// End counts one ended, succeeded or failed.
func (c *Counts) End(ok bool) {
	if ok {
		c.Succeeded.Add(1)
	} else {
		c.Failed.Add(1)
	}
}

// Server is a notnets Server as channelz shows it.
type Server struct {
	ID    int64
	Name  string
	Calls Counts

	mu        sync.Mutex
	listeners map[int64]*Socket
	conns     map[int64]*Socket
}

// Socket is a listener or a connection of a server.
type Socket struct {
	ID            int64
	Name          string
	Local, Remote string // addresses as text ("" for none)
	Security      string // who the peer is, as text ("" for none)
	Streams       Counts // a connection's streams
}

var reg struct {
	mu      sync.Mutex
	servers map[int64]*Server
	sockets map[int64]*Socket
}

// NewServer registers a server named name.
func NewServer(name string) *Server {
	s := &Server{ID: newID(), Name: name, listeners: map[int64]*Socket{}, conns: map[int64]*Socket{}}
	reg.mu.Lock()
	if reg.servers == nil {
		reg.servers, reg.sockets = map[int64]*Server{}, map[int64]*Socket{}
	}
	reg.servers[s.ID] = s
	reg.mu.Unlock()
	return s
}

// Remove unregisters s and its sockets.
func (s *Server) Remove() {
	s.mu.Lock()
	defer s.mu.Unlock()
	reg.mu.Lock()
	defer reg.mu.Unlock()
	delete(reg.servers, s.ID)
	for id := range s.listeners {
		delete(reg.sockets, id)
	}
	for id := range s.conns {
		delete(reg.sockets, id)
	}
	clear(s.listeners)
	clear(s.conns)
}

// AddListener registers a listener of s.
func (s *Server) AddListener(name, local string) *Socket {
	return s.add(s.listeners, &Socket{ID: newID(), Name: name, Local: local})
}

// AddConn registers a connection of s.
func (s *Server) AddConn(name, local, remote, security string) *Socket {
	return s.add(s.conns, &Socket{ID: newID(), Name: name, Local: local, Remote: remote, Security: security})
}

func (s *Server) add(m map[int64]*Socket, sk *Socket) *Socket {
	s.mu.Lock()
	defer s.mu.Unlock()
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if _, live := reg.servers[s.ID]; live {
		m[sk.ID] = sk
		reg.sockets[sk.ID] = sk
	}
	return sk
}

// RemoveSocket unregisters a listener or connection of s.
func (s *Server) RemoveSocket(sk *Socket) {
	s.mu.Lock()
	defer s.mu.Unlock()
	reg.mu.Lock()
	defer reg.mu.Unlock()
	delete(s.listeners, sk.ID)
	delete(s.conns, sk.ID)
	delete(reg.sockets, sk.ID)
}

// Listeners returns s's listeners, by id.
func (s *Server) Listeners() []*Socket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.listeners, 0, len(s.listeners))
}

// Conns returns at most max of s's connections whose id is start or
// more, by id, and whether there are no more.
func (s *Server) Conns(start int64, max int) ([]*Socket, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := sorted(s.conns, start, len(s.conns))
	if len(all) > max {
		return all[:max], false
	}
	return all, true
}

// Servers returns at most max registered servers whose id is start or
// more, by id, and whether there are no more.
func Servers(start int64, max int) ([]*Server, bool) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	all := sorted(reg.servers, start, len(reg.servers))
	if len(all) > max {
		return all[:max], false
	}
	return all, true
}

// ServerByID returns the registered server id, or nil.
func ServerByID(id int64) *Server {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return reg.servers[id]
}

// SocketByID returns the registered socket id, or nil.
func SocketByID(id int64) *Socket {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return reg.sockets[id]
}

// sorted returns the values of m whose key is start or more, by key.
func sorted[T any](m map[int64]T, start int64, n int) []T {
	ids := make([]int64, 0, n)
	for id := range m {
		if id >= start {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	out := make([]T, len(ids))
	for i, id := range ids {
		out[i] = m[id]
	}
	return out
}
