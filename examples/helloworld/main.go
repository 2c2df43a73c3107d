// Command helloworld runs the gRPC tutorial's Greeter between two processes
// through a notnets memory pool: it starts itself again as the server, then
// calls it as an ordinary generated gRPC client would.
//
//	go run ./examples/helloworld            # client, which starts the server
//	go run ./examples/helloworld -n 100000  # and times 100000 calls
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/notnets/notnets"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

type greeter struct{ pb.UnimplementedGreeterServer }

func (greeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

func main() {
	server := flag.Bool("server", false, "run as the server (the client starts it)")
	name := flag.String("name", "helloworld", "listener name in the pool")
	n := flag.Int("n", 10000, "number of calls to time after the first")
	flag.Parse()
	if *server {
		serve(*name)
		return
	}
	if err := run(*name, *n); err != nil {
		log.Fatal(err)
	}
}

// serve listens, tells the parent it is ready, and serves until its
// standard input closes (the parent exited).
func serve(name string) {
	lis, err := notnets.Listen(name)
	if err != nil {
		log.Fatal(err)
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	go func() {
		os.Stdin.Read(make([]byte, 1))
		srv.Stop()
	}()
	fmt.Println("ready")
	if err := srv.Serve(lis); err != nil {
		log.Fatal(err)
	}
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
	if _, err := stdout.Read(make([]byte, 6)); err != nil {
		return fmt.Errorf("server did not start: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc, err := notnets.Dial(ctx, name)
	if err != nil {
		return err
	}
	defer cc.Close()
	c := pb.NewGreeterClient(cc)
	r, err := c.SayHello(ctx, &pb.HelloRequest{Name: "notnets"})
	if err != nil {
		return err
	}
	fmt.Printf("server (pid %d) says: %s\n", child.Process.Pid, r.GetMessage())
	if n <= 0 {
		return nil
	}
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := range lat {
		t0 := time.Now()
		if _, err := c.SayHello(ctx, &pb.HelloRequest{Name: "notnets"}); err != nil {
			return err
		}
		lat[i] = time.Since(t0)
	}
	total := time.Since(start)
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	fmt.Printf("%d calls: average %v, p50 %v, p99 %v, p99.9 %v, max %v\n",
		n, total/time.Duration(n), at(0.5), at(0.99), at(0.999), lat[len(lat)-1])
	return nil
}
