// Command notnets is the notnets tool.
//
//	notnets bench [flags]          measure notnets against grpc-go, side by side (see -h)
//	notnets pool init [-cross-host] DIR   make a pool; -cross-host: one shared by processes on several hosts
//	notnets pool [-dir DIR] ls     list a pool's services, their instances (with their hosts) and load, and its files
//	notnets pool [-dir DIR] clean  remove the stale ones
//	notnets bridge -listen ADDR -to NAME   serve a pool service as gRPC over HTTP/2 on a Unix socket or loopback port
//	notnets bridge -reverse -target TARGET -as NAME   put a network gRPC service in the pool
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "bench":
		err = bench(os.Args[2:])
	case "pool":
		err = poolCmd(os.Args[2:])
	case "bridge":
		err = bridgeCmd(os.Args[2:])
	case "bench-server": // started by bench in a child process
		err = benchServer(os.Args[2:])
	case "help", "-h", "-help", "--help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "notnets: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "notnets:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: notnets <command> [flags]

commands:
  bench    run the helloworld echo over notnets, grpc-go (TCP, Unix socket) and
           a bare ring ping-pong, with the server in another process, and
           print latency percentiles, throughput and CPU per call side by side
           (notnets bench -h lists its flags)
  pool     init [-cross-host]: make a pool, or one shared across hosts;
           ls: list a pool's services, each instance's state, host, owner
           and load, and the pool's files and which are stale (left by
           processes that died); clean: remove the stale ones
  bridge   serve services of the pool as ordinary gRPC over HTTP/2 on a Unix
           socket or a loopback TCP port, for grpcurl, health probes and
           clients that are not notnets; with -reverse, put a gRPC service
           of the network in the pool (notnets bridge -h)
`)
}
