package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/coherence"
)

// The test binary stands in for the notnets command: bench starts it again
// as "bench-server".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "bench-server":
			if err := benchServer(os.Args[2:]); err != nil {
				os.Exit(1)
			}
			os.Exit(0)
		case "pool-listen-and-hang": // DIR [SERVICE]: an instance of SERVICE ("dead"), never served
			service := "dead"
			if len(os.Args) > 3 {
				service = os.Args[3]
			}
			lis, err := notnets.Listen(service, notnets.WithPool(os.Args[2]))
			if err != nil {
				os.Exit(1)
			}
			os.Stdout.WriteString("ready " + lis.Addr().(*notnets.Addr).Instance + "\n")
			select {}
		case "pool":
			if err := poolCmd(os.Args[2:]); err != nil {
				os.Stderr.WriteString(err.Error() + "\n")
				os.Exit(1)
			}
			os.Exit(0)
		case "bridge":
			if err := bridgeCmd(os.Args[2:]); err != nil {
				os.Stderr.WriteString("notnets: " + err.Error() + "\n")
				os.Exit(1)
			}
			os.Exit(0)
		case "bridge-test-server": // DIR: Greeter, reflection and health as "greeter"
			bridgeTestServer(os.Args[2])
			os.Exit(0)
		case "bench":
			if err := bench(os.Args[2:]); err != nil {
				os.Stderr.WriteString(err.Error() + "\n")
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	code := m.Run()
	removeGrpcurl()
	os.Exit(code)
}

// TestBenchRunsEveryTransport runs a short bench of every transport, two
// sizes and two concurrencies in child processes and checks the JSON report.
func TestBenchRunsEveryTransport(t *testing.T) {
	out := filepath.Join(t.TempDir(), "plots")
	cmd := exec.Command(os.Args[0], "bench", "-json", "-quiet", "-n", "200", "-warmup", "20", "-rounds", "2",
		"-sizes", "16,64K", "-c", "1,4", "-out", out, "-transports", strings.Join(allTransports, ","))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench: %v", err)
	}
	var rep Report
	if err := json.Unmarshal(stdout, &rep); err != nil {
		t.Fatalf("bench -json printed something else: %v\n%s", err, stdout)
	}
	seen := map[string]int{}
	for _, r := range rep.Results {
		seen[r.Transport]++
		if r.Calls != 200 {
			t.Errorf("%s at %d B, %d callers: %d calls, want 200", r.Transport, r.Size, r.Concurrency, r.Calls)
		}
		if !(r.P50US > 0 && r.P50US <= r.P99US && r.P99US <= r.P999US && r.P999US <= r.MaxUS) {
			t.Errorf("%s: percentiles out of order: %+v", r.Transport, r)
		}
		if (r.AvgRatio <= 0) != (r.Transport == "wake") || r.CallsPerSec <= 0 || (r.ClientCPUUS <= 0 && r.Transport != "memcpy") { // 200 small copies may take less CPU than getrusage shows
			t.Errorf("%s: missing ratio, rate or CPU (or a ratio for wake): %+v", r.Transport, r)
		}
	}
	// Four size and concurrency pairs; the floors, wake and memcpy have no
	// multiplexing, so they run only with one caller.
	want := map[string]int{"grpc-tcp": 4, "grpc-uds": 4, "grpc-shm": 4, "notnets": 4, "notnets-raw": 4, "floor": 2, "floor-spin": 2, "wake": 2, "memcpy": 2}
	for name, n := range want {
		if seen[name] != n {
			t.Errorf("%s measured %d times, want %d", name, seen[name], n)
		}
	}
}

