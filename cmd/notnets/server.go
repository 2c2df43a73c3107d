package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
	"github.com/notnets/notnets/internal/coherence"
	"github.com/notnets/notnets/internal/floor"
)

// serverInfo is what the bench server tells its parent on its first line.
type serverInfo struct {
	PID int    `json:"pid"`
	TCP string `json:"tcp"`
	UDS string `json:"uds"`
	// DropIn names, for each pool mode and service, the instance through
	// which this process serves grpc-go on notnets' drop-in tier
	// (ListenConn) in that mode's pool.
	DropIn map[string]map[string]string `json:"dropin"`
}

// serverStats is a bench server's answer to "stats": its CPU time, the
// calls its handlers served (over every transport), and what their waits
// (-handler-wait) really took.
type serverStats struct {
	CPUUS  int64 `json:"cpu_us"`  // user and system CPU time of the process, in microseconds
	Calls  int64 `json:"calls"`   // calls the echo handlers served
	WaitNS int64 `json:"wait_ns"` // time the handlers spent in their waits
	Waits  int64 `json:"waits"`   // waits made
	// Lines are the process's cache-line operations on the segments the
	// stats command named; SoftwareLines and SimulatedLines on all of the
	// coherence-sw and coherence-sim pools' segments (with -count-lines;
	// else zero).
	Lines          coherence.Lines `json:"lines"`
	SoftwareLines  coherence.Lines `json:"software_lines"`
	SimulatedLines coherence.Lines `json:"simulated_lines"`
}

// lines returns the server's count of pool mode m's cache-line
// operations.
func (st serverStats) lines(m string) coherence.Lines {
	switch m {
	case modeCoherenceSW:
		return st.SoftwareLines
	case modeCoherenceSim:
		return st.SimulatedLines
	}
	return coherence.Lines{}
}

// benchServer serves every transport the benchmark measures (grpc-go on
// TCP, on a Unix socket and on the drop-in tier; notnets with each idle
// strategy asked; the floors), the pool transports in the pool of each
// mode of -mode-pools, then answers commands on stdin until it closes:
//
//	floor NAME       serve the floor segment NAME in the pool; answers "ok"
//	floor-spin NAME  the same, the server spinning (floor.Conn.Spin)
//	wake NAME        answer wake-ups on the wake segment NAME (floor.Wake)
//	stats [SEGS]     answers a serverStats in JSON, with the cache-line
//	                 operations on the segments SEGS (comma-separated file
//	                 names) counted in its Lines
//
// It is one instance of each notnets service named by -services: several
// bench servers given the same name serve it together.
func benchServer(args []string) error {
	fs := flag.NewFlagSet("bench-server", flag.ContinueOnError)
	poolDir := fs.String("pool", "", "pool directory")
	udsPath := fs.String("uds", "", "path of the Unix socket to serve grpc-go on")
	services := fs.String("services", "bench", "comma-separated notnets services this process is an instance of")
	wait := fs.Duration("handler-wait", 0, "wait in every echo handler (see handler.serve)")
	slots := fs.Int("handler-slots", 0, "handlers that wait at once; 0 for no limit")
	modePools := fs.String("mode-pools", "", "MODE=DIR,...: the pool of each pool mode to serve notnets and the drop-in tier in; empty for -pool alone, as same-host")
	idles := fs.String("idle", "adaptive,busy-spin,park-only", "idle strategies to serve notnets with, comma-separated")
	dropIn := fs.Bool("drop-in", true, "serve grpc-go on the drop-in tier (grpc-shm)")
	countLines := fs.Bool("count-lines", false, "count the cache lines flushed and invalidated (coherence.EnableCounting), reported by stats")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *countLines {
		coherence.EnableCounting()
	}
	pools := map[string]string{}
	var modes []string
	for _, mp := range strings.Split(*modePools, ",") {
		if mp == "" {
			continue
		}
		m, dir, ok := strings.Cut(mp, "=")
		if !ok {
			return fmt.Errorf("bad -mode-pools entry %q (want MODE=DIR)", mp)
		}
		pools[m] = dir
		modes = append(modes, m)
	}
	if len(modes) == 0 {
		pools[modeSameHost], modes = *poolDir, []string{modeSameHost}
	}
	h := &handler{wait: *wait}
	if *slots > 0 {
		h.slots = make(chan struct{}, *slots)
	}
	// One server per idle strategy: service <name> is the default
	// (adaptive), <name>-busy-spin and <name>-park-only the others.
	for _, idle := range []notnets.IdleStrategy{notnets.IdleAdaptive, notnets.IdleBusySpin, notnets.IdleParkOnly} {
		if !contains(strings.Split(*idles, ","), idle.String()) {
			continue
		}
		srv := notnets.NewServer(notnets.MaxRecvMsgSize(maxMsg), notnets.MaxSendMsgSize(maxMsg), notnets.WithIdleStrategy(idle))
		pb.RegisterGreeterServer(srv, greeter{h: h})
		srv.RegisterService(h.rawDesc(), struct{}{})
		defer srv.Stop()
		for _, name := range strings.Split(*services, ",") {
			lname := name
			if idle != notnets.IdleAdaptive {
				lname += "-" + idle.String()
			}
			for _, m := range modes {
				lis, err := notnets.Listen(lname, notnets.WithPool(pools[m]), notnets.WithIdleStrategy(idle))
				if err != nil {
					return fmt.Errorf("%s pool: %w", m, err)
				}
				go srv.Serve(lis)
			}
		}
	}

	gsrv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg))
	pb.RegisterGreeterServer(gsrv, greeter{h: h})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	uds, err := net.Listen("unix", *udsPath)
	if err != nil {
		return err
	}
	go gsrv.Serve(tcp)
	go gsrv.Serve(uds)
	defer gsrv.Stop()
	// The same grpc.Server on the drop-in tier (grpc-shm): an instance of
	// each service that serves byte streams, beside the notnets ones.
	dropIns := map[string]map[string]string{}
	for _, m := range modes {
		if !*dropIn {
			break
		}
		dropIns[m] = map[string]string{}
		for _, name := range strings.Split(*services, ",") {
			lis, err := notnets.ListenConn(name, notnets.WithPool(pools[m]))
			if err != nil {
				return fmt.Errorf("%s pool: %w", m, err)
			}
			dropIns[m][name] = lis.Addr().(*notnets.Addr).Instance
			go gsrv.Serve(lis)
		}
	}

	info, _ := json.Marshal(serverInfo{PID: os.Getpid(), TCP: tcp.Addr().String(), UDS: *udsPath, DropIn: dropIns})
	fmt.Println(string(info))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "floor", "floor-spin":
			c, err := floor.Open(*poolDir, arg)
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			c.Spin = cmd == "floor-spin"
			go func() { c.Serve(); c.Close() }()
			fmt.Println("ok")
		case "wake":
			w, err := floor.OpenWake(*poolDir, arg)
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			go func() { w.Serve(); w.Close() }()
			fmt.Println("ok")
		case "stats":
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			st, _ := json.Marshal(serverStats{CPUUS: (ru.Utime.Nano() + ru.Stime.Nano()) / 1000,
				Calls: h.calls.Load(), WaitNS: h.waitNS.Load(), Waits: h.waits.Load(),
				Lines:         coherence.SegmentLines(strings.Split(arg, ",")...),
				SoftwareLines: coherence.KindLines(coherence.KindSoftware), SimulatedLines: coherence.KindLines(coherence.KindSimulated)})
			fmt.Println(string(st))
		default:
			fmt.Println("error unknown command", cmd)
		}
	}
	return nil
}

