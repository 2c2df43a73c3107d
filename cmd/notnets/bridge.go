package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/pool"
)

// routeFlag collects -route SERVICE=NAME flags.
type routeFlag map[string]string

func (r routeFlag) String() string {
	var s []string
	for _, k := range sortedRoutes(r) {
		s = append(s, k+"="+r[k])
	}
	return strings.Join(s, ",")
}

func (r routeFlag) Set(v string) error {
	svc, name, ok := strings.Cut(v, "=")
	if !ok || svc == "" || name == "" {
		return fmt.Errorf("route %q: want SERVICE=NAME, a gRPC service (package.Service) and a pool service", v)
	}
	if old, dup := r[svc]; dup && old != name {
		return fmt.Errorf("route %q: %s is routed to %q already", v, svc, old)
	}
	r[svc] = name
	return nil
}

func sortedRoutes(r map[string]string) []string { return slices.Sorted(maps.Keys(r)) }

// bridgeConfig is what the bridge command's flags say.
type bridgeConfig struct {
	pool, group string
	// Forward direction: the pool's services on a socket.
	listen string
	to     string
	routes routeFlag
	mode   fs.FileMode
	// Reverse direction: a network service in the pool.
	reverse        bool
	target, as     string
	tls            bool
	ca, serverName string
}

func parseBridgeFlags(args []string, out io.Writer) (*bridgeConfig, error) {
	c := &bridgeConfig{routes: routeFlag{}}
	f := flag.NewFlagSet("bridge", flag.ContinueOnError)
	f.SetOutput(out)
	f.StringVar(&c.pool, "pool", pool.DefaultDir(), "pool directory ($NOTNETS_POOL, else /dev/shm/notnets-<uid>)")
	f.StringVar(&c.group, "group", "", "the pool's group (name or number), as given to WithPoolGroup; empty for a pool of one user")
	f.StringVar(&c.listen, "listen", "", "where to serve gRPC over HTTP/2: unix:PATH (or a path), or a loopback TCP address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT)")
	f.StringVar(&c.to, "to", "", "the pool service that calls go to unless a -route names their gRPC service")
	f.Var(c.routes, "route", "SERVICE=NAME: calls of the gRPC service SERVICE (package.Service) go to the pool service NAME; repeatable")
	mode := f.String("mode", "0600", "permissions of the Unix socket (octal): who may call the pool's services as this user")
	f.BoolVar(&c.reverse, "reverse", false, "the other direction: put the network gRPC service -target in the pool as -as")
	f.StringVar(&c.target, "target", "", "-reverse: the network service, as grpc.NewClient takes it (dns:///host:port, host:port, unix:///path)")
	f.StringVar(&c.as, "as", "", "-reverse: the pool service name the network service takes")
	f.BoolVar(&c.tls, "tls", false, "-reverse: reach -target over TLS (the system's roots, or -ca)")
	f.StringVar(&c.ca, "ca", "", "-reverse: PEM file of the CA certificates that -target's certificate must chain to (implies -tls)")
	f.StringVar(&c.serverName, "server-name", "", "-reverse: the name -target's certificate must carry, if not its host")
	f.Usage = func() {
		fmt.Fprint(f.Output(), `usage: notnets bridge -listen ADDR [-to NAME] [-route SERVICE=NAME ...] [flags]
       notnets bridge -reverse -target TARGET -as NAME [flags]

The first form serves services of the pool as ordinary gRPC over HTTP/2 on
a Unix socket or a loopback TCP port, so that grpcurl, grpc_health_probe,
a kubelet's gRPC probe and clients that are not notnets reach them:

  notnets bridge -listen unix:/run/greeter.sock -to greeter
  grpcurl -plaintext -unix /run/greeter.sock list
  grpc_health_probe -addr unix:///run/greeter.sock

Which pool service a call goes to: the one -route gives for the call's
gRPC service (the helloworld.Greeter of /helloworld.Greeter/SayHello),
else -to. Pool services are named by listener, gRPC services by their
protobuf names, so the bridge cannot tell one from the other: one bridge
per pool service (-to alone) is the simple case, and every gRPC service
of that server, reflection and health among them, is reached through it.
With routes, reflection and health answer for the -to service.

Messages are forwarded undecoded; metadata, deadlines, cancellation,
headers, trailers and status cross both ways. The services see the
bridge as their caller (its uid and gid), so whoever can connect to the
socket calls them as this user: the socket is made with -mode (0600 by
default), and a TCP address must be a loopback one.

The second form (-reverse) puts a gRPC service of the network in the pool
under the name -as, so that notnets clients reach it:

  notnets bridge -reverse -target dns:///billing.internal:443 -tls -as billing

flags:
`)
		f.PrintDefaults()
	}
	if err := f.Parse(args); err != nil {
		return nil, err
	}
	if f.NArg() > 0 {
		f.Usage()
		return nil, fmt.Errorf("unexpected arguments %q", f.Args())
	}
	m, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || m > 0o777 {
		return nil, fmt.Errorf("-mode %q: want octal permissions such as 0600", *mode)
	}
	c.mode = fs.FileMode(m)
	if c.ca != "" {
		c.tls = true
	}
	if c.reverse {
		if c.target == "" || c.as == "" {
			return nil, errors.New("bridge -reverse needs -target (the network service) and -as (its name in the pool)")
		}
		if c.listen != "" || c.to != "" || len(c.routes) > 0 {
			return nil, errors.New("bridge -reverse takes -target and -as, not -listen, -to or -route")
		}
		return c, nil
	}
	if c.listen == "" || (c.to == "" && len(c.routes) == 0) {
		return nil, errors.New("bridge needs -listen (where to serve) and -to or -route (which pool services)")
	}
	if c.target != "" || c.as != "" || c.tls {
		return nil, errors.New("-target, -as, -tls and -ca are for bridge -reverse")
	}
	return c, nil
}