func TestParseBenchFlags(t *testing.T) {
	gaps := func(ds ...time.Duration) []load {
		var ls []load
		for _, d := range ds {
			ls = append(ls, load{gap: d})
		}
		return ls
	}
	for _, tc := range []struct {
		args  []string
		loads []load // nil: an error is expected, containing errText
		err   string
	}{
		{args: nil, loads: gaps(0)},
		{args: []string{"-gap", "0,50us, 150us,1ms"}, loads: gaps(0, 50*time.Microsecond, 150*time.Microsecond, time.Millisecond)},
		{args: []string{"-gap", "2.5us"}, loads: gaps(2500)},
		{args: []string{"-rate", "2000"}, loads: []load{{rate: 2000}}},
		{args: []string{"-rate", "1000,5000"}, loads: []load{{rate: 1000}, {rate: 5000}}},
		{args: []string{"-rate", "0", "-gap", "1ms"}, loads: gaps(time.Millisecond)},
		{args: []string{"-gap", "0", "-rate", "100"}, loads: []load{{rate: 100}}},
		{args: []string{"-gap", "50us", "-rate", "2000"}, err: "exclude each other"},
		{args: []string{"-gap", "0,1ms", "-rate", "0,10"}, err: "exclude each other"},
		{args: []string{"-gap", "50"}, err: "bad gap"},
		{args: []string{"-gap", "-1ms"}, err: "bad gap"},
		{args: []string{"-gap", "0,,1ms"}, err: "bad gap"},
		{args: []string{"-rate", "fast"}, err: "bad rate"},
		{args: []string{"-rate", "-5"}, err: "bad rate"},
		{args: []string{"-transports", "floor,wake,teleport"}, err: `unknown transport "teleport"`},
		{args: []string{"-n", "3", "-rounds", "5"}, err: "smaller than -rounds"},
		{args: []string{"-gap", "1ms", "extra"}, err: "unexpected arguments"},
	} {
		cfg, err := parseBenchFlags(tc.args)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.args, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case !reflect.DeepEqual(cfg.loads, tc.loads):
			t.Errorf("%q: loads %v, want %v", tc.args, cfg.loads, tc.loads)
		}
	}
	cfg, err := parseBenchFlags([]string{"-transports", "floor, floor-spin,wake"})
	if err != nil || !reflect.DeepEqual(cfg.transports, []string{"floor", "floor-spin", "wake"}) {
		t.Errorf("transports %v, %v", cfg, err)
	}
	cfg, err = parseBenchFlags([]string{"-instances", "1, 2,3", "-handler-wait", "200us", "-handler-slots", "4"})
	if err != nil || !reflect.DeepEqual(cfg.instances, []int{1, 2, 3}) || cfg.handlerWait != 200*time.Microsecond || cfg.handlerSlots != 4 {
		t.Errorf("instances, handler wait and slots: %+v, %v", cfg, err)
	}
	if cfg, err := parseBenchFlags([]string{"-pool-mode", "coherence-sim, same-host"}); err != nil || !reflect.DeepEqual(cfg.poolModes, []string{modeCoherenceSim, modeSameHost}) {
		t.Errorf("pool modes: %+v, %v", cfg, err)
	}
	if cfg, err := parseBenchFlags(nil); err != nil || !reflect.DeepEqual(cfg.instances, []int{1}) || cfg.handlerWait != 0 || cfg.handlerSlots != 0 ||
		!reflect.DeepEqual(cfg.poolModes, []string{modeSameHost}) {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"-instances", "0"}, "bad instance count"},
		{[]string{"-instances", "1,,2"}, "bad instance count"},
		{[]string{"-instances", "65"}, "bad instance count"},
		{[]string{"-instances", "two"}, "bad instance count"},
		{[]string{"-instances", "2,1,2"}, "given twice"},
		{[]string{"-handler-wait", "-1ms"}, "bad -handler-wait"},
		{[]string{"-handler-wait", "1ms", "-handler-slots", "-1"}, "bad -handler-slots"},
		{[]string{"-handler-slots", "2"}, "needs -handler-wait"},
		{[]string{"-pool-mode", "same-host,cxl"}, `unknown pool mode "cxl"`},
		{[]string{"-pool-mode", "cross-host,cross-host"}, "given twice"},
	} {
		if _, err := parseBenchFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: error %v, want one containing %q", tc.args, err, tc.err)
		}
	}
}

