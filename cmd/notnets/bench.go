package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/coherence"
	"github.com/notnets/notnets/internal/pool"
)

// benchConfig is what the flags of `notnets bench` say.
type benchConfig struct {
	transports  []string
	calls       int
	duration    time.Duration
	warmup      int
	rounds      int
	sizes       []int
	concurrency []int
	jsonOut     bool
	outDir      string
	quiet       bool
	settle      time.Duration
	loads       []load
	// instances are the counts of server instances to measure, each
	// interleaved with the others in every round; handlerWait and
	// handlerSlots what the servers' echo handlers do (handler.serve).
	instances    []int
	handlerWait  time.Duration
	handlerSlots int
	// poolModes are the kinds of pool (-pool-mode) every transport through
	// a pool is measured in, each in a pool of its own.
	poolModes []string
}

// Pool modes of -pool-mode (issue 15): the pool each notnets transport
// is measured in.
const (
	// modeSameHost is a pool of one host, as every pool was before: futex
	// doorbell, socket handshake, pid liveness.
	modeSameHost = "same-host"
	// modeCrossHost is a cross-host pool on coherent memory
	// (pool.PrepareCrossHost): polling only, no doorbell, heartbeat
	// liveness, nothing flushed.
	modeCrossHost = "cross-host"
	// modeCoherenceSW is a cross-host pool whose memory is kept coherent
	// by the processor's write-back and invalidate instructions
	// (pool.CoherenceSoftware): real CLWB/CLFLUSHOPT here.
	modeCoherenceSW = "coherence-sw"
	// modeCoherenceSim is a cross-host pool over the simulator of
	// non-coherent memory (pool.CoherenceSimulated): each process works
	// on a private copy, flushes and invalidates copy lines.
	modeCoherenceSim = "coherence-sim"
)

var poolModes = []string{modeSameHost, modeCrossHost, modeCoherenceSW, modeCoherenceSim}

// throughPool reports whether transport name carries its calls through
// a pool that -pool-mode chooses (each is then measured in every mode).
// The floors and wake use the same-host pool whatever -pool-mode says;
// the others use no pool.
func throughPool(name string) bool {
	switch name {
	case "grpc-shm", "notnets", "notnets-raw", "notnets-busy-spin", "notnets-park-only":
		return true
	}
	return false
}

// inPool reports whether transport name uses a pool at all (the floors
// and wake use the same-host one).
func inPool(name string) bool {
	return throughPool(name) || name == "floor" || name == "floor-spin" || name == "wake"
}

// load is how the callers pace their calls: closed loop, each caller
// busy-waiting gap before each call, or open loop at rate calls per
// second (then gap is 0).
type load struct {
	gap  time.Duration
	rate int
}

func (l load) String() string {
	if l.rate > 0 {
		return fmt.Sprintf("%d/s", l.rate)
	}
	return gapName(l.gap)
}

// gapName writes a gap for a table or a file name: 0, 50us, 1ms, 2.5us.
func gapName(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d%time.Millisecond == 0:
		return fmt.Sprintf("%dms", d/time.Millisecond)
	case d%time.Microsecond == 0:
		return fmt.Sprintf("%dus", d/time.Microsecond)
	}
	return fmt.Sprintf("%gus", float64(d)/1e3)
}

var (
	defaultTransports = []string{"grpc-tcp", "grpc-uds", "grpc-shm", "notnets", "notnets-raw", "floor"}
	allTransports     = append(defaultTransports[:len(defaultTransports):len(defaultTransports)], "notnets-busy-spin", "notnets-park-only", "floor-spin", "wake", "memcpy")
)

// singleCaller are the transports without multiplexing: they run with one
// caller only.
func singleCaller(name string) bool {
	return name == "floor" || name == "floor-spin" || name == "wake" || name == "memcpy"
}

// maxMsg is the message size limit of every transport in the benchmark,
// and maxPayload the largest payload it measures (protobuf adds a few
// bytes of framing around it).
const (
	maxMsg     = 1 << 30
	maxPayload = 256 << 20
)

