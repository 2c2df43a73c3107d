//go:build linux

package pool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Entry describes one file of a pool.
type Entry struct {
	Name     string
	Kind     string // "listener", "connection" or "other"
	Size     int64
	Modified time.Time
	PID      int    // the creator's pid from the segment header, 0 if unreadable
	Stale    bool   // left by a process that is gone, or unreadable and old
	Why      string // why Stale, or the state of a live file
}

// staleUnreadable is how old a segment file with an unreadable header must
// be before it counts as stale: a segment is briefly unreadable while its
// creator writes it.
const staleUnreadable = time.Minute

// staleConnection is how old a connection segment may get: its file lives
// only while the client announces it, which Dial bounds by its timeout.
const staleConnection = 10 * time.Minute

// Scan lists the files of the pool dir and tells which are stale. It reads
// at most a segment's header page and never maps anything.
func Scan(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("notnets: scan pool: %w", err)
	}
	var out []Entry
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		e := Entry{Name: de.Name(), Kind: "other", Size: fi.Size(), Modified: fi.ModTime()}
		switch {
		case strings.HasSuffix(e.Name, ListenerSuffix):
			e.Kind = "listener"
		case strings.HasPrefix(e.Name, ConnPrefix):
			e.Kind = "connection"
		}
		if e.Kind != "other" && fi.Mode().IsRegular() {
			judge(dir, &e)
		} else {
			e.Why = "not a notnets segment; left alone"
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func judge(dir string, e *Entry) {
	age := time.Since(e.Modified)
	kind := uint16(KindListener)
	if e.Kind == "connection" {
		kind = KindConn
	}
	pid, err := headerPID(filepath.Join(dir, e.Name), kind)
	switch {
	case err != nil && age > staleUnreadable:
		e.Stale, e.Why = true, fmt.Sprintf("unreadable header (%v), %v old", err, age.Round(time.Second))
	case err != nil:
		e.Why = fmt.Sprintf("unreadable header (%v), being created?", err)
	case !ProcessAlive(pid):
		e.PID, e.Stale, e.Why = pid, true, fmt.Sprintf("process %d is gone", pid)
	case e.Kind == "connection" && age > staleConnection:
		e.PID, e.Stale, e.Why = pid, true, fmt.Sprintf("announced %v ago and never taken", age.Round(time.Second))
	default:
		e.PID, e.Why = pid, fmt.Sprintf("process %d is alive", pid)
	}
}

// headerPID reads the creator's pid from a segment's header page.
func headerPID(path string, kind uint16) (int, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var h [24]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return 0, errors.New("shorter than a header")
	}
	if binary.LittleEndian.Uint32(h[offMagic:]) != Magic {
		return 0, errors.New("bad magic")
	}
	if binary.LittleEndian.Uint16(h[offKind:]) != kind {
		return 0, errors.New("wrong kind")
	}
	return int(binary.LittleEndian.Uint32(h[offPID:])), nil
}

// Clean removes the stale files of the pool dir and returns them.
func Clean(dir string) ([]Entry, error) {
	entries, err := Scan(dir)
	if err != nil {
		return nil, err
	}
	var removed []Entry
	for _, e := range entries {
		if !e.Stale {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name)); err == nil {
			removed = append(removed, e)
		}
	}
	return removed, nil
}
