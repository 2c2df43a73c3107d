package pool

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestGroupAccess(t *testing.T) {
	if a, err := GroupAccess("4242"); err != nil || !a.Shared || a.Group != 4242 {
		t.Errorf("GroupAccess(4242) = %+v, %v", a, err)
	}
	if a, err := GroupAccess("root"); err != nil || a.Group != 0 {
		t.Errorf("GroupAccess(root) = %+v, %v", a, err)
	}
	if _, err := GroupAccess("no-such-group-notnets"); err == nil {
		t.Error("GroupAccess of an unknown group succeeded")
	}
	if OwnerOnly.Shared {
		t.Error("the zero Access is shared")
	}
}

// TestSharedPoolModes prepares a shared pool and creates a segment in it:
// directory 03770 with the group, file 0660 with the group, whatever the
// umask.
func TestSharedPoolModes(t *testing.T) {
	withUmask(t, 0o077)
	gid := os.Getegid()
	if os.Geteuid() == 0 {
		gid = 4242
	}
	a := Access{Shared: true, Group: gid}
	dir := filepath.Join(t.TempDir(), "pool")
	if err := Prepare(dir, a); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil || st.Mode&0o7777 != 0o3770 || int(st.Gid) != gid {
		t.Fatalf("directory mode %o gid %d (%v), want 3770 and %d", st.Mode&0o7777, st.Gid, err, gid)
	}
	seg, err := CreateIn(dir, "seg", PageSize, a)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	if err := syscall.Stat(seg.Path, &st); err != nil || st.Mode&0o777 != 0o660 || int(st.Gid) != gid {
		t.Fatalf("segment mode %o gid %d (%v), want 660 and %d", st.Mode&0o777, st.Gid, err, gid)
	}
	if seg.Owner.UID != uint32(os.Geteuid()) || int(seg.Owner.GID) != gid || seg.Owner.Ino != st.Ino {
		t.Errorf("Owner = %+v", seg.Owner)
	}
	o, err := OpenIn(dir, "seg", PageSize, PageSize, a)
	if err != nil {
		t.Fatalf("OpenIn of a segment of the pool: %v", err)
	}
	o.Close()
}

// TestOpenInRefuses opens files that no user of the pool should have made.
func TestOpenInRefuses(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	os.WriteFile(open, make([]byte, PageSize), 0o600)
	os.Chmod(open, 0o666)
	if _, err := OpenIn(dir, "open", 0, PageSize, OwnerOnly); !errors.Is(err, ErrAccess) {
		t.Errorf("OpenIn of a world-writable file = %v, want ErrAccess", err)
	}
	if os.Geteuid() != 0 {
		t.Log("not root: files of another user are not tried (chown needs root)")
		return
	}
	theirs := filepath.Join(dir, "theirs")
	os.WriteFile(theirs, make([]byte, PageSize), 0o600)
	os.Chown(theirs, 65534, 65534)
	if _, err := OpenIn(dir, "theirs", 0, PageSize, OwnerOnly); !errors.Is(err, ErrAccess) {
		t.Errorf("OpenIn of another user's file = %v, want ErrAccess", err)
	}
	group := Access{Shared: true, Group: 4242}
	gdir := filepath.Join(dir, "group")
	if err := Prepare(gdir, group); err != nil {
		t.Fatal(err)
	}
	theirs = filepath.Join(gdir, "theirs")
	os.WriteFile(theirs, make([]byte, PageSize), 0o660)
	os.Chown(theirs, 65534, 65534)
	if _, err := OpenIn(gdir, "theirs", 0, PageSize, group); !errors.Is(err, ErrAccess) {
		t.Errorf("OpenIn of another user's file of another group = %v, want ErrAccess", err)
	}
	os.Chown(theirs, 65534, 4242)
	if s, err := OpenIn(gdir, "theirs", 0, PageSize, group); err != nil {
		t.Errorf("OpenIn of a group member's file in a group pool = %v", err)
	} else {
		s.Close()
	}
}