// TestBenchInstances runs a short bench of the balanced transports with
// one and two instances whose handlers wait, and checks from the servers'
// own counts that every instance served calls, and only those of its
// count.
func TestBenchInstances(t *testing.T) {
	rep, _ := runBenchJSON(t, "-transports", "grpc-tcp,grpc-uds,grpc-shm,notnets,notnets-raw", "-instances", "1,2", "-c", "4",
		"-n", "200", "-rounds", "2", "-handler-wait", "50us", "-handler-slots", "2")
	if len(rep.ServerPIDs) != 2 || rep.ServerPIDs[0] == rep.ServerPIDs[1] || !reflect.DeepEqual(rep.Instances, []int{1, 2}) ||
		rep.GRPCBalancing != "round_robin" || rep.HandlerWait != (50*time.Microsecond).String() || rep.HandlerSlots != 2 {
		t.Errorf("report: server pids %v, instances %v, grpc balancing %q, handler wait %q, slots %d; want 2 pids, [1 2], round_robin, 50µs, 2",
			rep.ServerPIDs, rep.Instances, rep.GRPCBalancing, rep.HandlerWait, rep.HandlerSlots)
	}
	if len(rep.Results) != 10 {
		t.Fatalf("%d results, want 10 (5 transports at 2 counts)", len(rep.Results))
	}
	for i, r := range rep.Results {
		id := fmt.Sprintf("%s with %d instance(s)", r.Transport, r.Instances)
		if want := 1 + i/5; r.Instances != want {
			t.Errorf("result %d is %s, want %d instance(s): counts in turn, transports within", i, id, want)
		}
		if r.Calls != 200 || r.TputRatio <= 0 || r.P50US <= 0 {
			t.Errorf("%s: %d calls, throughput ratio %g, p50 %g us", id, r.Calls, r.TputRatio, r.P50US)
		}
		if r.HandlerWaitUS < 50 {
			t.Errorf("%s: handlers waited %g us on average, less than the 50 us asked", id, r.HandlerWaitUS)
		}
		if len(r.InstanceCalls) != r.Instances {
			t.Errorf("%s: calls by instance %v", id, r.InstanceCalls)
			continue
		}
		var sum int64
		for j, n := range r.InstanceCalls {
			sum += n
			if n == 0 {
				t.Errorf("%s: instance %d (pid %d) served none of the calls: %v", id, j, rep.ServerPIDs[j], r.InstanceCalls)
			}
			// round_robin: every other call, whatever the loads.
			if strings.HasPrefix(r.Transport, "grpc") && n < r.Calls/(2*int64(r.Instances)) {
				t.Errorf("%s: round_robin gave instance %d only %d calls: %v", id, j, n, r.InstanceCalls)
			}
		}
		if sum != r.Calls {
			t.Errorf("%s: the instances served %d calls (%v), the client made %d", id, sum, r.InstanceCalls, r.Calls)
		}
	}
}