func parseBenchFlags(args []string) (*benchConfig, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: notnets bench [flags]

Runs the gRPC tutorial's helloworld echo (Greeter.SayHello) with the server in
another process, over each transport in turn, interleaved in rounds so that all
share the machine's conditions, and prints per transport: average, p50, p99,
p99.9 and max latency, calls per second, CPU time per call (client and server
processes together), and each one's ratio to grpc-tcp.

transports:
  grpc-tcp     grpc-go over HTTP/2 on TCP loopback (the paper's http2)
  grpc-uds     grpc-go over HTTP/2 on a Unix domain socket
  grpc-shm     grpc-go over HTTP/2 on notnets' drop-in tier: the same grpc.Server
               and grpc-go client, with notnets.ListenConn and ContextDialer, so
               the bytes cross through the pool's rings instead of a socket
  notnets      notnets, protobuf codec (the paper's notnets)
  notnets-raw  notnets, payload sent as raw bytes with no serialization (the paper's notnets-)
  notnets-busy-spin, notnets-park-only
               notnets (protobuf) with both sides using that idle strategy
               (notnets itself uses the default, adaptive); not run by default
  floor        a bare ping-pong of the payload through the same ring code, no gRPC
  floor-spin   the floor with both sides in a pure spin: no pacing, no yield, no
               doorbell; the limit of any polling design. Not run by default:
               it needs a free core for each side, and where they share one
               (a busy or one-core machine) each call waits out time slices.
               Between its turns the server is parked, so it spins only
               during its own measurements
  wake         no call: a bare futex wake-up of a thread sleeping in the server
               process; its latency is the ONE-WAY wake-up time the server
               measures (CLOCK_MONOTONIC), not a round trip. With -gap it is
               the physical limit of any design that sleeps between calls.
               Its CPU per call counts the client spinning until the server
               answers: meaningless, shown anyway; no ratios (not run by default)
  memcpy       one copy of the payload in this process, no peer (not run by default)

pool modes (-pool-mode LIST, e.g. same-host,cross-host,coherence-sw,coherence-sim):
  same-host      a pool of one host (the default): futex doorbell, Unix-socket
                 handshake, pid liveness
  cross-host     a cross-host pool on coherent memory: polling only (no
                 doorbell), no socket handshake, heartbeat liveness
  coherence-sw   a cross-host pool whose memory is kept coherent in software:
                 every writer writes back the lines it wrote, every reader
                 invalidates the lines it reads (CLWB/CLFLUSHOPT here)
  coherence-sim  the same over the simulator of non-coherent memory: each
                 process works on a private copy, flushes and invalidates
                 copy lines
  Each mode has a fresh pool of its own, served by every server process.
  grpc-shm and the notnets transports are measured in every mode listed, in
  the same rounds; the grpc-* network transports run once, and the floors and
  wake in a pool of one host. In the coherence modes both processes count
  the cache lines they flush and invalidate (coherence.Counting, enabled
  only then) on the connections that carried the calls, reported per call
  (JSON: cache_lines_per_call; the text's "client fl/inv" and "server
  fl/inv" columns), their polls included. Before each size's rounds, with a
  cross-host mode, the bench watches every connection open and idle for
  500 ms and reports the CPU and the lines the pollers take (JSON: idle):
  in a cross-host pool nothing sleeps on a futex.

pacing (-gap and -rate exclude each other):
  -gap LIST    closed loop: before each call the caller busy-waits the gap
               (spinning on the clock: no sleep, no yield), then times the
               call. Every transport, size and concurrency is measured at
               every gap, so the peer has been idle that long before each
               call: pollers may have gone to sleep, cores may have idled.
  -rate LIST   open loop: calls are scheduled at start + k/N (k counted across
               the callers of one measurement); a caller takes the next k,
               waits for its time (busy-waiting; sleeping only when more than
               2 ms early) and records the latency from the SCHEDULED time,
               so that a slow call delays no measurement (no coordinated
               omission). A transport that cannot keep up shows it in its
               latencies.
  CPU per call excludes the caller's busy-wait (its time is subtracted from
  the client's CPU; JSON: client_wait_us_per_call). With several gaps or
  rates the plots include latency and CPU per call against the gap or rate.

instances (-instances LIST, e.g. 1,2,3):
  The command starts as many server processes as the largest count. For
  each count N, the first N of them are the N instances of one notnets
  service, which the notnets client balances over (its default,
  least_request); grpc-go's client uses its round_robin balancer over the
  same N processes' TCP (or Unix socket, or drop-in instance) addresses,
  given by a manual resolver. Every count is measured in every round, interleaved with the
  others, and ratios compare transports at the same count. When a count
  above 1 is measured, grpc-go uses round_robin at every count, 1
  included; otherwise it dials the one address directly (pick_first).
  floor, floor-spin, wake and memcpy involve no instances: they run once,
  in the first count's rows, against the first server process. CPU per
  call counts every server process. Each result says how many of its
  calls each instance served (JSON: instance_calls; the text's "by
  instance" column, in percent).
  -handler-wait D makes every echo handler wait D without computing, as
  a handler waiting for a backend does. A wait alone sets no capacity: an
  instance runs any number of handlers at once. -handler-slots K lets at
  most K handlers of an instance wait at once (the others queue for a
  slot inside the handler, counted as in flight), so that an instance
  serves at most K/D calls a second and more instances serve more, even
  on a machine with few cores. The wait blocks the handler's thread in
  nanosleep(2) with 1 us of timer slack: it lasts D plus the kernel's
  wake-up, and its measured mean is in the "wait" column (JSON:
  handler_wait_us). The sleep and wake-up cost the server some CPU,
  counted in cpu/call. (A Go timer or time.Sleep under 1 ms waits about
  1 ms in an otherwise idle process: the runtime polls with millisecond
  timeouts.)

flags:
`)
		fs.PrintDefaults()
	}
	transports := fs.String("transports", strings.Join(defaultTransports, ","), "comma-separated transports to measure")
	calls := fs.Int("n", 50000, "timed calls per transport, size, concurrency and gap or rate")
	duration := fs.Duration("duration", 0, "time per transport, size, concurrency and gap or rate instead of -n (e.g. 5s)")
	warmup := fs.Int("warmup", 2000, "untimed calls per transport before each size")
	rounds := fs.Int("rounds", 5, "rounds the calls are split into, transports taking turns in each")
	sizes := fs.String("sizes", "16", "payload sizes in bytes, comma-separated; K and M suffixes (e.g. 0,64,1K,16K,256K,1M)")
	conc := fs.String("c", "1", "concurrent callers on one connection, comma-separated (e.g. 1,16)")
	jsonOut := fs.Bool("json", false, "print results as JSON instead of tables")
	outDir := fs.String("out", "bench-out", "directory for the plots (PNG); empty for none")
	quiet := fs.Bool("quiet", false, "no progress bar")
	settle := fs.Duration("settle", 0, "pause before each transport's turn, so that the previous transport's pollers and goroutines go idle")
	gaps := fs.String("gap", "0", "closed loop: busy-wait before each call, comma-separated durations (e.g. 0,50us,150us,1ms)")
	rates := fs.String("rate", "0", "open loop: calls per second, comma-separated; 0 for the closed loop")
	instances := fs.String("instances", "1", "server instances per service, comma-separated counts (e.g. 1,2,3); see above")
	handlerWait := fs.Duration("handler-wait", 0, "wait in each echo handler, e.g. 200us (nanosleep: this plus the kernel's wake-up; the report gives the measured mean)")
	handlerSlots := fs.Int("handler-slots", 0, "handlers per instance that wait at once (with -handler-wait; the others queue for a slot); 0 for no limit")
	modes := fs.String("pool-mode", modeSameHost, "pool modes to measure the pool transports in, comma-separated: "+strings.Join(poolModes, ", ")+"; see above")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg := &benchConfig{calls: *calls, duration: *duration, warmup: *warmup, rounds: max(*rounds, 1),
		jsonOut: *jsonOut, outDir: *outDir, quiet: *quiet, settle: *settle}
	for _, t := range strings.Split(*transports, ",") {
		if t = strings.TrimSpace(t); !contains(allTransports, t) {
			return nil, fmt.Errorf("unknown transport %q (have %s)", t, strings.Join(allTransports, ", "))
		}
		cfg.transports = append(cfg.transports, t)
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := parseSize(s)
		if err != nil {
			return nil, err
		}
		if n > maxPayload {
			return nil, fmt.Errorf("payload size %d exceeds the benchmark's limit of %d", n, maxPayload)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad concurrency %q", s)
		}
		cfg.concurrency = append(cfg.concurrency, n)
	}
	if cfg.calls < cfg.rounds && cfg.duration == 0 {
		return nil, fmt.Errorf("-n %d is smaller than -rounds %d", cfg.calls, cfg.rounds)
	}
	loads, err := parseLoads(*gaps, *rates)
	if err != nil {
		return nil, err
	}
	cfg.loads = loads
	if cfg.instances, err = parseInstances(*instances); err != nil {
		return nil, err
	}
	cfg.handlerWait, cfg.handlerSlots = *handlerWait, *handlerSlots
	for _, m := range strings.Split(*modes, ",") {
		m = strings.TrimSpace(m)
		switch {
		case !contains(poolModes, m):
			return nil, fmt.Errorf("unknown pool mode %q (have %s)", m, strings.Join(poolModes, ", "))
		case contains(cfg.poolModes, m):
			return nil, fmt.Errorf("pool mode %q given twice", m)
		}
		cfg.poolModes = append(cfg.poolModes, m)
	}
	switch {
	case cfg.handlerWait < 0:
		return nil, fmt.Errorf("bad -handler-wait %v", cfg.handlerWait)
	case cfg.handlerSlots < 0:
		return nil, fmt.Errorf("bad -handler-slots %d", cfg.handlerSlots)
	case cfg.handlerSlots > 0 && cfg.handlerWait == 0:
		return nil, errors.New("-handler-slots limits the handlers' waits: it needs -handler-wait")
	}
	return cfg, nil
}

// maxInstances bounds -instances: each instance is a server process.
const maxInstances = 64

// parseInstances parses -instances: distinct counts of instances.
func parseInstances(list string) ([]int, error) {
	var counts []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > maxInstances {
			return nil, fmt.Errorf("bad instance count %q (want 1 to %d)", s, maxInstances)
		}
		if contains(counts, n) {
			return nil, fmt.Errorf("instance count %d given twice", n)
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// parseLoads parses -gap and -rate into the loads to measure.
func parseLoads(gaps, rates string) ([]load, error) {
	var gapLoads, rateLoads []load
	gapSet, rateSet := false, false
	for _, s := range strings.Split(gaps, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d < 0 {
			return nil, fmt.Errorf("bad gap %q (want a duration such as 0, 50us, 1ms)", s)
		}
		gapLoads = append(gapLoads, load{gap: d})
		gapSet = gapSet || d > 0
	}
	for _, s := range strings.Split(rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 || n > 1e9 {
			return nil, fmt.Errorf("bad rate %q (want calls per second, 0 for none)", s)
		}
		rateLoads = append(rateLoads, load{rate: n})
		rateSet = rateSet || n > 0
	}
	switch {
	case gapSet && rateSet:
		return nil, errors.New("-gap and -rate exclude each other: a gap paces a closed loop, a rate an open one")
	case rateSet:
		return rateLoads, nil
	}
	return gapLoads, nil
}

func contains[T comparable](list []T, s T) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func parseSize(s string) (int, error) {
	s = strings.ToUpper(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "B")))
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad payload size %q", s)
	}
	return n * mult, nil
}

// Result is one transport's figures at one payload size and concurrency
// (and, for a transport through a pool, in one pool mode).
type Result struct {
	Transport string `json:"transport"`
	// PoolMode is the kind of pool the calls went through (-pool-mode;
	// the floors and wake: same-host), empty for the transports that use
	// no pool.
	PoolMode    string  `json:"pool_mode,omitempty"`
	Size        int     `json:"size_bytes"`
	Concurrency int     `json:"concurrency"`
	Calls       int64   `json:"calls"`
	AvgUS       float64 `json:"avg_us"`
	P50US       float64 `json:"p50_us"`
	P99US       float64 `json:"p99_us"`
	P999US      float64 `json:"p999_us"`
	MaxUS       float64 `json:"max_us"`
	CallsPerSec float64 `json:"calls_per_sec"`
	MBPerSec    float64 `json:"payload_mb_per_sec"`     // request payload bytes per second of calls
	ClientCPUUS float64 `json:"client_cpu_us_per_call"` // without the busy-wait before calls
	ServerCPUUS float64 `json:"server_cpu_us_per_call"`
	// GapUS is the busy-wait before each call (closed loop), RatePerSec
	// the calls per second scheduled (open loop; 0 for the closed loop),
	// and ClientWaitUS the caller's busy-wait per call, subtracted from
	// ClientCPUUS.
	GapUS        float64 `json:"gap_us"`
	RatePerSec   int     `json:"rate_per_sec"`
	ClientWaitUS float64 `json:"client_wait_us_per_call,omitempty"`
	// Ratios to grpc-tcp in the same run (grpc-tcp's figure over this one's):
	// above 1 means faster or cheaper than grpc-tcp.
	AvgRatio  float64 `json:"avg_ratio_vs_grpc_tcp,omitempty"`
	P999Ratio float64 `json:"p999_ratio_vs_grpc_tcp,omitempty"`
	TputRatio float64 `json:"throughput_ratio_vs_grpc_tcp,omitempty"` // this one's calls/s over grpc-tcp's
	CPURatio  float64 `json:"cpu_ratio_vs_grpc_tcp,omitempty"`
	// Instances is how many server instances served the calls (for the
	// floors, wake and memcpy: the count of the rows they run in), and
	// InstanceCalls how many of the timed calls each one's handlers
	// served, in the order of the report's ServerPIDs (absent where no
	// handler runs). HandlerWaitUS is the mean time the handlers really
	// waited with -handler-wait (nanosleep and its wake-up).
	Instances     int     `json:"instances"`
	InstanceCalls []int64 `json:"instance_calls,omitempty"`
	HandlerWaitUS float64 `json:"handler_wait_us,omitempty"`
	// Lines are the cache lines flushed and invalidated per call in a
	// coherence mode (absent in the others, where nothing is).
	Lines *CacheLines `json:"cache_lines_per_call,omitempty"`

	showMode    bool // the report has several pool modes: label rows with theirs
	clientLines coherence.Lines
	serverLines coherence.Lines
	load        load
	hist        *hdrhistogram.Histogram
	elapsed     time.Duration
	cpuSelf     time.Duration
	cpuPeer     time.Duration
	cpuWait     time.Duration // busy-wait of the callers, in wall time
	waitNS      int64         // the handlers' waits, in all
	waits       int64
}

// CacheLines are the cache-line operations of a coherence mode per call,
// by the client process and by the server processes: lines written back
// (Flush) and dropped before a read (Invalidate), and the operations
// (each a loop over its lines ended by one fence). They count the
// operations on the connections that carried the calls (their segment
// files, counted by name in both processes) while the calls ran, the
// connections' own polling included; not the listeners' polling, nor
// other connections' (Idle has those).
type CacheLines struct {
	ClientFlushed     float64 `json:"client_flushed"`
	ClientInvalidated float64 `json:"client_invalidated"`
	ServerFlushed     float64 `json:"server_flushed"`
	ServerInvalidated float64 `json:"server_invalidated"`
	ClientFlushes     float64 `json:"client_flush_ops"`
	ClientInvalidates float64 `json:"client_invalidate_ops"`
	ServerFlushes     float64 `json:"server_flush_ops"`
	ServerInvalidates float64 `json:"server_invalidate_ops"`
	// ClientChanged and ServerChanged are, in coherence-sim only, the
	// invalidated lines that the other side had changed (and flushed)
	// since: the lines that carried data, where the rest of the
	// invalidations were polls that found nothing new.
	ClientChanged float64 `json:"client_changed,omitempty"`
	ServerChanged float64 `json:"server_changed,omitempty"`
}

// label names a result's transport in plots: with its pool mode when the
// report has several.
func (r *Result) label() string {
	if r.showMode && r.PoolMode != "" {
		return r.Transport + " [" + r.PoolMode + "]"
	}
	return r.Transport
}

// modeLines returns this process's count of the cache-line operations of
// pool mode m's kind of Coherence, every segment of it, and whether the
// mode has one.
func modeLines(m string) (coherence.Lines, bool) {
	switch m {
	case modeCoherenceSW:
		return coherence.KindLines(coherence.KindSoftware), true
	case modeCoherenceSim:
		return coherence.KindLines(coherence.KindSimulated), true
	}
	return coherence.Lines{}, false
}

// Report is everything one run of `notnets bench` measured.
type Report struct {
	Machine string    `json:"machine"`
	Go      string    `json:"go"`
	Started time.Time `json:"started"`
	Rounds  int       `json:"rounds"`
	// ServerPIDs are the server processes, the instances in order;
	// Instances the counts measured; GRPCBalancing grpc-go's policy
	// (round_robin when a count is above 1, else pick_first).
	// HandlerWait and HandlerSlots are -handler-wait and -handler-slots.
	ServerPIDs    []int  `json:"server_pids"`
	Instances     []int  `json:"instances"`
	GRPCBalancing string `json:"grpc_balancing"`
	HandlerWait   string `json:"handler_wait,omitempty"`
	HandlerSlots  int    `json:"handler_slots,omitempty"`
	// PoolModes are the pool modes measured (-pool-mode); FlushInsns the
	// instructions coherence-sw's flushes and invalidations use here.
	PoolModes  []string `json:"pool_modes"`
	FlushInsns string   `json:"flush_instructions,omitempty"`
	// Idle is the cross-host modes' background, watched before each size
	// and concurrency's rounds.
	Idle    []*Idle   `json:"idle,omitempty"`
	Results []*Result `json:"results"`
}

func bench(args []string) error {
	cfg, err := parseBenchFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	env, err := startBenchServers(cfg)
	if err != nil {
		return err
	}
	defer env.close()
	rep := &Report{Machine: machine(), Go: runtime.Version(), Started: time.Now(), Rounds: cfg.rounds,
		Instances: cfg.instances, GRPCBalancing: "pick_first", HandlerSlots: cfg.handlerSlots, PoolModes: cfg.poolModes}
	if contains(cfg.poolModes, modeCoherenceSW) {
		f, i := coherence.Instructions()
		rep.FlushInsns = "flush " + f + ", invalidate " + i
	}
	for _, s := range env.servers {
		rep.ServerPIDs = append(rep.ServerPIDs, s.info.PID)
	}
	if env.roundRobin {
		rep.GRPCBalancing = "round_robin"
	}
	if cfg.handlerWait > 0 {
		rep.HandlerWait = cfg.handlerWait.String()
	}
	bar := newBar(cfg)
	for _, c := range cfg.concurrency {
		for _, size := range cfg.sizes {
			results, idle, err := env.measure(cfg, size, c, bar)
			if err != nil {
				return err
			}
			rep.Results = append(rep.Results, results...)
			if idle != nil {
				rep.Idle = append(rep.Idle, idle)
			}
		}
	}
	if bar != nil {
		bar.Finish()
		fmt.Fprintln(os.Stderr)
	}
	if cfg.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(os.Stdout, rep)
	if cfg.outDir != "" {
		files, err := plotReport(cfg.outDir, rep)
		if err != nil {
			return err
		}
		fmt.Printf("\nplots: %s\n", strings.Join(files, ", "))
	}
	return nil
}

func newBar(cfg *benchConfig) *progressbar.ProgressBar {
	if cfg.quiet || !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	segments := len(cfg.concurrency) * len(cfg.sizes) * cfg.rounds * len(cfg.loads) * len(cfg.instances) * len(cfg.transports)
	return progressbar.NewOptions(segments,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription("measuring"),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond))
}

// measure runs every transport at one size and concurrency, at every
// load and instance count, in rounds: in each round every load, at each
// load every count, and at each count every transport, takes a turn. It
// returns the results load by load, and within a load count by count.
func (e *benchEnv) measure(cfg *benchConfig, size, conc int, bar *progressbar.ProgressBar) ([]*Result, *Idle, error) {
	defer e.closeConns()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	ents := cfg.entries()
	// trs[c][i] is entry i at instance count c; the single-caller
	// references involve no instances and run at the first count only.
	trs := make([][]*transport, len(cfg.instances))
	for c, k := range cfg.instances {
		trs[c] = make([]*transport, len(ents))
		for i, ent := range ents {
			name := ent.name
			if singleCaller(name) && (conc > 1 || c > 0) {
				continue
			}
			had := coherence.Segments()
			tr, err := e.transport(name, ent.mode, conc, k)
			if err != nil {
				return nil, nil, fmt.Errorf("%s with %d instance(s): %w", ent, k, err)
			}
			// The connections this transport made, whose cache lines are
			// its calls' (both processes count them by file name).
			for _, seg := range coherence.Segments() {
				if strings.HasPrefix(seg, pool.ConnPrefix) && !contains(had, seg) {
					tr.segments = append(tr.segments, seg)
				}
			}
			trs[c][i] = tr
			for j := 0; j < cfg.warmup; j++ {
				if _, err := tr.callers[0](payload); err != nil {
					return nil, nil, fmt.Errorf("%s warm-up: %w", ent, err)
				}
			}
			if err := tr.idle(); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", ent, err)
			}
		}
	}
	// The background of the cross-host modes, every connection open and
	// idle, before the rounds.
	idle, err := e.idleBackground(cfg, size, conc)
	if err != nil {
		return nil, nil, err
	}
	results := make([][][]*Result, len(cfg.loads))
	for l, ld := range cfg.loads {
		results[l] = make([][]*Result, len(cfg.instances))
		for c, k := range cfg.instances {
			results[l][c] = make([]*Result, len(ents))
			for i, ent := range ents {
				if trs[c][i] != nil {
					results[l][c][i] = &Result{Transport: ent.name, PoolMode: ent.mode, Size: size, Concurrency: conc, load: ld,
						showMode: len(cfg.poolModes) > 1 || cfg.poolModes[0] != modeSameHost,
						GapUS:    float64(ld.gap) / 1e3, RatePerSec: ld.rate, Instances: k,
						InstanceCalls: make([]int64, k),
						hist:          hdrhistogram.New(1, int64(100*time.Second), 3)}
				}
			}
		}
	}
	for r := 0; r < cfg.rounds; r++ {
		for l, ld := range cfg.loads {
			for c, k := range cfg.instances {
				for i, tr := range trs[c] {
					if tr == nil {
						continue
					}
					if err := e.segment(cfg, results[l][c][i], tr, payload, ld); err != nil {
						return nil, nil, fmt.Errorf("%s with %d instance(s): %w", ents[i], k, err)
					}
					if bar != nil {
						bar.Add(1)
					}
				}
			}
		}
	}
	var all []*Result
	for l := range results {
		for c := range results[l] {
			var group []*Result
			for _, res := range results[l][c] {
				if res != nil {
					res.finish()
					group = append(group, res)
				}
			}
			ratios(group)
			all = append(all, group...)
		}
	}
	return all, idle, nil
}

// idleWindow is how long idleBackground watches the idle processes: long
// enough for a few hundred of the pollers' 1 ms sleeps.
const idleWindow = 500 * time.Millisecond

// Idle is the background of the cross-host modes at one size and
// concurrency, watched for idleWindow with every connection open and no
// call: in a cross-host pool nothing sleeps on a futex, so every listener
// polls its slots and every idle connection its ring each millisecond
// (doorbell.PollSleep), and in a coherence mode every poll invalidates
// the lines it reads. CPUPercent is the CPU time of the client and
// server processes together, in percent of one core; Lines the cache-line
// operations per second of each coherence mode (the client process's, then
// the servers'), every segment of the mode's pools.
type Idle struct {
	Size        int         `json:"size_bytes"`
	Concurrency int         `json:"concurrency"`
	CPUPercent  float64     `json:"cpu_percent"`
	Lines       []IdleLines `json:"lines_per_sec,omitempty"`
}

// IdleLines are one coherence mode's idle cache-line operations per
// second.
type IdleLines struct {
	Mode              string  `json:"pool_mode"`
	ClientFlushed     float64 `json:"client_flushed"`
	ClientInvalidated float64 `json:"client_invalidated"`
	ServerFlushed     float64 `json:"server_flushed"`
	ServerInvalidated float64 `json:"server_invalidated"`
}

// idleBackground watches the processes for idleWindow with no call
// (Idle), when a cross-host mode is measured; else it returns nil.
func (e *benchEnv) idleBackground(cfg *benchConfig, size, conc int) (*Idle, error) {
	if !slices.ContainsFunc(cfg.poolModes, func(m string) bool { return m != modeSameHost }) {
		return nil, nil
	}
	var c0 []coherence.Lines
	for _, m := range cfg.poolModes {
		l, _ := modeLines(m)
		c0 = append(c0, l)
	}
	peer0, err := e.peerStats()
	if err != nil {
		return nil, err
	}
	self0, t0 := selfCPU(), time.Now()
	time.Sleep(idleWindow) // the window watched, not a wait for anything
	self1, window := selfCPU(), time.Since(t0)
	peer1, err := e.peerStats()
	if err != nil {
		return nil, err
	}
	idle := &Idle{Size: size, Concurrency: conc}
	cpu := self1 - self0
	for j := range peer1 {
		cpu += time.Duration(peer1[j].CPUUS-peer0[j].CPUUS) * time.Microsecond
	}
	idle.CPUPercent = 100 * cpu.Seconds() / window.Seconds()
	for i, m := range cfg.poolModes {
		c1, counted := modeLines(m)
		if !counted {
			continue
		}
		client := c1.Sub(c0[i])
		var server coherence.Lines
		for j := range peer1 {
			server = server.Add(peer1[j].lines(m).Sub(peer0[j].lines(m)))
		}
		rate := func(n uint64) float64 { return float64(n) / window.Seconds() }
		idle.Lines = append(idle.Lines, IdleLines{Mode: m,
			ClientFlushed: rate(client.Flushed), ClientInvalidated: rate(client.Invalidated),
			ServerFlushed: rate(server.Flushed), ServerInvalidated: rate(server.Invalidated)})
	}
	return idle, nil
}

// entry is a transport in a pool mode (empty for a transport that uses
// no pool).
type entry struct{ name, mode string }

func (e entry) String() string {
	if e.mode == "" {
		return e.name
	}
	return e.name + " in a " + e.mode + " pool"
}

// entries returns what each round measures, in order: every transport in
// turn, the transports through a pool in every pool mode, side by side.
func (cfg *benchConfig) entries() []entry {
	var ents []entry
	for _, name := range cfg.transports {
		switch {
		case throughPool(name):
			for _, m := range cfg.poolModes {
				ents = append(ents, entry{name, m})
			}
		case inPool(name):
			ents = append(ents, entry{name, modeSameHost})
		default:
			ents = append(ents, entry{name, ""})
		}
	}
	return ents
}

// segment runs one round's share of calls on one transport with its
// callers at one load, recording latencies and CPU time.
func (e *benchEnv) segment(cfg *benchConfig, res *Result, tr *transport, payload []byte, ld load) error {
	quota := int64(cfg.calls / cfg.rounds)
	deadline := time.Time{}
	if cfg.duration > 0 {
		quota = 1 << 62
		deadline = time.Now().Add(cfg.duration / time.Duration(cfg.rounds))
	}
	time.Sleep(cfg.settle)
	if err := tr.ready(payload); err != nil {
		return err
	}
	peer0, err := e.peerStats(tr.segments...)
	if err != nil {
		return err
	}
	lines0 := coherence.SegmentLines(tr.segments...)
	self0 := selfCPU()
	cs := tr.callers
	hists := make([]*hdrhistogram.Histogram, len(cs))
	errs := make([]error, len(cs))
	waits := make([]time.Duration, len(cs))
	var issued atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g, call := range cs {
		hists[g] = hdrhistogram.New(1, int64(100*time.Second), 3)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := int64(0); ; n++ {
				k := issued.Add(1) - 1
				if k >= quota {
					return
				}
				if !deadline.IsZero() && n%64 == 0 && time.Now().After(deadline) {
					return
				}
				var due, t0 time.Time // when the call is due, and when it starts
				switch {
				case ld.rate > 0:
					due = start.Add(time.Duration(float64(k) * 1e9 / float64(ld.rate)))
					waits[g] += waitUntil(due)
					t0 = time.Now()
				case ld.gap > 0:
					w0 := time.Now()
					for time.Since(w0) < ld.gap {
					}
					t0 = time.Now()
					waits[g] += t0.Sub(w0)
					due = t0
				default:
					t0 = time.Now()
					due = t0
				}
				lat, err := call(payload)
				if err != nil {
					errs[g] = err
					return
				}
				if lat == 0 {
					lat = time.Since(due)
				} else {
					lat += t0.Sub(due) // a caller's own latency (wake), plus any lateness of its start
				}
				if err := hists[g].RecordValue(int64(lat)); err != nil {
					errs[g] = fmt.Errorf("latency %v: %w", lat, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	res.elapsed += time.Since(start)
	res.cpuSelf += selfCPU() - self0
	res.clientLines = res.clientLines.Add(coherence.SegmentLines(tr.segments...).Sub(lines0))
	peer1, err := e.peerStats(tr.segments...)
	if err != nil {
		return err
	}
	for j := range peer1 {
		res.serverLines = res.serverLines.Add(peer1[j].Lines.Sub(peer0[j].Lines))
		res.cpuPeer += time.Duration(peer1[j].CPUUS-peer0[j].CPUUS) * time.Microsecond
		res.waitNS += peer1[j].WaitNS - peer0[j].WaitNS
		res.waits += peer1[j].Waits - peer0[j].Waits
		if j < len(res.InstanceCalls) {
			res.InstanceCalls[j] += peer1[j].Calls - peer0[j].Calls
		}
	}
	for g := range cs {
		if errs[g] != nil {
			return errs[g]
		}
		res.hist.Merge(hists[g])
		res.cpuWait += waits[g]
	}
	return tr.idle()
}

// waitUntil waits until t: it busy-waits on the clock, after sleeping
// until a millisecond before t if t is more than 2 ms away (a sleep under
// a millisecond takes about a millisecond). It returns the time it spent
// busy-waiting.
func waitUntil(t time.Time) time.Duration {
	if early := time.Until(t); early > 2*time.Millisecond {
		time.Sleep(early - time.Millisecond)
	}
	w0 := time.Now()
	now := w0
	for now.Before(t) {
		now = time.Now()
	}
	return now.Sub(w0)
}

func (r *Result) finish() {
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	if !slices.ContainsFunc(r.InstanceCalls, func(n int64) bool { return n > 0 }) {
		r.InstanceCalls = nil // no handler runs (floor, wake, memcpy)
	}
	r.Calls = r.hist.TotalCount()
	if r.Calls == 0 {
		return
	}
	r.AvgUS = r.hist.Mean() / 1e3
	r.P50US = us(r.hist.ValueAtQuantile(50))
	r.P99US = us(r.hist.ValueAtQuantile(99))
	r.P999US = us(r.hist.ValueAtQuantile(99.9))
	r.MaxUS = us(r.hist.Max())
	r.CallsPerSec = float64(r.Calls) / r.elapsed.Seconds()
	r.MBPerSec = r.CallsPerSec * float64(r.Size) / 1e6
	r.ClientCPUUS = float64(max(r.cpuSelf-r.cpuWait, 0).Nanoseconds()) / 1e3 / float64(r.Calls)
	r.ClientWaitUS = float64(r.cpuWait.Nanoseconds()) / 1e3 / float64(r.Calls)
	r.ServerCPUUS = float64(r.cpuPeer.Nanoseconds()) / 1e3 / float64(r.Calls)
	if r.waits > 0 {
		r.HandlerWaitUS = float64(r.waitNS) / 1e3 / float64(r.waits)
	}
	if _, counted := modeLines(r.PoolMode); counted {
		per := func(n uint64) float64 { return float64(n) / float64(r.Calls) }
		c, s := r.clientLines, r.serverLines
		r.Lines = &CacheLines{ClientFlushed: per(c.Flushed), ClientInvalidated: per(c.Invalidated),
			ServerFlushed: per(s.Flushed), ServerInvalidated: per(s.Invalidated),
			ClientFlushes: per(c.Flushes), ClientInvalidates: per(c.Invalidates),
			ServerFlushes: per(s.Flushes), ServerInvalidates: per(s.Invalidates),
			ClientChanged: per(c.Changed), ServerChanged: per(s.Changed)}
	}
}

// ratios sets each result's ratios to grpc-tcp's, among results of one
// size, concurrency and load. The wake reference has none: its latency is
// one way, not a call.
func ratios(results []*Result) {
	var base *Result
	for _, r := range results {
		if r.Transport == "grpc-tcp" {
			base = r
		}
	}
	if base == nil || base.Calls == 0 {
		return
	}
	for _, r := range results {
		if r.Calls == 0 || r.Transport == "wake" {
			continue
		}
		r.AvgRatio = base.AvgUS / r.AvgUS
		r.P999Ratio = base.P999US / r.P999US
		r.TputRatio = r.CallsPerSec / base.CallsPerSec
		if cpu := r.ClientCPUUS + r.ServerCPUUS; cpu > 0 {
			r.CPURatio = (base.ClientCPUUS + base.ServerCPUUS) / cpu
		}
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d cores, %s, %s/%s", runtime.NumCPU(), model, runtime.GOOS, runtime.GOARCH)
}

// benchEnv is the server processes and the connections to them.
type benchEnv struct {
	// servers are the instances in order: the first N serve the notnets
	// service of N instances (serviceName), and grpc-go's client for N
	// instances balances over their addresses.
	servers []*benchProc
	// pool is the pool of one host, of the floors and wake and of the
	// same-host mode; pools the pool of every mode measured.
	pool   string
	pools  map[string]string
	udsDir string
	// roundRobin: grpc-go's clients use round_robin over the servers'
	// addresses (a count above 1 is measured), else dial the first's.
	roundRobin bool
	closers    []func()
}

// benchProc is one bench server process.
type benchProc struct {
	cmd    *exec.Cmd
	stdin  *bufio.Writer
	stdinC interface{ Close() error }
	stdout *bufio.Scanner
	info   serverInfo
}

// serviceName is the notnets service that n instances serve.
func serviceName(n int) string { return fmt.Sprintf("bench-x%d", n) }

// startBenchServers starts as many bench server processes as the largest
// instance count: server i is an instance of the service of every count
// above i.
func startBenchServers(cfg *benchConfig) (*benchEnv, error) {
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	pool, err := os.MkdirTemp(base, "notnets-bench-")
	if err != nil {
		return nil, err
	}
	e := &benchEnv{pool: pool, pools: map[string]string{}, roundRobin: slices.Max(cfg.instances) > 1}
	if e.udsDir, err = os.MkdirTemp("", "notnets-bench-uds-"); err != nil {
		e.close()
		return nil, err
	}
	// A fresh pool per mode, marked before any process opens it.
	var modePools []string
	for _, m := range cfg.poolModes {
		dir := pool
		if m != modeSameHost {
			if dir, err = os.MkdirTemp(base, "notnets-bench-"+m+"-"); err != nil {
				e.close()
				return nil, err
			}
			e.pools[m] = dir // removed by close, should the preparation fail
			if err := preparePool(dir, m); err != nil {
				e.close()
				return nil, err
			}
		}
		e.pools[m] = dir
		modePools = append(modePools, m+"="+dir)
	}
	if contains(cfg.poolModes, modeCoherenceSW) || contains(cfg.poolModes, modeCoherenceSim) {
		coherence.EnableCounting() // before this process sets up any segment
	}
	// What the servers need to serve: the notnets idle strategies and the
	// drop-in tier only when measured, since in a cross-host pool every
	// listener polls its knock word each millisecond.
	var idles []string
	for _, t := range cfg.transports {
		switch t {
		case "notnets", "notnets-raw":
			idles = append(idles, notnets.IdleAdaptive.String())
		case "notnets-busy-spin":
			idles = append(idles, notnets.IdleBusySpin.String())
		case "notnets-park-only":
			idles = append(idles, notnets.IdleParkOnly.String())
		}
	}
	exe, err := os.Executable()
	if err != nil {
		e.close()
		return nil, err
	}
	for i := range slices.Max(cfg.instances) {
		var names []string
		for _, n := range cfg.instances {
			if n > i {
				names = append(names, serviceName(n))
			}
		}
		cmd := exec.Command(exe, "bench-server", "-pool", pool, "-uds", filepath.Join(e.udsDir, fmt.Sprintf("bench-%d.sock", i)),
			"-services", strings.Join(names, ","), "-handler-wait", cfg.handlerWait.String(), "-handler-slots", strconv.Itoa(cfg.handlerSlots),
			"-mode-pools", strings.Join(modePools, ","), "-idle", strings.Join(idles, ","),
			"-drop-in="+strconv.FormatBool(contains(cfg.transports, "grpc-shm")), "-count-lines="+strconv.FormatBool(coherence.CountingEnabled()))
		s, err := startProc(cmd)
		if s != nil {
			e.servers = append(e.servers, s)
		}
		if err != nil {
			e.close()
			return nil, err
		}
	}
	for _, s := range e.servers {
		line, err := s.readLine()
		if err == nil {
			err = json.Unmarshal([]byte(line), &s.info)
		}
		if err != nil {
			e.close()
			return nil, fmt.Errorf("bench server did not start: %v", err)
		}
	}
	return e, nil
}

// preparePool makes the empty directory dir a pool of mode m.
func preparePool(dir, m string) error {
	switch m {
	case modeCrossHost:
		return pool.PrepareCoherence(dir, pool.OwnerOnly, pool.CoherenceHardware)
	case modeCoherenceSW:
		if !coherence.Supported() {
			f, _ := coherence.Instructions()
			return fmt.Errorf("pool mode %s: this processor cannot write back cache lines (%s)", m, f)
		}
		return pool.PrepareCoherence(dir, pool.OwnerOnly, pool.CoherenceSoftware)
	case modeCoherenceSim:
		return pool.PrepareCoherence(dir, pool.OwnerOnly, pool.CoherenceSimulated)
	}
	return pool.Prepare(dir, pool.OwnerOnly)
}

// startProc starts a bench server with pipes to its stdin and stdout.
func startProc(cmd *exec.Cmd) (*benchProc, error) {
	cmd.Stderr = os.Stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	r, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &benchProc{cmd: cmd, stdin: bufio.NewWriter(w), stdinC: w, stdout: bufio.NewScanner(r)}, nil
}

func (s *benchProc) readLine() (string, error) {
	if !s.stdout.Scan() {
		if err := s.stdout.Err(); err != nil {
			return "", err
		}
		return "", errors.New("bench server exited")
	}
	return s.stdout.Text(), nil
}

// command sends one line to the server and returns its answer.
func (s *benchProc) command(cmd string) (string, error) {
	fmt.Fprintln(s.stdin, cmd)
	if err := s.stdin.Flush(); err != nil {
		return "", err
	}
	return s.readLine()
}

// close ends the server: it closes its stdin, and kills it if it has not
// exited 10 s later.
func (s *benchProc) close() {
	s.stdinC.Close()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// command sends one line to the first server, which serves the floors and
// the wake reference, and returns its answer.
func (e *benchEnv) command(cmd string) (string, error) {
	return e.servers[0].command(cmd)
}

// peerStats returns every server's CPU time and handler counts, in order,
// with its count of the cache-line operations on the segments named.
func (e *benchEnv) peerStats(segments ...string) ([]serverStats, error) {
	sts := make([]serverStats, len(e.servers))
	cmd := "stats"
	if len(segments) > 0 {
		cmd += " " + strings.Join(segments, ",")
	}
	for i, s := range e.servers {
		line, err := s.command(cmd)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(line), &sts[i]); err != nil {
			return nil, fmt.Errorf("bench server stats %q: %v", line, err)
		}
	}
	return sts, nil
}

func (e *benchEnv) close() {
	e.closeConns()
	for _, s := range e.servers {
		s.stdinC.Close() // all at once: each exits when its stdin closes
	}
	for _, s := range e.servers {
		s.close()
	}
	os.RemoveAll(e.pool)
	for _, dir := range e.pools {
		os.RemoveAll(dir)
	}
	if e.udsDir != "" {
		os.RemoveAll(e.udsDir)
	}
}

// caller makes one echo call with the payload. It returns 0 and the
// benchmark times the call, or the latency it measured itself (the wake
// reference's one-way wake-up).
type caller func(payload []byte) (time.Duration, error)

// transport is one transport's callers in one measurement.
type transport struct {
	callers []caller
	// segments are the connection segments the transport's client made
	// in a coherence mode's pool, whose cache-line operations count.
	segments []string
	// pause runs after the warm-up and after each turn, outside the
	// timing: it parks a spinning server (floor-spin) so that it leaves
	// the cores to the other transports' turns. resume runs before each
	// turn, outside the timing too. Either may be nil.
	pause  func() error
	resume func(payload []byte) error
}

func (t *transport) idle() error {
	if t.pause == nil {
		return nil
	}
	return t.pause()
}

func (t *transport) ready(payload []byte) error {
	if t.resume == nil {
		return nil
	}
	return t.resume(payload)
}

func (e *benchEnv) closeConns() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

var background = context.Background()
