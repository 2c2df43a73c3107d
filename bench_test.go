package notnets_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
)

// BenchmarkUnaryHelloWorld measures one Greeter call over notnets with the
// server in another process (the paper's helloworld echo).
func BenchmarkUnaryHelloWorld(b *testing.B) {
	srv := startServer(b)
	benchSayHello(b, pb.NewGreeterClient(srv.dial(b)))
}

// benchSayHello times c.SayHello after one untimed call.
func benchSayHello(b *testing.B, c pb.GreeterClient) {
	ctx := context.Background()
	req := &pb.HelloRequest{Name: "world"}
	if _, err := c.SayHello(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.SayHello(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnaryHelloWorld16Callers measures Greeter calls from 16
// goroutines sharing one connection, server in another process.
func BenchmarkUnaryHelloWorld16Callers(b *testing.B) {
	srv := startServer(b, "NOTNETS_TEST_CPUPROFILE="+os.Getenv("NOTNETS_BENCH_SERVER_CPUPROFILE"))
	c := pb.NewGreeterClient(srv.dial(b))
	ctx := context.Background()
	if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "world"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(8) // 16 goroutines with GOMAXPROCS 2
	b.ResetTimer()
	b.RunParallel(func(pb_ *testing.PB) {
		req := &pb.HelloRequest{Name: "world"}
		for pb_.Next() {
			if _, err := c.SayHello(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkUnaryHelloWorldGRPCTCP is the same call over grpc-go on TCP
// loopback, for the allocations and time per call side by side.
func BenchmarkUnaryHelloWorldGRPCTCP(b *testing.B) {
	srv := startServer(b)
	cc, err := grpc.NewClient(srv.tcpAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	benchSayHello(b, pb.NewGreeterClient(cc))
}

// BenchmarkWakeAfterIdle measures a call made after both sides have been
// idle for longer than their spin period, so that both have blocked: with
// the futex doorbell, and polling only (sleeping between polls, as across
// hosts).
func BenchmarkWakeAfterIdle(b *testing.B) {
	for _, mode := range []struct {
		name string
		env  []string
		opts []notnets.DialOption
	}{
		{"doorbell", nil, nil},
		{"poll-only", []string{"NOTNETS_TEST_POLLONLY=1"}, []notnets.DialOption{notnets.WithPollOnly()}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			srv := startServer(b, mode.env...)
			c := pb.NewGreeterClient(srv.dial(b, mode.opts...))
			ctx := context.Background()
			req := &pb.HelloRequest{Name: "world"}
			var total time.Duration
			for b.Loop() {
				time.Sleep(5 * time.Millisecond) // idle: both sides block
				t0 := time.Now()
				if _, err := c.SayHello(ctx, req); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/1e3, "us/wake-call")
		})
	}
}

// BenchmarkIdleCPU measures the CPU time both processes spend per second
// while 1 or 100 connections are open and idle.
func BenchmarkIdleCPU(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			srv := startServer(b)
			for range n {
				c := pb.NewGreeterClient(srv.dial(b, notnets.WithRingSize(64<<10)))
				if _, err := c.SayHello(context.Background(), &pb.HelloRequest{}); err != nil {
					b.Fatal(err)
				}
			}
			time.Sleep(time.Second) // let the spin periods, the monitor and the direct futex waits run out
			self0, child0 := cpuTime(b, os.Getpid()), cpuTime(b, srv.cmd.Process.Pid)
			start := time.Now()
			for b.Loop() {
				time.Sleep(100 * time.Millisecond)
			}
			secs := time.Since(start).Seconds()
			self1, child1 := cpuTime(b, os.Getpid()), cpuTime(b, srv.cmd.Process.Pid)
			b.ReportMetric((self1-self0).Seconds()*1e3/secs, "client-cpu-ms/s")
			b.ReportMetric((child1-child0).Seconds()*1e3/secs, "server-cpu-ms/s")
		})
	}
}

// cpuTime sums the time the threads of process pid have run
// (/proc/PID/task/*/schedstat, nanoseconds).
func cpuTime(b *testing.B, pid int) time.Duration {
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/schedstat")
	if err != nil || len(tasks) == 0 {
		b.Skipf("no /proc schedstat for pid %d: %v", pid, err)
	}
	var total time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(data))[0], 10, 64)
		total += time.Duration(ns)
	}
	return total
}

// BenchmarkKillToError kills the server process (SIGKILL) while a call
// waits on it, once per iteration, and reports how long the call took to
// fail: median and worst. Run it with -benchtime 100x for 100 kills.
func BenchmarkKillToError(b *testing.B) {
	var took []time.Duration
	for b.Loop() {
		srv := startServer(b)
		c := semanticsClient(srv.dial(b))
		ctx := context.Background()
		done := make(chan error, 1)
		go func() {
			_, err := c.UnaryCall(withMode(ctx, "block", "kill"), &testpb.SimpleRequest{})
			done <- err
		}()
		if _, err := c.UnaryCall(withMode(ctx, "started", "kill"), &testpb.SimpleRequest{}); err != nil {
			b.Fatal(err)
		}
		killed := time.Now()
		srv.cmd.Process.Kill()
		err := <-done
		took = append(took, time.Since(killed))
		if status.Code(err) != codes.Unavailable {
			b.Fatalf("call after the kill = %v, want Unavailable", err)
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1e3, "ms-median")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1e3, "ms-worst")
}

// BenchmarkBytesEcho measures the raw echo (the zero-serialization path)
// with the server in another process: the request is built in the heap
// with Alloc, the reply read in place and freed.
func BenchmarkBytesEcho(b *testing.B) {
	srv := startServer(b, "NOTNETS_TEST_BIG=1")
	cc := srv.dial(b, notnets.WithMaxRecvMsgSize(bigLimit), notnets.WithMaxSendMsgSize(bigLimit), bigLiveness)
	for _, n := range []int{16, 64 << 10, 1 << 20, 16 << 20} {
		b.Run(sizeName(n), func(b *testing.B) {
			payload := make([]byte, n)
			var in, out notnets.Bytes
			call := func() {
				cc.AllocInto(&in, n)
				copy(in.Data(), payload)
				if err := benchsvc.RawEcho(context.Background(), cc, &in, &out); err != nil {
					b.Fatal(err)
				}
				if out.Len() != n {
					b.Fatalf("echo of %d bytes came back with %d", n, out.Len())
				}
				out.Free()
			}
			call()
			b.SetBytes(int64(2 * n)) // the payload crosses twice
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				call()
			}
		})
	}
}

// BenchmarkMemcpy is the copy the arena path is compared with.
func BenchmarkMemcpy(b *testing.B) {
	for _, n := range []int{16, 64 << 10, 1 << 20, 16 << 20} {
		b.Run(sizeName(n), func(b *testing.B) {
			src, dst := make([]byte, n), make([]byte, n)
			b.SetBytes(int64(n))
			for b.Loop() {
				copy(dst, src)
			}
		})
	}
}

var sizeName = notnets.SizeName
