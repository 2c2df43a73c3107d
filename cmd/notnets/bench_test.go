package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
		case "pool-listen-and-hang":
			if _, err := notnets.Listen("dead", notnets.WithPool(os.Args[2])); err != nil {
				os.Exit(1)
			}
			os.Stdout.WriteString("ready\n")
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
		if r.AvgRatio <= 0 || r.CallsPerSec <= 0 || (r.ClientCPUUS <= 0 && r.Transport != "memcpy") { // 200 small copies may take less CPU than getrusage shows
			t.Errorf("%s: missing ratio, rate or CPU: %+v", r.Transport, r)
		}
	}
	// Four size and concurrency pairs; the floor and memcpy have no
	// multiplexing, so they run only with one caller.
	want := map[string]int{"grpc-tcp": 4, "grpc-uds": 4, "notnets": 4, "notnets-raw": 4, "floor": 2, "memcpy": 2}
	for name, n := range want {
		if seen[name] != n {
			t.Errorf("%s measured %d times, want %d", name, seen[name], n)
		}
	}
}

// TestBenchPlots checks that a table run writes the plots it names.
func TestBenchPlots(t *testing.T) {
	out := filepath.Join(t.TempDir(), "plots")
	cmd := exec.Command(os.Args[0], "bench", "-quiet", "-n", "100", "-warmup", "10", "-rounds", "1",
		"-sizes", "0,1K", "-transports", "notnets,floor", "-out", out)
	cmd.Stderr = os.Stderr
	if _, err := cmd.Output(); err != nil {
		t.Fatalf("bench: %v", err)
	}
	for _, f := range []string{"latency-cdf-0B-c1.png", "latency-cdf-1KiB-c1.png", "latency-vs-size.png"} {
		fi, err := os.Stat(filepath.Join(out, f))
		if err != nil || fi.Size() < 1000 {
			t.Errorf("plot %s: %v (%d bytes)", f, err, fi.Size())
		}
	}
}
