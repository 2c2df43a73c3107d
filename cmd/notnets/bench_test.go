package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/notnets/notnets"
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
		case "bench":
			if err := bench(os.Args[2:]); err != nil {
				os.Stderr.WriteString(err.Error() + "\n")
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
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
	want := map[string]int{"grpc-tcp": 4, "grpc-uds": 4, "notnets": 4, "notnets-raw": 4, "floor": 2, "floor-spin": 2, "wake": 2, "memcpy": 2}
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