// handler is what every echo handler of a bench server does besides
// answering: count the call and, with -handler-wait, wait.
type handler struct {
	wait   time.Duration
	slots  chan struct{} // -handler-slots: a token per handler waiting; nil for no limit
	calls  atomic.Int64
	waitNS atomic.Int64
	waits  atomic.Int64
}

// serve counts a call and makes its wait, if any: it takes a slot
// (waiting for one while -handler-slots handlers hold them), then blocks
// its thread in nanosleep(2) for h.wait with a timer slack of 1 us, so
// that it takes no CPU and wakes close to the time asked for (a Go timer
// or time.Sleep under a millisecond waits about a millisecond when the
// process is otherwise idle: the runtime polls with millisecond
// timeouts). What the nanosleep really took, the wait plus the kernel's
// wake-up, is added to h.waitNS; the wait for a slot is not.
func (h *handler) serve() {
	h.calls.Add(1)
	if h.wait <= 0 {
		return
	}
	if h.slots != nil {
		h.slots <- struct{}{}
		defer func() { <-h.slots }()
	}
	t0 := time.Now()
	pause(h.wait)
	h.waitNS.Add(int64(time.Since(t0)))
	h.waits.Add(1)
}

// pause blocks the calling thread for d in nanosleep(2). The timer slack
// (50 us by default, by which the kernel may defer the wake-up) is set
// to 1 us on the thread first: a thread keeps it, and the goroutine may
// run on any thread. The runtime gives the goroutine's processor to
// another thread while it sleeps.
func pause(d time.Duration) {
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// greeter is benchsvc.Greeter with the handler's count and wait.
type greeter struct {
	benchsvc.Greeter
	h *handler
}

// SayHello waits (handler.serve), then answers as benchsvc.Greeter.
func (g greeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	g.h.serve()
	return g.Greeter.SayHello(ctx, in)
}

// rawDesc is benchsvc.RawServiceDesc with the handler's count and wait
// after the request is decoded.
func (h *handler) rawDesc() *grpc.ServiceDesc {
	desc := benchsvc.RawServiceDesc
	echo := desc.Methods[0]
	next := echo.Handler
	echo.Handler = func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		reply, err := next(srv, ctx, dec, interceptor)
		if err == nil {
			h.serve()
		}
		return reply, err
	}
	desc.Methods = []grpc.MethodDesc{echo}
	return &desc
}
