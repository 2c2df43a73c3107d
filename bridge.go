package notnets

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// BridgeConfig says what a Bridge serves: which services of the pool the
// calls it takes go to, and how it reaches them.
//
// A call goes to the pool service that Routes gives for its gRPC service
// (the "helloworld.Greeter" of "/helloworld.Greeter/SayHello"), else to
// To. Pool services are named by listener ("greeter", as given to
// Listen), gRPC services by their protobuf names, so the bridge cannot
// tell one from the other: one endpoint per pool service (To alone) is
// the simple case, and calls of every gRPC service (server reflection and
// health among them, which a notnets server registers like any other)
// reach that service's instances. Routes put several pool services behind
// one endpoint; reflection and health then answer for the To service.
type BridgeConfig struct {
	// To is the pool service that calls go to unless Routes names their
	// gRPC service. Empty: calls no route names fail with Unimplemented.
	To string
	// Routes maps gRPC service names (package.Service) to pool services.
	Routes map[string]string
	// DialOptions are given to NewClient for every pool service: WithPool,
	// WithPoolGroup, WithServerUIDs and the like.
	DialOptions []DialOption
	// ServerOptions are given to the bridge's grpc.NewServer, after its
	// own (grpc.UnknownServiceHandler and grpc.ForceServerCodecV2, which
	// must stay): grpc.Creds for TLS, keepalive, message size limits.
	ServerOptions []grpc.ServerOption
}

// Bridge serves services of a memory pool to clients outside it, as
// ordinary gRPC over HTTP/2 on a net.Listener (a Unix socket, or a
// loopback TCP port), so that tools and programs that cannot use notnets
// (grpcurl, grpc_health_probe, a kubelet's gRPC probe, clients in other
// languages) reach a notnets service. It is a grpc.Server whose
// unknown-service handler forwards every call, raw (Forward), to a
// ClientConn of the pool service the call is routed to (BridgeConfig):
// messages are never decoded, so it needs no generated code and bridges
// any service; metadata, deadlines, cancellation, headers, trailers and
// status cross both ways.
//
// The services behind it see the bridge as their caller: its uid and gid
// in AuthInfo, its process in the peer address. Whoever can connect to
// the bridge's listener calls them as the bridge's user, so keep it where
// only those who may do so reach it (a Unix socket of mode 0600 in a
// private directory, say; the notnets command's bridge does that).
type Bridge struct {
	gs     *grpc.Server
	to     *ClientConn            // BridgeConfig.To's, or nil
	routes map[string]*ClientConn // by gRPC service name
	conns  []*ClientConn          // one per pool service, to close
	once   sync.Once
}

// NewBridge returns a Bridge for cfg. Its ClientConns connect in the
// background (NewClient), so the pool services may start before or after
// it; a call made while none of a service's instances is connected fails
// with Unavailable, as a health probe wants. Calls are forwarded
// fail-fast: a caller's grpc.WaitForReady does not cross HTTP/2.
func NewBridge(cfg BridgeConfig) (*Bridge, error) {
	if cfg.To == "" && len(cfg.Routes) == 0 {
		return nil, errors.New("notnets: NewBridge: no pool service to bridge to: BridgeConfig.To and Routes are both empty")
	}
	b := &Bridge{routes: make(map[string]*ClientConn, len(cfg.Routes))}
	byName := map[string]*ClientConn{} // one ClientConn per pool service, however many routes name it
	client := func(name string) (*ClientConn, error) {
		if cc := byName[name]; cc != nil {
			return cc, nil
		}
		cc, err := NewClient(name, cfg.DialOptions...)
		if err != nil {
			return nil, fmt.Errorf("notnets: NewBridge: pool service %q: %w", name, err)
		}
		byName[name] = cc
		b.conns = append(b.conns, cc)
		return cc, nil
	}
	var err error
	if cfg.To != "" {
		if b.to, err = client(cfg.To); err != nil {
			b.closeConns()
			return nil, err
		}
	}
	for _, svc := range sortedKeys(cfg.Routes) {
		if svc == "" || strings.Contains(svc, "/") {
			b.closeConns()
			return nil, fmt.Errorf("notnets: NewBridge: route %q=%q: a route names a gRPC service (package.Service), without slashes", svc, cfg.Routes[svc])
		}
		if b.routes[svc], err = client(cfg.Routes[svc]); err != nil {
			b.closeConns()
			return nil, err
		}
	}
	opts := []grpc.ServerOption{
		grpc.UnknownServiceHandler(b.handle),
		grpc.ForceServerCodecV2(rawCodec),
	}
	b.gs = grpc.NewServer(append(opts, cfg.ServerOptions...)...)
	return b, nil
}