// TestPrintReportInstances checks the text report of a run with two
// instance counts: the instance, wait and share columns.
func TestPrintReportInstances(t *testing.T) {
	rep := &Report{Machine: "m", Go: "go", Rounds: 1, ServerPIDs: []int{10, 11}, Instances: []int{1, 2},
		GRPCBalancing: "round_robin", HandlerWait: "200µs", HandlerSlots: 4}
	for _, k := range []int{1, 2} {
		for _, name := range []string{"grpc-tcp", "notnets"} {
			calls := []int64{100}
			if k == 2 {
				calls = []int64{25, 75}
			}
			rep.Results = append(rep.Results, &Result{Transport: name, Size: 16, Concurrency: 16, Calls: 100,
				AvgUS: 300, P50US: 250, P99US: 400, P999US: 500, MaxUS: 600, CallsPerSec: 5000 * float64(k), TputRatio: 1,
				Instances: k, InstanceCalls: calls, HandlerWaitUS: 226})
		}
	}
	var b strings.Builder
	printReport(&b, rep)
	out := b.String()
	for _, want := range []string{"servers in 2 other processes (pids 10, 11)", "grpc-go round_robin", "handlers wait 200µs",
		"at most 4 at once per instance", "per transport and instance count", "inst", "wait", "by instance %"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the report:\n%s", want, out)
		}
	}
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && (f[0] == "grpc-tcp" || f[0] == "notnets") && f[1] == "0" {
			rows++
			if inst, share := f[2], f[len(f)-1]; !(inst == "1" && share == "100" || inst == "2" && share == "25/75") || !strings.Contains(line, "226us") {
				t.Errorf("row %q: want instances 1 and 100 or 2 and 25/75, and the wait 226us", line)
			}
		}
	}
	if rows != 4 {
		t.Errorf("%d rows, want 4:\n%s", rows, out)
	}
}

// runBenchJSON runs bench -json in a child process with args and returns
// its report and its raw results (to see which fields are present).
func runBenchJSON(t *testing.T, args ...string) (*Report, []map[string]any) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"bench", "-json", "-quiet", "-warmup", "20"}, args...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench %q: %v", args, err)
	}
	var rep Report
	var raw struct{ Results []map[string]any }
	if err := json.Unmarshal(stdout, &rep); err != nil {
		t.Fatalf("bench -json printed something else: %v\n%s", err, stdout)
	}
	if err := json.Unmarshal(stdout, &raw); err != nil {
		t.Fatal(err)
	}
	return &rep, raw.Results
}

// TestBenchGaps measures the floors, the wake reference and notnets at two
// gaps and checks that every one was measured at each, with the busy-wait
// really made before each call.
func TestBenchGaps(t *testing.T) {
	rep, raw := runBenchJSON(t, "-transports", "floor,floor-spin,wake,notnets", "-gap", "0,50us", "-n", "200", "-rounds", "2")
	seen := map[string]bool{}
	for i, r := range rep.Results {
		id := fmt.Sprintf("%s at gap %gus", r.Transport, r.GapUS)
		seen[id] = true
		if _, ok := raw[i]["gap_us"]; !ok {
			t.Errorf("%s: no gap_us in the JSON: %v", id, raw[i])
		}
		if r.Calls != 200 || r.RatePerSec != 0 {
			t.Errorf("%s: %d calls at rate %d, want 200 in the closed loop", id, r.Calls, r.RatePerSec)
		}
		if !(r.P50US > 0 && r.AvgUS > 0 && r.P50US <= r.P999US && r.P999US <= r.MaxUS) {
			t.Errorf("%s: latencies missing or out of order: %+v", id, r)
		}
		if r.GapUS > 0 {
			// 200 busy-waits of 50 us each: at most 20000 calls a second,
			// and at least 50 us of waiting per call, not counted as CPU.
			if r.CallsPerSec > 1e6/r.GapUS || r.ClientWaitUS < r.GapUS {
				t.Errorf("%s: %.0f calls/s, %.1f us of busy-wait per call: the gap was not kept", id, r.CallsPerSec, r.ClientWaitUS)
			}
		} else if r.ClientWaitUS != 0 {
			t.Errorf("%s: %.1f us of busy-wait per call without a gap", id, r.ClientWaitUS)
		}
	}
	for _, name := range []string{"floor", "floor-spin", "wake", "notnets"} {
		for _, gap := range []string{"0", "50"} {
			if id := name + " at gap " + gap + "us"; !seen[id] {
				t.Errorf("%s: not measured (have %v)", id, seen)
			}
		}
	}
	if len(rep.Results) != 8 {
		t.Errorf("%d results, want 8", len(rep.Results))
	}
}

