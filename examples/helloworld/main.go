// Command helloworld runs the gRPC tutorial's Greeter between two
// processes: it starts itself again as the server, then calls it through a
// notnets memory pool exactly as a generated gRPC client would, and, for
// comparison, through grpc-go over TCP loopback.
//
//	go run ./examples/helloworld             # one call each way, then 10000 timed calls each
//	go run ./examples/helloworld -n 100000   # more timed calls
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

type greeter struct{ pb.UnimplementedGreeterServer }

func (greeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

func main() {
	server := flag.Bool("server", false, "run as the server (the client starts it)")
	name := flag.String("name", fmt.Sprintf("helloworld-%d", os.Getpid()), "listener name in the pool")
	n := flag.Int("n", 10000, "timed calls per transport, after a warm-up")
	flag.Parse()
	if *server {
		serve(*name)
		return
	}
	if err := run(*name, *n); err != nil {
		log.Fatal(err)
	}
}

// serve serves the Greeter on a notnets listener and on TCP loopback,
// prints the TCP address, and serves until its standard input closes.
func serve(name string) {
	lis, err := notnets.Listen(name)
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	gsrv := grpc.NewServer()
	pb.RegisterGreeterServer(gsrv, greeter{})
	go gsrv.Serve(tcp)
	go srv.Serve(lis)
	fmt.Println(tcp.Addr())
	os.Stdin.Read(make([]byte, 1))
	srv.Stop()
	gsrv.Stop()
}

func run(name string, n int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(exe, "-server", "-name", name)
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); child.Wait() }()
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("server did not start: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	cc, err := notnets.Dial(ctx, name)
	if err != nil {
		return err
	}
	defer cc.Close()
	gcc, err := grpc.NewClient(strings.TrimSpace(addr), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer gcc.Close()

	clients := []struct {
		name string
		c    pb.GreeterClient
	}{{"notnets", pb.NewGreeterClient(cc)}, {"grpc-tcp", pb.NewGreeterClient(gcc)}}
	for _, c := range clients {
		r, err := c.c.SayHello(ctx, &pb.HelloRequest{Name: c.name})
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		fmt.Printf("%-8s server (pid %d) says: %s\n", c.name, child.Process.Pid, r.GetMessage())
	}
	if n <= 0 {
		return nil
	}
	// Interleave the transports in rounds so that both see the same machine.
	const rounds = 10
	lat := make([][]time.Duration, len(clients))
	for r := 0; r < rounds; r++ {
		for i, c := range clients {
			for j := 0; j < n/rounds; j++ {
				t0 := time.Now()
				if _, err := c.c.SayHello(ctx, &pb.HelloRequest{Name: "notnets"}); err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
				if r > 0 || j >= n/rounds/10 { // the first tenth of round 0 warms up
					lat[i] = append(lat[i], time.Since(t0))
				}
			}
		}
	}
	fmt.Printf("\n%d calls each, interleaved in %d rounds, server in another process:\n", len(lat[0]), rounds)
	fmt.Printf("%-8s %10s %10s %10s %10s %10s\n", "", "average", "p50", "p99", "p99.9", "max")
	var avgs []time.Duration
	for i, c := range clients {
		l := lat[i]
		var sum time.Duration
		for _, d := range l {
			sum += d
		}
		slices.Sort(l)
		at := func(q float64) time.Duration { return l[min(len(l)-1, int(q*float64(len(l))))] }
		avg := sum / time.Duration(len(l))
		avgs = append(avgs, avg)
		fmt.Printf("%-8s %10v %10v %10v %10v %10v\n", c.name, avg.Round(10*time.Nanosecond), at(0.5), at(0.99), at(0.999), l[len(l)-1])
	}
	fmt.Printf("grpc-tcp / notnets average: %.1fx\n", float64(avgs[1])/float64(avgs[0]))
	return nil
}
