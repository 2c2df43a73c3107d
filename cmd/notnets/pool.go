package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/pool"
)

// poolCmd makes, lists or cleans a pool directory.
func poolCmd(args []string) error {
	fs := flag.NewFlagSet("pool", flag.ContinueOnError)
	dir := fs.String("dir", pool.DefaultDir(), "pool directory ($NOTNETS_POOL, else /dev/shm/notnets-<uid>)")
	group := fs.String("group", "", "the pool's group (name or number), as given to WithPoolGroup; empty for a pool of one user")
	filesOnly := fs.Bool("files", false, "ls: list only the pool's files (the FILES table alone)")
	beat := fs.Bool("beat", false, fmt.Sprintf("ls: read each instance's heartbeat twice, %v apart, and call one whose heartbeat stood still stale", beatWait))
	crossHost := fs.Bool("cross-host", false, "init: make the pool cross-host (shared by processes on several hosts), as WithCrossHost on Listen does")
	coh := fs.String("coherence", "hardware", "init: with -cross-host, how the pool's memory is kept coherent: hardware, software (cache-line flushes, for memory that hardware does not keep coherent between hosts) or simulated (a private copy per process: tests and benchmarks); PROTOCOL.md 18")
	device := fs.String("device", "", "init: keep the pool's segments in this device (a devdax device, /dev/daxX.Y, or a regular file standing in for one) instead of in files")
	chunk := fs.Int("chunk-size", pool.DefaultChunkSize, "init -device: the unit in which segments take the device, a power of two (at least the device's alignment)")
	watch := fs.Duration("watch", 0, fmt.Sprintf("clean: read the pool, wait this long (at least %v), and remove listeners whose heartbeat stood still meanwhile that cannot be judged by their pid (another host or pid namespace, or any in a cross-host pool; Listen and clients judge them over %v)", pool.MinRemoteStaleAfter, pool.RemoteStaleAfter))
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: notnets pool [-dir DIR] [-group GROUP] init [-cross-host [-coherence C]] [-device DEV [-chunk-size N]] [DIR] | ls [-files] [-beat] | clean [-watch D]

  init    make the pool directory (mode 0700, or 03770 with -group), as
          the first Listen does; with -cross-host, a pool shared by
          processes on several hosts (a DAX or CXL file system): it gets a
          marker, the file hosts, that makes every process that opens the
          pool treat its peers as remote (no futex, no Unix socket, no pid;
          heartbeats alone), whatever its options say. An existing pool is
          marked only if nobody uses it yet (no listener, connection or
          socket in it) and this user owns it; a cross-host pool is left
          as it is. -coherence software marks memory that the hosts' caches
          do not keep coherent: every process then writes back what it
          writes and invalidates what it reads (docs/PROTOCOL.md 18);
          -coherence simulated, the same over a simulator, for tests. With -device DEV, the pool's segments live in the
          device DEV (a devdax device, /dev/daxX.Y, or a regular file
          standing in for one), cut into chunks of -chunk-size bytes: each
          segment file in DIR then holds a descriptor of its chunks, and
          DIR/chunks says which chunk is whose; -cross-host and -device
          go together for CXL memory shared by hosts. DIR, if given, is
          the pool directory.
  ls      list the pool's services: the registry's generation and the
          pool's mode (one host, or cross-host), each service with its
          instances, and each instance's id, pid, host, owner, state
          (open, draining, closed, or stale and why), calls in flight and
          queued, workers and heartbeat; then the pool's files: listeners
          and their sockets, connection segments being announced, the
          registry, the marker, and which of them are stale (left by
          processes that died)
  clean   remove the stale files. A listener whose pid cannot be looked
          up here (made on another host or in another pid namespace, or
          any listener of a cross-host pool) is stale only once its
          heartbeat has stood still between two readings far enough
          apart: -watch D reads the pool, waits D and cleans

ls reads the pool without mapping anything (pread of each listener), so it
changes nothing. Every value it shows but the owners comes from shared
memory that the instances write: a number, not a promise. HOST is the
host name and the start of the host id (its boot id) that the instance
wrote: a pid means something only on its host, in its pid namespace.

The pool directory is checked as Listen and Dial check it, and refused if
it is a symbolic link, writable by others (or by its group, unless -group
names it), or owned by someone other than this user or root: run the
command as the pool's user. Files are removed relative to the directory
that was checked, never through a link. A pool whose hosts file is not a
valid marker of its owner is refused by clean (ls shows why).

flags (before or after the command):
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	cmd := fs.Arg(0)
	var operands []string
	for rest := fs.Args(); len(rest) > 1; rest = fs.Args() { // flags after the command, and operands
		if err := fs.Parse(rest[1:]); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			operands = append(operands, fs.Arg(0))
		}
	}
	switch {
	case cmd == "init" && len(operands) == 1:
		*dir = operands[0]
	case len(operands) > 0:
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", operands)
	}
	access := pool.OwnerOnly
	if *group != "" {
		a, err := pool.GroupAccess(*group)
		if err != nil {
			return err
		}
		access = a
	}
	switch cmd {
	case "init":
		c, err := pool.ParseCoherence(*coh)
		if err != nil {
			return err
		}
		if c != pool.CoherenceHardware && !*crossHost {
			return fmt.Errorf("-coherence %s needs -cross-host: a pool of one host is coherent", c)
		}
		return initPool(os.Stdout, *dir, access, *crossHost, c, pool.DeviceConfig{Path: *device, ChunkSize: *chunk})
	case "ls", "":
		entries, err := pool.ScanIn(*dir, access)
		if err != nil {
			return err
		}
		if !*filesOnly {
			if err := lsServices(os.Stdout, *dir, access, entries, *beat); err != nil {
				return err
			}
			fmt.Println()
			fmt.Println("FILES")
		}
		return lsFiles(os.Stdout, entries)
	case "clean":
		return clean(os.Stdout, *dir, access, *watch)
	}
	fs.Usage()
	return fmt.Errorf("unknown pool command %q", cmd)
}

