package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"google.golang.org/grpc"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
	"github.com/notnets/notnets/internal/benchsvc"
	"github.com/notnets/notnets/internal/floor"
)

// serverInfo is what the bench server tells its parent on its first line.
type serverInfo struct {
	Listener string `json:"listener"`
	TCP      string `json:"tcp"`
	UDS      string `json:"uds"`
}

// benchServer serves every transport the benchmark measures, then answers
// commands on stdin until it closes:
//
//	floor NAME       serve the floor segment NAME in the pool; answers "ok"
//	floor-spin NAME  the same, the server spinning (floor.Conn.Spin)
//	wake NAME        answer wake-ups on the wake segment NAME (floor.Wake)
//	rusage           answers "USER SYS", this process's CPU time in microseconds
func benchServer(args []string) error {
	fs := flag.NewFlagSet("bench-server", flag.ContinueOnError)
	poolDir := fs.String("pool", "", "pool directory")
	udsDir := fs.String("uds-dir", "", "directory for the Unix socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	name := fmt.Sprintf("bench-%d", os.Getpid())
	// One listener and server per idle strategy: <name> is the default
	// (adaptive), <name>-busy-spin and <name>-park-only the others.
	for _, idle := range []notnets.IdleStrategy{notnets.IdleAdaptive, notnets.IdleBusySpin, notnets.IdleParkOnly} {
		lname := name
		if idle != notnets.IdleAdaptive {
			lname += "-" + idle.String()
		}
		lis, err := notnets.Listen(lname, notnets.WithPool(*poolDir), notnets.WithIdleStrategy(idle))
		if err != nil {
			return err
		}
		srv := notnets.NewServer(notnets.MaxRecvMsgSize(maxMsg), notnets.MaxSendMsgSize(maxMsg), notnets.WithIdleStrategy(idle))
		pb.RegisterGreeterServer(srv, benchsvc.Greeter{})
		srv.RegisterService(&benchsvc.RawServiceDesc, struct{}{})
		go srv.Serve(lis)
		defer srv.Stop()
	}

	gsrv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg))
	pb.RegisterGreeterServer(gsrv, benchsvc.Greeter{})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	udsPath := filepath.Join(*udsDir, "bench.sock")
	uds, err := net.Listen("unix", udsPath)
	if err != nil {
		return err
	}
	go gsrv.Serve(tcp)
	go gsrv.Serve(uds)
	defer gsrv.Stop()

	info, _ := json.Marshal(serverInfo{Listener: name, TCP: tcp.Addr().String(), UDS: udsPath})
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
		case "rusage":
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			fmt.Println(ru.Utime.Nano()/1000, ru.Stime.Nano()/1000)
		default:
			fmt.Println("error unknown command", cmd)
		}
	}
	return nil
}