// sortedKeys returns m's keys in order, so that errors are reproducible.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// handle forwards a call to the pool service its route names.
func (b *Bridge) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	cc := b.route(method)
	if cc == nil {
		return status.Errorf(codes.Unimplemented, "notnets bridge: no pool service for method %s: no route names its service, and the bridge has no default service", method)
	}
	return forward(ss, cc)
}

// route returns the ClientConn of the pool service a method goes to, or nil.
func (b *Bridge) route(method string) *ClientConn {
	name := strings.TrimPrefix(method, "/")
	if i := strings.LastIndex(name, "/"); i > 0 {
		if cc := b.routes[name[:i]]; cc != nil {
			return cc
		}
	}
	return b.to
}

// Serve accepts connections on lis and serves them gRPC over HTTP/2 until
// Stop or GracefulStop, after which it returns nil. It may be called on
// several listeners at once.
func (b *Bridge) Serve(lis net.Listener) error { return b.gs.Serve(lis) }

// Stop closes the bridge's listeners and connections at once: calls in
// progress end, and so do the calls they made in the pool.
func (b *Bridge) Stop() {
	b.gs.Stop()
	b.closeConns()
}

// GracefulStop stops taking connections and calls, waits for the calls in
// progress to end, then closes the bridge's ClientConns.
func (b *Bridge) GracefulStop() {
	b.gs.GracefulStop()
	b.closeConns()
}

func (b *Bridge) closeConns() {
	b.once.Do(func() {
		for _, cc := range b.conns {
			cc.Close()
		}
	})
}

// ReverseBridgeConfig says which network gRPC service a ReverseBridge puts
// in the pool, and how it reaches it.
type ReverseBridgeConfig struct {
	// Target is the service's address, as grpc.NewClient takes it:
	// "dns:///host:port", "host:port", "unix:///path".
	Target string
	// DialOptions are given to grpc.NewClient; without any that sets
	// transport credentials, the connection is plaintext
	// (insecure.NewCredentials).
	DialOptions []grpc.DialOption
	// ServerOptions are given to the bridge's NewServer, after its own
	// (UnknownServiceHandler and ForceServerCodecV2, which must stay):
	// AllowUIDs or WithAuthorizer to choose who in the pool may call,
	// message size limits.
	ServerOptions []ServerOption
}

// ReverseBridge puts a gRPC service of the network inside a memory pool:
// a notnets Server whose unknown-service handler forwards every call, raw
// (Forward), to a grpc.ClientConn of the service. Serve it on a Listener
// of the name the pool's clients dial. It is the other direction of
// Bridge: a notnets client reaches a service that is not (yet) notnets,
// without knowing it, and nothing is decoded on the way.
//
// The network service sees the bridge as its caller. Calls from the pool
// carry their caller's uid and gid only as far as the bridge: restrict
// them there (ServerOptions), since the network service cannot.
type ReverseBridge struct {
	srv  *Server
	cc   *grpc.ClientConn
	once sync.Once
}

// NewReverseBridge returns a ReverseBridge for cfg. Its grpc.ClientConn
// connects in the background, as grpc.NewClient's does.
func NewReverseBridge(cfg ReverseBridgeConfig) (*ReverseBridge, error) {
	if cfg.Target == "" {
		return nil, errors.New("notnets: NewReverseBridge: no target: ReverseBridgeConfig.Target is empty")
	}
	dopts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.DialOptions...)
	cc, err := grpc.NewClient(cfg.Target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("notnets: NewReverseBridge: target %q: %w", cfg.Target, err)
	}
	opts := append([]ServerOption{UnknownServiceHandler(Forward(cc)), ForceServerCodecV2(rawCodec)}, cfg.ServerOptions...)
	return &ReverseBridge{srv: NewServer(opts...), cc: cc}, nil
}

// Serve serves lis until Stop or GracefulStop, as Server.Serve does.
func (r *ReverseBridge) Serve(lis *Listener) error { return r.srv.Serve(lis) }

// Stop closes the bridge's listeners and connections at once, as
// Server.Stop does, then its connection to the network service.
func (r *ReverseBridge) Stop() {
	r.srv.Stop()
	r.closeConn()
}

// GracefulStop lets the calls in progress finish, as Server.GracefulStop
// does, then closes the connection to the network service.
func (r *ReverseBridge) GracefulStop() {
	r.srv.GracefulStop()
	r.closeConn()
}

func (r *ReverseBridge) closeConn() { r.once.Do(func() { r.cc.Close() }) }
