//go:build linux

package pool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// RegistryFile is the name of a pool's registry segment: one page whose
// generation word every listener increments when it opens or closes, so
// that clients learn of new and departed instances without reading the
// directory (PROTOCOL.md 10.7).
const RegistryFile = "registry"

// KindRegistry is the header kind of the registry segment.
const KindRegistry = 3

// offGeneration is the offset of the generation word (uint32) in the
// registry segment, on a line of its own after the header fields.
const offGeneration = 64

// Registry is a mapped registry segment.
type Registry struct {
	seg *Segment
	// Generation changes whenever an instance of any service in the pool
	// opens or closes; waiters sleep on it as on a listener's knock word.
	Generation Word32
}

// OpenRegistry maps the registry of the pool dir, creating it if it does
// not exist yet. A registry file of another size, or with a header that
// is not a registry's, is an error (the file is not removed: it may be
// another user's, and only CleanIn judges files).
//
// c is the pool's coherence (Mode.Coherence): the header is written back
// after it is written and read from memory before it is checked, and the
// generation word is a Word32 with the segment's coherence.
func OpenRegistry(dir string, a Access, c Coherence) (*Registry, error) {
	seg, err := CreateIn(dir, RegistryFile, PageSize, a)
	if err == nil {
		if err := seg.UseCoherence(c); err != nil {
			seg.Unlink() // nobody has seen it: no header yet
			seg.Close()
			return nil, err
		}
		writeHeader(seg.Mem, KindRegistry, 0, 0, 0)
		seg.Flush(seg.Mem[:offGeneration])
		return newRegistry(seg), nil
	}
	if !errors.Is(err, syscall.EEXIST) {
		return nil, err
	}
	seg, err = OpenIn(dir, RegistryFile, PageSize, PageSize, a)
	if err != nil {
		return nil, err
	}
	if err := seg.UseCoherence(c); err != nil {
		seg.Close()
		return nil, err
	}
	// PROTOCOL.md F8. A header still all zeros, or half written (the magic
	// goes first), is
	// one its creator is writing right now: look again for a moment.
	for try := 0; ; try++ {
		var zero bool
		err := Guard("registry", func() error {
			seg.Invalidate(seg.Mem[:offGeneration])
			if zero = binary.LittleEndian.Uint32(seg.Mem[offMagic:]) == 0; zero {
				return nil
			}
			_, _, _, err := checkHeader(seg.Mem, KindRegistry)
			return err
		})
		if err == nil || zero {
			break // checked, or being written: the generation word is usable already
		}
		if try == registryTries {
			seg.Close()
			return nil, fmt.Errorf("notnets: registry of pool %s: %w", dir, err)
		}
		time.Sleep(time.Millisecond)
	}
	return newRegistry(seg), nil
}

func newRegistry(seg *Segment) *Registry {
	return &Registry{seg: seg, Generation: u32(seg.Mem, offGeneration).with(seg.Coherence())}
}

// registryTries is how many times OpenRegistry looks again at a registry
// header that does not check: its creator writes it within microseconds.
const registryTries = 5

// Close unmaps the registry. Nobody may use Generation afterwards.
func (r *Registry) Close() error { return r.seg.Close() }

// ReadGeneration reads the generation of the registry of the pool dir
// without mapping or creating it (as ReadListener reads a listener): for
// tools that show a pool. The error wraps ENOENT when the pool has no
// registry yet.
func ReadGeneration(dir string, a Access) (uint32, error) {
	buf, _, err := readSegment(dir, RegistryFile, PageSize, a)
	if err != nil {
		return 0, err
	}
	if _, _, _, err := checkHeader(buf, KindRegistry); err != nil {
		return 0, fmt.Errorf("notnets: registry of pool %s: %w", dir, err)
	}
	return binary.LittleEndian.Uint32(buf[offGeneration:]), nil
}
