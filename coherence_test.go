package notnets_test

import (
	"os"
	"testing"

	"github.com/notnets/notnets/internal/coherence"
	"github.com/notnets/notnets/internal/pool"
)

// coherenceEnv makes every pool of a test process (testPool) a
// cross-host pool whose memory is kept coherent as it says ("software",
// "simulated"): the suites of TestUnderSimulatedCoherence and
// TestUnderSoftwareCoherence.
const coherenceEnv = "NOTNETS_TEST_COHERENCE"

// coherenceSuite is what TestUnderSimulatedCoherence and
// TestUnderSoftwareCoherence run: hostsSuite, and the liveness of a killed
// server (by heartbeat), the discovery of instances (a client before its
// server, an instance killed during calls, a graceful stop) and the
// slots' handshake, and a proxy with view checks on (heap blocks received
// into protected pages). The package's other tests that make their
// pools through the fixture pass too (NOTNETS_TEST_COHERENCE=simulated go
// test ., about 8 minutes here); the in-package tests (package notnets)
// keep pools of one host.
var coherenceSuite = hostsSuite[:len(hostsSuite)-2] + "|TestServerKilled|TestNewClientBeforeTheServer|TestInstanceKilledDuringCalls|TestGracefulStopOfAnInstance|TestHandshakes|TestUnknownServiceHandlerProxy)$"

// coherenceSuiteTests is how many top-level tests coherenceSuite names.
const coherenceSuiteTests = hostsSuiteTests + 6

// testCoherence returns the coherence coherenceEnv asks for, if any. A
// value it does not know fails t, or panics without a t (a server
// child).
func testCoherence(t testing.TB) (pool.Coherence, bool) {
	s := os.Getenv(coherenceEnv)
	if s == "" {
		return 0, false
	}
	c, err := pool.ParseCoherence(s)
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatal(err)
	}
	return c, true
}

// TestUnderSimulatedCoherence runs hostsSuite again, in a child test
// process whose pools are simulated memory without coherence (PROTOCOL.md
// 18): every process works on a private copy of each segment, and only
// the flushes and invalidates the protocol lists move bytes between the
// copy and the file, so a flush or invalidate the transport misses shows
// up as a hang or stale data (internal/ring's TestSimCatchesARemovedFlush
// shows that it does). Every test must pass, none may skip. It needs no
// privilege: the servers are ordinary child processes.
func TestUnderSimulatedCoherence(t *testing.T) {
	skipSuite(t)
	runSuite(t, "over simulated memory without coherence", coherenceSuite, coherenceSuiteTests, coherenceEnv+"="+pool.CoherenceSimulated.String())
}

// TestUnderSoftwareCoherence runs hostsSuite with the processor's
// write-back and invalidate instructions around every access the
// protocol lists (PROTOCOL.md 18). This machine's memory is coherent, so
// it shows that the instructions keep every byte and cost no correctness;
// the simulator shows that they are enough.
func TestUnderSoftwareCoherence(t *testing.T) {
	skipSuite(t)
	if !coherence.Supported() {
		t.Skip("skipped: this processor has no cache-line write-back instruction that notnets knows")
	}
	runSuite(t, "with cache-line flushes", coherenceSuite, coherenceSuiteTests, coherenceEnv+"="+pool.CoherenceSoftware.String())
}

// skipSuite skips a test that runs hostsSuite in another mode when this
// process already runs one, and under the race detector: it does not see
// what crosses between processes, which is what these suites are about,
// they run the tests the race pass runs anyway in the default mode, and
// with them the package took more than its 10 minutes under the detector
// in CI (601 s); `go test ./...` runs them.
func skipSuite(t *testing.T) {
	t.Helper()
	if _, ok := testCoherence(t); ok || asHosts() {
		t.Skip("skipped: already running a suite")
	}
	if raceEnabled {
		t.Skip("skipped under the race detector: it does not see what crosses between processes, which is what this suite checks; `go test ./...` runs it")
	}
}

// oneHostOnly skips t, a test of what only a pool of one host has (what),
// when coherenceEnv makes every pool of the process cross-host: with it,
// `NOTNETS_TEST_COHERENCE=simulated go test .` runs the package's tests
// over simulated memory, and every other test passes there.
func oneHostOnly(t testing.TB, what string) {
	t.Helper()
	if _, ok := testCoherence(t); ok {
		t.Skipf("skipped: tests %s, which only a pool of one host has, and %s makes every pool cross-host", what, coherenceEnv)
	}
}