// initPool makes the pool dir, cross-host or not, and says what it is.
// With dev.Path, the pool is made on that device first (the device
// marker), and then marked cross-host, with coherence c, if asked.
func initPool(w io.Writer, dir string, a pool.Access, crossHost bool, c pool.Coherence, dev pool.DeviceConfig) error {
	if dev.Path != "" {
		if err := pool.PrepareDevice(dir, a, dev); err != nil {
			return err
		}
	}
	var err error
	switch {
	case !crossHost:
		err = pool.Prepare(dir, a)
	case c == pool.CoherenceHardware:
		err = pool.PrepareCrossHost(dir, a)
	default:
		err = pool.PrepareCoherence(dir, a, c)
	}
	if err != nil {
		return err
	}
	mode, err := pool.ReadMode(dir, a)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "pool %s: %s\n", dir, modeLine(mode))
	if mode.Device != nil {
		fmt.Fprintf(w, "pool %s: %s\n", dir, deviceLine(mode.Device))
	}
	return nil
}

// deviceLine says where a pool on a device keeps its segments.
func deviceLine(d *pool.Device) string {
	return fmt.Sprintf("segments in device %s: %d chunks of %d bytes (%d bytes)", shown(d.Path), d.Chunks, d.ChunkSize, d.Size())
}

// modeLine says what a pool's marker makes of it.
func modeLine(m pool.Mode) string {
	switch {
	case m.CrossHost:
		return "cross-host (marked by " + shown(m.Creator.String()) + "), " + m.Coherence.String() + " coherence: every process treats its peers as remote, and judges them by heartbeat"
	case m.Ignored != "":
		return "one host (its hosts file is ignored: " + m.Ignored + ")"
	}
	return "one host (no hosts marker)"
}

// clean removes the stale files of the pool dir; with watch, after
// reading the pool, waiting watch and reading it again, so that listeners
// judged by their heartbeat can be judged.
func clean(w io.Writer, dir string, a pool.Access, watch time.Duration) error {
	after := pool.RemoteStaleAfter
	if watch > 0 {
		if watch < pool.MinRemoteStaleAfter {
			return fmt.Errorf("clean -watch %v: at least %v (docs/PROTOCOL.md 3.6)", watch, pool.MinRemoteStaleAfter)
		}
		if _, err := pool.ScanAfter(dir, a, watch); err != nil {
			return err
		}
		fmt.Fprintf(w, "watching the heartbeats of %s for %v\n", dir, watch)
		time.Sleep(watch) // the measurement itself, not a synchronization
		after = watch
	}
	removed, err := pool.CleanAfter(dir, a, after)
	if err != nil {
		return err
	}
	for _, e := range removed {
		fmt.Fprintf(w, "removed %s (%s)\n", shown(e.Name), e.Why)
	}
	fmt.Fprintf(w, "%d stale files removed from %s\n", len(removed), dir)
	if watch == 0 {
		entries, err := pool.ScanIn(dir, a)
		if err != nil {
			return err
		}
		n := 0
		for _, e := range entries {
			if e.Kind == "listener" && !e.Stale && strings.Contains(e.Why, "stale once its heartbeat") {
				n++
			}
		}
		if n > 0 {
			fmt.Fprintf(w, "%d listeners can be judged by their heartbeat alone, which one reading cannot do: clean -watch %v judges them\n", n, pool.RemoteStaleAfter)
		}
	}
	return nil
}

