package floortmp

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

var yieldEvery = 256

func TestMain(m *testing.M) {
	if os.Getenv("FLOOR_CHILD") != "" {
		child(os.Getenv("FLOOR_CHILD"))
		return
	}
	os.Exit(m.Run())
}

func child(path string) {
	seg, err := pool.Open("/", path, 0, 1<<30)
	if err != nil {
		panic(err)
	}
	lay, _ := pool.MapConn(seg.Mem, ring.CheckCap)
	out := ring.NewProducer(lay.S2C, lay.Server.Tail, lay.Client.Head)
	in := ring.NewConsumer(lay.C2S, lay.Client.Tail, lay.Server.Head)
	lay.Server.State.Store(1)
	spins := 0
	for {
		rec, _ := in.Next()
		if rec == nil {
			spins++
			if spins%yieldEvery == 0 {
				runtime.Gosched()
			}
			continue
		}
		n := len(rec) - 16
		if n == 0 {
			return
		}
		o := out.Reserve(n, 3)
		copy(o[16:], rec[16:])
		in.Release()
		out.Publish()
	}
}

func TestFloor(t *testing.T) {
	dir := t.TempDir()
	seg, _ := pool.Create(dir, "x", pool.ConnSize(1<<20, 1<<20))
	pool.InitConn(seg.Mem, 1<<20, 1<<20, 1)
	lay, _ := pool.MapConn(seg.Mem, ring.CheckCap)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "FLOOR_CHILD="+seg.Path)
	cmd.Stderr = os.Stderr
	cmd.Start()
	for lay.Server.State.Load() != 1 {
		runtime.Gosched()
	}
	out := ring.NewProducer(lay.C2S, lay.Client.Tail, lay.Server.Head)
	in := ring.NewConsumer(lay.S2C, lay.Server.Tail, lay.Client.Head)
	n := 200000
	spins := 0
	start := time.Now()
	for i := 0; i < n; i++ {
		o := out.Reserve(32, 3)
		o[16] = byte(i)
		out.Publish()
		for {
			rec, _ := in.Next()
			if rec != nil {
				in.Release()
				break
			}
			spins++
			if spins%yieldEvery == 0 {
				runtime.Gosched()
			}
		}
	}
	t.Logf("floor: %v per round trip", time.Since(start)/time.Duration(n))
	out.Reserve(0, 3)
	out.Publish()
	cmd.Wait()
}