// TestBenchRate runs the open loop at 2000 calls a second and checks that
// no transport went faster than the schedule.
func TestBenchRate(t *testing.T) {
	rep, _ := runBenchJSON(t, "-transports", "floor,wake,notnets", "-rate", "2000", "-n", "200", "-rounds", "2")
	if len(rep.Results) != 3 {
		t.Fatalf("%d results, want 3", len(rep.Results))
	}
	for _, r := range rep.Results {
		if r.RatePerSec != 2000 || r.GapUS != 0 || r.Calls != 200 {
			t.Errorf("%s: rate %d, gap %g us, %d calls; want 2000/s, no gap, 200 calls", r.Transport, r.RatePerSec, r.GapUS, r.Calls)
		}
		if r.P50US <= 0 || r.P999US < r.P50US {
			t.Errorf("%s: latencies missing or out of order: %+v", r.Transport, r)
		}
		// Each round's 100 calls are due over 99 intervals of 500 us.
		if limit := 2000 * 100.0 / 99; r.CallsPerSec > limit {
			t.Errorf("%s: %.0f calls/s, faster than the schedule (at most %.0f)", r.Transport, r.CallsPerSec, limit)
		}
	}
}

// TestBenchPlots checks that a table run at two sizes and two gaps prints
// the gap column and writes the plots it names.
func TestBenchPlots(t *testing.T) {
	out := filepath.Join(t.TempDir(), "plots")
	cmd := exec.Command(os.Args[0], "bench", "-quiet", "-n", "100", "-warmup", "10", "-rounds", "1",
		"-sizes", "0,1K", "-transports", "notnets,floor,wake", "-gap", "0,20us", "-out", out)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench: %v", err)
	}
	rows := 0
	for _, line := range strings.Split(string(stdout), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && (f[0] == "notnets" || f[0] == "floor" || f[0] == "wake") && (f[1] == "0" || f[1] == "20us") {
			rows++
		}
	}
	if rows != 12 || !strings.Contains(string(stdout), "transport   gap") {
		t.Errorf("want a gap column and 12 rows, got %d rows:\n%s", rows, stdout)
	}
	for _, f := range []string{"latency-cdf-0B-c1-gap0.png", "latency-cdf-1KiB-c1-gap20us.png", "latency-vs-size.png",
		"latency-vs-gap-0B-c1.png", "cpu-vs-gap-0B-c1.png", "latency-vs-gap-1KiB-c1.png", "cpu-vs-gap-1KiB-c1.png"} {
		fi, err := os.Stat(filepath.Join(out, f))
		if err != nil || fi.Size() < 1000 {
			t.Errorf("plot %s: %v", f, err)
		}
	}
}

