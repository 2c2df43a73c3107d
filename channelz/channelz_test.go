package channelz_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	channelzgrpc "google.golang.org/grpc/channelz/grpc_channelz_v1"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/channelz"
	pb "github.com/notnets/notnets/examples/helloworld/helloworldpb"
)

// The test binary is also the server process (roleEnv).
const roleEnv = "NOTNETS_CHANNELZ_TEST_ROLE"

func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "server" {
		runServer()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// greeter succeeds, fails (name "fail"), blocks until cancelled (name
// "block"), or waits until a call blocks (name "started").
type greeter struct {
	pb.UnimplementedGreeterServer
	started chan struct{}
}

func (g *greeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	switch in.GetName() {
	case "fail":
		return nil, status.Error(codes.FailedPrecondition, "asked to fail")
	case "block":
		close(g.started)
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	case "started":
		select {
		case <-g.started:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// runServer serves the greeter and channelz on a notnets listener "cz"
// in $NOTNETS_POOL, with an idle grpc.Server beside it (registered with
// grpc-go's channelz), until its standard input closes.
func runServer() {
	lis, err := notnets.Listen("cz", notnets.WithPool(os.Getenv("NOTNETS_POOL")))
	if err != nil {
		fmt.Println("listen:", err)
		return
	}
	srv := notnets.NewServer()
	pb.RegisterGreeterServer(srv, &greeter{started: make(chan struct{})})
	channelz.RegisterChannelzServiceToServer(srv)
	gs := grpc.NewServer() // grpc-go's own server, listed first
	defer gs.Stop()
	go srv.Serve(lis)
	defer srv.Stop()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// startServer starts the server process on a pool of its own and dials
// it.
func startServer(t *testing.T) *notnets.ClientConn {
	dir, err := os.MkdirTemp("/dev/shm", "notnets-channelz-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=server", "NOTNETS_POOL="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("server process: %q, %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := notnets.Dial(ctx, "cz", notnets.WithPool(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestChannelzReportsNotnetsCalls: channelz, served over notnets by a
// server in another process, lists the notnets server after grpc-go's,
// with its calls started, succeeded and failed and the time of the last
// start, its listener, and the client's connection with its streams;
// questions about grpc-go's entities get grpc-go's answers.
func TestChannelzReportsNotnetsCalls(t *testing.T) {
	cc := startServer(t)
	ctx := context.Background()
	gc := pb.NewGreeterClient(cc)
	t0 := time.Now()
	for _, name := range []string{"a", "b", "fail", "c", "fail", "d", "e"} {
		gc.SayHello(ctx, &pb.HelloRequest{Name: name})
	}
	// A call its client cancels while its handler runs.
	bctx, cancel := context.WithCancel(ctx)
	blocked := make(chan error)
	go func() {
		_, err := gc.SayHello(bctx, &pb.HelloRequest{Name: "block"})
		blocked <- err
	}()
	if _, err := gc.SayHello(ctx, &pb.HelloRequest{Name: "started"}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-blocked; status.Code(err) != codes.Canceled {
		t.Fatalf("blocked call = %v, want Canceled", err)
	}
	// So far: 9 calls, 6 succeeded, 3 failed (2 by status, 1 cancelled).
	// Each channelz question is a call of its own, counted from its start.

	cz := channelzgrpc.NewChannelzClient(cc)
	// One server a page: grpc-go's, then notnets'.
	var servers []*channelzpb.Server
	for start, end := int64(0), false; !end; {
		r, err := cz.GetServers(ctx, &channelzpb.GetServersRequest{StartServerId: start, MaxResults: 1})
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, r.GetServer()...)
		if len(servers) > 2 || len(r.GetServer()) == 0 {
			t.Fatalf("servers: %v", servers)
		}
		start, end = r.GetServer()[0].GetRef().GetServerId()+1, r.GetEnd()
	}
	if len(servers) != 2 || servers[0].GetRef().GetServerId() >= 1<<48 || servers[1].GetRef().GetName() != "notnets" {
		t.Fatalf("servers = %v, want grpc-go's and then notnets'", servers)
	}
	ns := servers[1]
	// The second GetServers: 9 calls and 2 questions started, the first
	// question succeeded.
	if d := ns.GetData(); d.GetCallsStarted() != 11 || d.GetCallsSucceeded() != 7 || d.GetCallsFailed() != 3 {
		t.Errorf("notnets server's calls: started %d, succeeded %d, failed %d; want 11, 7, 3", d.GetCallsStarted(), d.GetCallsSucceeded(), d.GetCallsFailed())
	}
	if last := ns.GetData().GetLastCallStartedTimestamp().AsTime(); last.Before(t0) || last.After(time.Now()) {
		t.Errorf("last call started at %v, want between %v and now", last, t0)
	}
	if ls := ns.GetListenSocket(); len(ls) != 1 || !strings.HasPrefix(ls[0].GetName(), "cz+") {
		t.Errorf("listen sockets %v, want the instance of cz", ls)
	}

	id := ns.GetRef().GetServerId()
	socks, err := cz.GetServerSockets(ctx, &channelzpb.GetServerSocketsRequest{ServerId: id})
	if err != nil || len(socks.GetSocketRef()) != 1 || !socks.GetEnd() {
		t.Fatalf("GetServerSockets = %v, %v; want this client's one connection", socks, err)
	}
	sock, err := cz.GetSocket(ctx, &channelzpb.GetSocketRequest{SocketId: socks.GetSocketRef()[0].GetSocketId()})
	if err != nil {
		t.Fatal(err)
	}
	// Streams: 9 calls and 4 questions, this one open; all but the
	// cancelled one ended with the server's TRAILERS.
	s := sock.GetSocket()
	if d := s.GetData(); d.GetStreamsStarted() != 13 || d.GetStreamsSucceeded() != 11 || d.GetStreamsFailed() != 1 {
		t.Errorf("connection's streams: started %d, succeeded %d, failed %d; want 13, 11, 1", d.GetStreamsStarted(), d.GetStreamsSucceeded(), d.GetStreamsFailed())
	}
	if r := s.GetRemote().GetOtherAddress().GetName(); !strings.HasSuffix(r, fmt.Sprintf("/cz#%d", os.Getpid())) {
		t.Errorf("remote address %q, want this process's", r)
	}
	if sec := s.GetSecurity().GetOther().GetName(); !strings.Contains(sec, fmt.Sprintf("uid=%d ", os.Getuid())) {
		t.Errorf("security %q, want this process's uid", sec)
	}
	listen, err := cz.GetSocket(ctx, &channelzpb.GetSocketRequest{SocketId: ns.GetListenSocket()[0].GetSocketId()})
	if l := listen.GetSocket().GetLocal().GetOtherAddress().GetName(); err != nil || !strings.Contains(l, "/cz#") {
		t.Errorf("listen socket's address %q, %v", l, err)
	}

	r, err := cz.GetServer(ctx, &channelzpb.GetServerRequest{ServerId: id})
	if d := r.GetServer().GetData(); err != nil || d.GetCallsStarted() != 15 || d.GetCallsSucceeded() != 11 || d.GetCallsFailed() != 3 {
		t.Errorf("GetServer = %v, %v; want 15 calls started, 11 succeeded, 3 failed", r, err)
	}
	// grpc-go's entities are grpc-go's to answer for.
	if _, err := cz.GetServer(ctx, &channelzpb.GetServerRequest{ServerId: servers[0].GetRef().GetServerId()}); err != nil {
		t.Errorf("grpc-go's server: %v", err)
	}
	if _, err := cz.GetSocket(ctx, &channelzpb.GetSocketRequest{SocketId: id + 1000}); status.Code(err) != codes.NotFound {
		t.Errorf("a socket that is not there: %v, want NotFound", err)
	}
}