// lsFiles prints the table of the pool's files.
func lsFiles(w io.Writer, entries []pool.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tKIND\tSIZE\tAGE\tSTALE\tWHY\n")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%v\t%s\n", shown(e.Name), e.Kind, e.Size, time.Since(e.Modified).Round(time.Second), e.Stale, e.Why)
	}
	return tw.Flush()
}

// beatWait is how long ls -beat watches the heartbeats. The listener page
// holds a counter, not a time (the instance adds 1 every 100 ms while its
// listener is in the pool), so the age of the last beat can only be seen
// by watching the counter move, which costs a wait: ls stays instant by
// default and shows the counter as it is, and -beat waits once, for every
// instance at the same time. Three beats' worth, so that a tick a little
// late on a busy host does not read as a heart that stopped. A heartbeat
// that stood still tells what the pid check cannot: a process that was
// stopped (SIGSTOP), or a dead instance whose pid another process now has.
const beatWait = 300 * time.Millisecond

// instance is one listener file of the pool, as ls shows it.
type instance struct {
	base        string // <service>+<id>, or <name>
	service, id string // id "-" for a listener named before instances, <name>.listener
	file        pool.Entry
	info        pool.ListenerInfo
	err         error  // reading the listener failed
	beat        string // the HEARTBEAT column
	state, why  string // the STATE and WHY columns
	counts      bool   // its load counts in its service's sums: open or draining
}