// bridgeCmd runs the bridge command until SIGINT or SIGTERM.
func bridgeCmd(args []string) error {
	c, err := parseBridgeFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runBridge(ctx, c, os.Stdout)
}

// runBridge serves c until ctx ends, then stops gracefully. It prints one
// line to out once it serves, saying where (a test waits for it).
func runBridge(ctx context.Context, c *bridgeConfig, out io.Writer) error {
	if c.reverse {
		return runReverse(ctx, c, out)
	}
	dial := []notnets.DialOption{notnets.WithPool(c.pool)}
	if c.group != "" {
		dial = append(dial, notnets.WithPoolGroup(c.group))
	}
	lis, where, err := listenBridge(c.listen, c.mode)
	if err != nil {
		return err
	}
	b, err := notnets.NewBridge(notnets.BridgeConfig{To: c.to, Routes: c.routes, DialOptions: dial})
	if err != nil {
		lis.Close()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(lis) }()
	to := c.to
	if len(c.routes) > 0 {
		to = fmt.Sprintf("%s (routes %s)", c.to, c.routes)
	}
	fmt.Fprintf(out, "notnets bridge: serving %s: gRPC over HTTP/2 to pool %s service %s\n", where, c.pool, to)
	return waitServing(ctx, served, b.GracefulStop, b.Stop)
}

// runReverse puts c.target in the pool as c.as until ctx ends.
func runReverse(ctx context.Context, c *bridgeConfig, out io.Writer) error {
	var gopts []grpc.DialOption
	if c.tls {
		cfg := &tls.Config{ServerName: c.serverName}
		if c.ca != "" {
			pem, err := os.ReadFile(c.ca)
			if err != nil {
				return fmt.Errorf("-ca: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return fmt.Errorf("-ca %s: no PEM certificate in it", c.ca)
			}
		}
		gopts = append(gopts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	rb, err := notnets.NewReverseBridge(notnets.ReverseBridgeConfig{Target: c.target, DialOptions: gopts})
	if err != nil {
		return err
	}
	lopts := []notnets.ListenOption{notnets.WithPool(c.pool)}
	if c.group != "" {
		lopts = append(lopts, notnets.WithPoolGroup(c.group))
	}
	lis, err := notnets.Listen(c.as, lopts...)
	if err != nil {
		rb.Stop()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- rb.Serve(lis) }()
	fmt.Fprintf(out, "notnets bridge: serving %s in pool %s as service %s\n", c.target, c.pool, c.as)
	return waitServing(ctx, served, rb.GracefulStop, rb.Stop)
}

// waitServing waits for Serve to fail, or for ctx to end and then stops:
// gracefully, the calls in progress finishing, unless a second signal
// comes first (the NotifyContext is done with the first, so a new Notify
// catches the second).
func waitServing(ctx context.Context, served <-chan error, graceful, stop func()) error {
	select {
	case err := <-served:
		stop()
		return err
	case <-ctx.Done():
	}
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	done := make(chan struct{})
	go func() { graceful(); close(done) }()
	select {
	case <-done:
	case <-again:
		stop()
		<-done
	}
	return <-served
}

// listenBridge listens where -listen says: a Unix socket made with mode
// (a stale one, whose listener is gone, is replaced), or a loopback TCP
// address. It returns the listener and its address as it prints it.
func listenBridge(addr string, mode fs.FileMode) (net.Listener, string, error) {
	path, unix := strings.CutPrefix(addr, "unix:")
	if !unix && strings.HasPrefix(addr, "/") {
		path, unix = addr, true
	}
	if unix {
		// unix:///path as gRPC writes it, unix:/path and unix:path alike.
		if p, ok := strings.CutPrefix(path, "//"); ok {
			path = p
		}
		return listenUnix(path, mode)
	}
	hostPort := strings.TrimPrefix(addr, "tcp:")
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return nil, "", fmt.Errorf("-listen %q: neither unix:PATH nor host:port: %v", addr, err)
	}
	if !loopbackHost(host) {
		return nil, "", fmt.Errorf("-listen %q: not a loopback address: the pool's services would be open to the network as this user, without the uid checks that guard the pool (serve them with Server.ServeGRPC and TLS instead)", addr)
	}
	lis, err := net.Listen("tcp", hostPort)
	if err != nil {
		return nil, "", err
	}
	return lis, lis.Addr().String(), nil
}

// loopbackHost reports whether host is localhost or a loopback IP.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// listenUnix listens on a Unix socket at path with the permissions mode.
// The socket is made under a umask that leaves it no more than 0600, then
// given mode, so that no one else can connect in between. A file already
// at path is replaced only if it is a socket nobody listens on (a bridge
// that died); a live socket or another kind of file is an error.
func listenUnix(path string, mode fs.FileMode) (net.Listener, string, error) {
	if path == "" {
		return nil, "", errors.New("-listen unix: no socket path")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, "", fmt.Errorf("-listen %s: the path exists and is not a socket (%v)", path, fi.Mode().Type())
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil, "", fmt.Errorf("-listen %s: another process listens on the socket", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, "", fmt.Errorf("-listen %s: the socket exists and cannot be checked: %v", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, "", fmt.Errorf("-listen %s: removing the stale socket: %w", path, err)
		}
	}
	old := syscall.Umask(0o177) // process-wide: the command has no other goroutine making files yet
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, "", err
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, "", fmt.Errorf("-listen %s: setting the socket's mode: %w", path, err)
	}
	return lis, "unix:" + path, nil
}
