package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

func TestMain(m *testing.M) {
	if name := os.Getenv("TILES_TEST_SERVER"); name != "" {
		serve(name)
		return
	}
	os.Exit(m.Run())
}

// TestTilesAcrossProcesses runs the example: the server in another
// process, 50 tiles read in place and checked against their checksums.
func TestTilesAcrossProcesses(t *testing.T) {
	t.Setenv("NOTNETS_POOL", t.TempDir())
	serverCommand = func(exe, name string) *exec.Cmd {
		c := exec.Command(exe, "-test.run=^$")
		c.Env = append(os.Environ(), "TILES_TEST_SERVER="+name)
		return c
	}
	if err := run(fmt.Sprintf("tiles-test-%d", os.Getpid()), 50); err != nil {
		t.Fatal(err)
	}
}

// TestReadTileRejectsMalformed feeds readTile truncated and random tables:
// it must return an error, never panic.
func TestReadTileRejectsMalformed(t *testing.T) {
	good := tileBytes(t)
	if _, err := readTile(good); err != nil {
		t.Fatalf("a good tile: %v", err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	bad := 0
	for i := 0; i < 2000; i++ {
		var b []byte
		switch i % 3 {
		case 0:
			b = good[:r.IntN(len(good))]
		case 1:
			b = append([]byte(nil), good...)
			for j := 0; j < 4; j++ {
				b[r.IntN(64)] = byte(r.Uint32())
			}
		default:
			b = make([]byte, r.IntN(200))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		}
		if _, err := readTile(b); err != nil {
			bad++
		}
	}
	if bad == 0 {
		t.Fatal("no malformed tile was refused")
	}
}

func tileBytes(t *testing.T) []byte {
	out, err := getTile(t.Context(), request(1, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), out.Data()...)
}
