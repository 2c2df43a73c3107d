//go:build linux

package pool

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
)

// Instances. A service name may be served by any number of server
// processes at once, each its own instance with its own listener: the
// files <service>+<id>.listener and <service>+<id>.sock, where id is 16
// lower-case hex digits chosen at random by the instance (PROTOCOL.md 10.6).
// "+" is not allowed in service names, so an instance's base name never
// parses as another service's.

// InstanceSep separates a service name from an instance id in a base name.
const InstanceSep = "+"

// instanceIDLen is the length of an instance id in hex digits.
const instanceIDLen = 16

// NewInstance returns a fresh instance base name for service,
// "<service>+<16 hex digits>".
func NewInstance(service string) (string, error) {
	if err := ValidName(service); err != nil {
		return "", err
	}
	var b [instanceIDLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("notnets: random instance id: %w", err)
	}
	return service + InstanceSep + hex.EncodeToString(b[:]), nil
}

// ParseInstance splits an instance base name into its service and id, and
// reports whether base has that form.
func ParseInstance(base string) (service, id string, ok bool) {
	service, id, ok = strings.Cut(base, InstanceSep)
	if !ok || ValidName(service) != nil || len(id) != instanceIDLen {
		return "", "", false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", "", false
		}
	}
	return service, id, true
}

// ValidInstance checks that base is an instance base name.
func ValidInstance(base string) error {
	if _, _, ok := ParseInstance(base); !ok {
		return fmt.Errorf("notnets: %q is not an instance name (<service>+<16 hex digits>)", base)
	}
	return nil
}

// ListInstances returns the base names of the listener files of service
// in the pool dir (checked as ScanIn checks it), in directory order. It
// reads the directory once and opens nothing.
func ListInstances(dir, service string, a Access) ([]string, error) {
	f, err := openDirList(dir, a)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("notnets: list pool directory %s: %w", dir, err)
	}
	var out []string
	for _, n := range names {
		base, ok := strings.CutSuffix(n, ListenerSuffix)
		if !ok {
			continue
		}
		if s, _, ok := ParseInstance(base); ok && s == service {
			out = append(out, base)
		}
	}
	return out, nil
}

// Load is the load an instance publishes in its listener's server control
// page, for clients' balancers to read without a system call
// (PROTOCOL.md 10.6). Only the instance writes it.
type Load struct {
	InFlight *atomic.Uint32 // handlers running
	Queued   *atomic.Uint32 // calls received whose handler has not started
	Workers  *atomic.Uint32 // threads the instance runs handlers on (GOMAXPROCS), at least 1
	Draining *atomic.Uint32 // 1 once the instance takes no new calls
}

// Offsets of the load words in a listener's server control page, on a
// 64-byte line of their own (the heartbeat is the control block's).
const (
	ctlInFlight = 448
	ctlQueued   = 452
	ctlWorkers  = 456
	ctlDraining = 460
)

func loadAt(mem []byte, off int) Load {
	return Load{
		InFlight: u32(mem, off+ctlInFlight),
		Queued:   u32(mem, off+ctlQueued),
		Workers:  u32(mem, off+ctlWorkers),
		Draining: u32(mem, off+ctlDraining),
	}
}