// lsServices prints the registry's generation, a line per service and a
// line per instance.
func lsServices(w io.Writer, dir string, a pool.Access, entries []pool.Entry, beat bool) error {
	switch gen, err := pool.ReadGeneration(dir, a); {
	case err == nil:
		fmt.Fprintf(w, "pool %s: registry generation %d\n", dir, gen)
	case errors.Is(err, unix.ENOENT):
		fmt.Fprintf(w, "pool %s: no registry yet (no instance has started)\n", dir)
	default:
		fmt.Fprintf(w, "pool %s: registry unreadable: %v\n", dir, err)
	}
	mode, merr := pool.ReadMode(dir, a)
	if merr != nil {
		fmt.Fprintf(w, "mode: refused: %v\n", merr)
	} else {
		fmt.Fprintf(w, "mode: %s\n", modeLine(mode))
		if mode.Device != nil {
			fmt.Fprintf(w, "device: %s\n", deviceLine(mode.Device))
		}
	}
	// Whether instances' pids can be looked up here (F14).
	remote := func(h pool.Host) bool { return merr != nil || mode.CrossHost || !h.Local() }
	var ins []*instance
	for _, e := range entries {
		base, ok := strings.CutSuffix(e.Name, pool.ListenerSuffix)
		if e.Kind != "listener" || !ok {
			continue
		}
		service, id, ok := pool.ParseInstance(base)
		if !ok {
			if pool.ValidName(base) != nil {
				continue // not a name notnets gives: in the files only
			}
			service, id = base, "-"
		}
		in := &instance{base: base, service: service, id: id, file: e}
		in.info, in.err = pool.ReadListener(dir, base, a)
		in.beat = strconv.FormatUint(in.info.Heartbeat, 10)
		ins = append(ins, in)
	}
	if beat && len(ins) > 0 {
		time.Sleep(beatWait) // the measurement itself, not a synchronization
		for _, in := range ins {
			if in.err != nil {
				continue
			}
			now, err := pool.ReadListener(dir, in.base, a)
			switch {
			case err != nil || now.PID != in.info.PID:
				in.beat += " (gone)"
			case now.Heartbeat == in.info.Heartbeat:
				in.beat += " (stopped)"
			default:
				// Untrusted words: an unsigned difference, never a panic.
				in.beat += fmt.Sprintf(" (+%d)", now.Heartbeat-in.info.Heartbeat)
			}
		}
	}
	for _, in := range ins {
		in.state, in.why, in.counts = instanceState(in, remote(in.info.Host))
	}
	sort.Slice(ins, func(i, j int) bool {
		if ins[i].service != ins[j].service {
			return ins[i].service < ins[j].service
		}
		return ins[i].id < ins[j].id
	})
	if len(ins) == 0 {
		fmt.Fprintln(w, "no services")
		return nil
	}

	// One line per service. Sums in 64 bits: each word is at most 2^32-1.
	type sums struct {
		instances, open, draining, stale int
		inFlight, queued                 uint64
	}
	var order []string
	by := map[string]*sums{}
	for _, in := range ins {
		s := by[in.service]
		if s == nil {
			s = &sums{}
			by[in.service] = s
			order = append(order, in.service)
		}
		s.instances++
		switch {
		case in.state == "open":
			s.open++
		case in.state == "draining":
			s.draining++
		case in.state == "stale":
			s.stale++
		}
		if in.counts {
			s.inFlight += uint64(in.info.InFlight)
			s.queued += uint64(in.info.Queued)
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVICE\tINSTANCES\tOPEN\tDRAINING\tSTALE\tIN-FLIGHT\tQUEUED\n")
	for _, name := range order {
		s := by[name]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", name, s.instances, s.open, s.draining, s.stale, s.inFlight, s.queued)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVICE\tINSTANCE\tPID\tHOST\tOWNER\tSTATE\tIN-FLIGHT\tQUEUED\tWORKERS\tHEARTBEAT\tWHY\n")
	owners := map[uint32]string{}
	for _, in := range ins {
		pid, host, owner, load := "-", "-", "-", [3]string{"-", "-", "-"}
		if in.info.Owner.Ino != 0 { // the file was opened
			owner = ownerName(owners, in.info.Owner.UID)
		}
		if in.err == nil {
			pid, host = strconv.Itoa(in.info.PID), shown(in.info.Host.String())
			load = [3]string{strconv.FormatUint(uint64(in.info.InFlight), 10),
				strconv.FormatUint(uint64(in.info.Queued), 10), strconv.FormatUint(uint64(in.info.Workers), 10)}
		} else {
			in.beat = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", in.service, in.id, pid, host, owner, in.state, load[0], load[1], load[2], in.beat)
		if in.why != "" { // else no padding at the end of the line
			fmt.Fprintf(tw, "\t%s", in.why)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// instanceState returns the STATE and WHY columns of in, and whether its
// load counts in its service's sums. Stale first: the scan's verdict (its
// process is gone, or its header unreadable for long) is also clean's;
// then what the listener page says. remote: its pid cannot be looked up
// here (another host or pid namespace, or a cross-host pool).
func instanceState(in *instance, remote bool) (state, why string, counts bool) {
	switch {
	case in.file.Stale:
		return "stale", in.file.Why, false
	case errors.Is(in.err, pool.ErrAccess):
		return "refused", in.err.Error(), false // clients refuse it too
	case in.err != nil:
		return "unreadable", in.err.Error(), false
	}
	st := in.info.State
	live := st == pool.StateOpen || st == pool.StateClosed && in.info.Draining != 0
	if live && strings.HasSuffix(in.beat, "(stopped)") {
		if remote {
			return "stale", fmt.Sprintf("no heartbeat in %v from pid %d of %s (its pid cannot be looked up here: gone, stopped, or its host down)", beatWait, in.info.PID, shown(in.info.Host.String())), false
		}
		return "stale", fmt.Sprintf("no heartbeat in %v though process %d exists (stopped, or its pid reused)", beatWait, in.info.PID), false
	}
	switch {
	case in.info.Draining != 0 && (st == pool.StateOpen || st == pool.StateClosed):
		// Clients start no call on it; GracefulStop keeps the file until
		// its calls have ended.
		return "draining", "", true
	case st == pool.StateOpen:
		return "open", "", true
	case st == pool.StateClosed:
		return "closed", "", false
	case st == pool.StateNew:
		return "starting", "", false
	}
	return "unknown", fmt.Sprintf("state word %d", st), false
}

// ownerName returns the name of the user uid, or its number if it has
// none, caching both in names.
func ownerName(names map[uint32]string, uid uint32) string {
	if n, ok := names[uid]; ok {
		return n
	}
	n := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(n); err == nil && u.Username != "" {
		n = shown(u.Username)
	}
	names[uid] = n
	return n
}

// shown returns s as ls prints it: as it is if it is printable ASCII
// without spaces, else quoted with Go escapes, so that a file name (which
// any user of a shared pool can choose) can neither break the table nor
// send control sequences to the terminal.
func shown(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}
