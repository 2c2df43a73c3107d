package chz

import "testing"

// TestRegistry: servers and their connections page by id, sockets are
// found by id until removed, and a removed server takes its sockets with
// it.
func TestRegistry(t *testing.T) {
	a, b := NewServer("a"), NewServer("b")
	defer b.Remove()
	if a.ID < IDBase || b.ID <= a.ID {
		t.Fatalf("ids %d, %d: want increasing from %d", a.ID, b.ID, IDBase)
	}
	l := a.AddListener("svc+1", "pool/svc#1")
	c1 := a.AddConn("c1", "pool/svc#1", "pool/svc#2", "")
	c2 := a.AddConn("c2", "pool/svc#1", "pool/svc#3", "")
	if got, end := Servers(a.ID, 1); len(got) != 1 || got[0] != a || end {
		t.Errorf("Servers(a, 1) = %v, %v; want a and more", got, end)
	}
	if got, end := Servers(a.ID+1, 10); len(got) != 1 || got[0] != b || !end {
		t.Errorf("Servers(a+1, 10) = %v, %v; want b, the end", got, end)
	}
	if got, end := a.Conns(0, 1); len(got) != 1 || got[0] != c1 || end {
		t.Errorf("Conns(0, 1) = %v, %v; want c1 and more", got, end)
	}
	if got, end := a.Conns(c1.ID+1, 5); len(got) != 1 || got[0] != c2 || !end {
		t.Errorf("Conns(c1+1, 5) = %v, %v; want c2, the end", got, end)
	}
	if ls := a.Listeners(); len(ls) != 1 || ls[0] != l || SocketByID(l.ID) != l {
		t.Errorf("listeners %v", ls)
	}
	a.RemoveSocket(c1)
	if SocketByID(c1.ID) != nil {
		t.Error("removed connection still found")
	}
	a.Remove()
	if ServerByID(a.ID) != nil || SocketByID(c2.ID) != nil || SocketByID(l.ID) != nil {
		t.Error("removed server, or its sockets, still found")
	}
	if late := a.AddConn("late", "", "", ""); SocketByID(late.ID) != nil {
		t.Error("a connection of a removed server was registered")
	}
	var c Counts
	c.Start()
	c.End(true)
	c.Start()
	c.End(false)
	if c.Started.Load() != 2 || c.Succeeded.Load() != 1 || c.Failed.Load() != 1 || c.LastStarted.Load() == 0 {
		t.Errorf("counts %d %d %d %d", c.Started.Load(), c.Succeeded.Load(), c.Failed.Load(), c.LastStarted.Load())
	}
}