// TestBenchPoolModes runs a short bench of the pool transports in every
// pool mode beside grpc-tcp, at 16 B and 1 MiB: every transport through a
// pool is measured in every mode and grpc-tcp once; the coherence modes
// count cache lines on both sides (at 1 MiB at least the 16,384 lines of
// the message each side writes), the hardware modes none; the cross-host
// modes' idle background is watched.
func TestBenchPoolModes(t *testing.T) {
	const n = 40
	modes := []string{modeSameHost, modeCrossHost, modeCoherenceSW, modeCoherenceSim}
	pooled := []string{"grpc-shm", "notnets", "notnets-raw"}
	args := []string{"-transports", "grpc-tcp," + strings.Join(pooled, ","), "-pool-mode", strings.Join(modes, ","),
		"-sizes", "16,1M", "-n", fmt.Sprint(n), "-rounds", "2", "-warmup", "5"}
	drop := func(mode string) {
		modes = slices.DeleteFunc(modes, func(m string) bool { return m == mode })
		args[3] = strings.Join(modes, ",")
	}
	if !coherence.Supported() { // no flush instructions here: the simulator alone
		drop(modeCoherenceSW)
	}
	if raceEnabled {
		// Under the detector every word the simulator copies is an
		// instrumented atomic: connecting alone outlasts the dial's 10 s.
		// What it checks crosses between processes, which the detector
		// does not see; `go test ./cmd/...` runs the mode (as the root
		// package's coherence suites do, coherence_test.go).
		drop(modeCoherenceSim)
	}
	rep, raw := runBenchJSON(t, args...)
	if !reflect.DeepEqual(rep.PoolModes, modes) {
		t.Errorf("report's pool modes %q, want %q", rep.PoolModes, modes)
	}
	seen := map[string]int{}
	for i, r := range rep.Results {
		id := fmt.Sprintf("%s in %q at %d B", r.Transport, r.PoolMode, r.Size)
		seen[r.Transport+" "+r.PoolMode]++
		if r.Calls != n || r.CallsPerSec <= 0 || r.P50US <= 0 || r.ServerCPUUS <= 0 {
			t.Errorf("%s: %d calls (want %d), %g calls/s, p50 %g us, server cpu %g us", id, r.Calls, n, r.CallsPerSec, r.P50US, r.ServerCPUUS)
		}
		if r.Size == 1<<20 && r.MBPerSec <= 0 {
			t.Errorf("%s: no MB/s", id)
		}
		_, hasLines := raw[i]["cache_lines_per_call"]
		switch r.PoolMode {
		case modeCoherenceSW, modeCoherenceSim:
			l := r.Lines
			if l == nil || l.ClientFlushed <= 0 || l.ClientInvalidated <= 0 || l.ServerFlushed <= 0 || l.ServerInvalidated <= 0 ||
				l.ClientFlushes <= 0 || l.ServerInvalidates <= 0 {
				t.Errorf("%s: cache lines per call %+v, want flushes and invalidations on both sides", id, l)
				continue
			}
			if r.Size == 1<<20 && (l.ClientFlushed < 16384 || l.ServerFlushed < 16384) {
				t.Errorf("%s: %g lines flushed by the client and %g by the server per call, want at least the 16384 of 1 MiB each", id, l.ClientFlushed, l.ServerFlushed)
			}
			if r.Size == 16 && (l.ClientFlushed > 1000 || l.ServerFlushed > 1000) {
				t.Errorf("%s: %g and %g lines flushed per 16 B call: more than the call writes", id, l.ClientFlushed, l.ServerFlushed)
			}
		default:
			if hasLines || r.Lines != nil {
				t.Errorf("%s: cache lines %+v reported where nothing is flushed", id, r.Lines)
			}
		}
	}
	for _, m := range modes {
		for _, tr := range pooled {
			if seen[tr+" "+m] != 2 {
				t.Errorf("%s in %s measured %d times, want 2 (two sizes)", tr, m, seen[tr+" "+m])
			}
		}
	}
	if seen["grpc-tcp "] != 2 || len(rep.Results) != 2*(1+len(pooled)*len(modes)) {
		t.Errorf("grpc-tcp measured %d times, want 2; %d results, want %d", seen["grpc-tcp "], len(rep.Results), 2*(1+len(pooled)*len(modes)))
	}
	if len(rep.Idle) != 2 {
		t.Fatalf("%d idle backgrounds, want one per size", len(rep.Idle))
	}
	for _, idle := range rep.Idle {
		if idle.CPUPercent <= 0 || len(idle.Lines) != len(modes)-2 {
			t.Errorf("idle background at %d B: %+v, want CPU and the lines of %d coherence modes", idle.Size, idle, len(modes)-2)
		}
		for _, l := range idle.Lines {
			if l.ServerInvalidated <= 0 { // every listener polls its slots
				t.Errorf("idle background at %d B in %s: %+v, want the listeners' polls", idle.Size, l.Mode, l)
			}
		}
	}
}
