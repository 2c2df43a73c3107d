package notnets

import (
	"fmt"
	"time"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
)

// Defaults.
const (
	// DefaultRingSize is the capacity of each of a connection's two rings.
	DefaultRingSize = 1 << 20
	// DefaultMaxRecvMsgSize is the largest message a side accepts, as in grpc-go.
	DefaultMaxRecvMsgSize = 4 << 20
	// DefaultSpin is how long an idle reader keeps polling before it blocks.
	DefaultSpin = 100 * time.Microsecond
	// DefaultArenaSize is the size of each of a connection's two heaps
	// (WithArenaSize). The heaps are files on tmpfs: only pages that carry
	// messages take memory.
	DefaultArenaSize = 64 << 20
	// defaultWindow is each stream's receive window: how many message bytes a
	// sender may have in flight before the receiver's application reads them.
	defaultWindow = 1 << 20
)

// ArenaThreshold is the size from which a message travels through the
// connection's heap as a reference rather than through the ring.
const ArenaThreshold = transport.ArenaThreshold

// DefaultLivenessTimeout is how long a peer's heartbeat may stand still
// before its connection fails (WithLivenessTimeout).
const DefaultLivenessTimeout = 2 * time.Second

// LivenessOption sets the liveness timeout; it is a DialOption, a
// ServerOption and a ListenOption (for ListenConn's connections; a
// Server's are set by NewServer's).
type LivenessOption time.Duration

func (l LivenessOption) applyDial(o *dialOptions)     { o.liveness = time.Duration(l) }
func (l LivenessOption) applyServer(o *serverOptions) { o.liveness = time.Duration(l) }
func (l LivenessOption) applyListen(o *listenOptions) { o.liveness = time.Duration(l) }

// WithLivenessTimeout sets how long a peer's heartbeat may stand still
// before its connection fails with Unavailable (default
// DefaultLivenessTimeout; 0 turns the check off, though this side still
// beats for its peer). A peer of this host and pid namespace, in a pool
// that is not cross-host, whose process has exited is noticed within
// about 100 ms, whatever the timeout; other peers (WithCrossHost, other
// pid namespaces) by their heartbeat alone. A client also gives up
// connecting to an instance whose listener's heartbeat stands still for
// the timeout.
func WithLivenessTimeout(d time.Duration) LivenessOption { return LivenessOption(d) }

// waitConfig says how a side waits for its peer (transport.Wait).
type waitConfig = transport.Wait

func defaultWait() waitConfig { return waitConfig{Spin: DefaultSpin} }

type dialOptions struct {
	pool         string
	ringSize     int
	arenaSize    int
	group        string      // the pool's group (WithPoolGroup), or "" for a pool of one user
	access       pool.Access // group, resolved by Dial
	unary        []grpc.UnaryClientInterceptor
	stream       []grpc.StreamClientInterceptor
	callOptions  []grpc.CallOption
	wait         waitConfig
	maxRecvSize  int
	maxSendSize  int
	window       int
	connectLimit time.Duration

	plainCall    *callInfo     // the call info of a call without options
	subtypeCalls *subtypeCalls // the call infos of calls whose only option is a content subtype
	liveness     time.Duration
	backoff      backoff.Config
	perRPC       []credentials.PerRPCCredentials // WithPerRPCCredentials
	stats        statsHandlers                   // WithStatsHandler
	policy       balance.Policy                  // WithBalancing
	fallback     *fallbackConfig                 // WithFallback
	serverUIDs   []uint32                        // WithServerUIDs, nil for any
	serverGIDs   []uint32                        // WithServerGIDs, nil for any
	badConfig    error                           // WithDefaultServiceConfig's parse error
	userAgent    string                          // WithUserAgent, before notnets' own
	maxHeader    uint32                          // WithMaxHeaderListSize; 0 for the default
	crossHost    bool                            // WithCrossHost
}

// fallbackConfig is WithFallback's target and options.
type fallbackConfig struct {
	target string
	opts   []grpc.DialOption
}

type serverOptions struct {
	unary       []grpc.UnaryServerInterceptor
	stream      []grpc.StreamServerInterceptor
	wait        waitConfig
	maxRecvSize int
	maxSendSize int
	codec       encoding.CodecV2
	window      int
	liveness    time.Duration
	authz       authorizer
	stats       statsHandlers // StatsHandler
	maxStreams  uint32        // MaxConcurrentStreams; 0 for none
	maxConns    int           // MaxConnections; 0 for none
	maxHeader   uint32        // MaxHeaderListSize; 0 for the default

	unknown *grpc.StreamDesc // UnknownServiceHandler's, or nil

	grpcOpts []grpc.ServerOption // WithGRPCServerOptions: for ServeGRPC's grpc.Server
}

type listenOptions struct {
	pool      string
	group     string
	wait      waitConfig
	exclusive bool
	crossHost bool          // WithCrossHost
	liveness  time.Duration // ListenConn's connections
}

// DialOption configures Dial.
type DialOption interface{ applyDial(*dialOptions) }

// ServerOption configures NewServer.
type ServerOption interface{ applyServer(*serverOptions) }

// ListenOption configures Listen.
type ListenOption interface{ applyListen(*listenOptions) }

type dialFunc func(*dialOptions)

type listenFunc func(*listenOptions)

func (f listenFunc) applyListen(o *listenOptions) { f(o) }

// WithExclusive makes Listen fail, with an error wrapping
// ErrInstanceExists, when a live instance already serves the name. By
// default Listen starts one more instance of the service.
func WithExclusive() ListenOption { return listenFunc(func(o *listenOptions) { o.exclusive = true }) }

func (f dialFunc) applyDial(o *dialOptions) { f(o) }

type serverFunc func(*serverOptions)

func (f serverFunc) applyServer(o *serverOptions) { f(o) }

// PoolOption names the pool directory; it is both a DialOption and a
// ListenOption.
type PoolOption string

func (p PoolOption) applyDial(o *dialOptions)     { o.pool = string(p) }
func (p PoolOption) applyListen(o *listenOptions) { o.pool = string(p) }

// WithPool selects the pool directory, overriding $NOTNETS_POOL and the
// default /dev/shm/notnets-<uid>.
func WithPool(dir string) PoolOption { return PoolOption(dir) }

// PoolGroupOption names the group that shares a pool; it is both a
// DialOption and a ListenOption.
type PoolGroupOption string

func (g PoolGroupOption) applyDial(o *dialOptions)     { o.group = string(g) }
func (g PoolGroupOption) applyListen(o *listenOptions) { o.group = string(g) }

// WithPoolGroup shares the pool among the members of group (a name or a
// number), for services that run as different users: the directory is
// created 03770 (setgid, sticky) with that group, segments 0660, and a pool whose group is
// another, or that others can write, is refused. Without it a pool belongs
// to one user (0700 and 0600) and a directory that its group can write is
// refused. See docs/SECURITY.md.
func WithPoolGroup(group string) PoolGroupOption { return PoolGroupOption(group) }

// poolAccess resolves a pool group option.
func poolAccess(group string) (pool.Access, error) {
	if group == "" {
		return pool.OwnerOnly, nil
	}
	return pool.GroupAccess(group)
}

// WaitOption sets how a side waits for its peer; it is a DialOption, a
// ServerOption and a ListenOption.
type WaitOption struct{ w func(*waitConfig) }

func (w WaitOption) applyDial(o *dialOptions)     { w.w(&o.wait) }
func (w WaitOption) applyServer(o *serverOptions) { w.w(&o.wait) }
func (w WaitOption) applyListen(o *listenOptions) { w.w(&o.wait) }

// WithSpin sets how long an idle side keeps polling shared memory before it
// blocks on the doorbell (or, with WithPollOnly, sleeps): with
// IdleAdaptive, the most it spins, and how long a caller polls for its
// reply. Longer spins lower latency after a pause and cost CPU while idle.
// The default is DefaultSpin.
func WithSpin(d time.Duration) WaitOption {
	return WaitOption{func(w *waitConfig) { w.Spin = max(d, 0) }}
}

// IdleStrategy chooses how a side waits for its peer when it has nothing
// to read, in the manner of Aeron's idle strategies. docs/BENCHMARKS.md
// has what each costs in latency and CPU, measured.
type IdleStrategy int

const (
	// IdleAdaptive, the default, spins (yielding now and then) for a
	// period learned from the recent gaps between messages: just past
	// the usual gap when that is within the spin period (WithSpin), else
	// a short 20 us for the rest of a burst; then it parks on the
	// doorbell. A poller that finds it has lost its core to another
	// thread (the machine has more runnable threads than cores) parks at
	// once instead of spinning on.
	IdleAdaptive IdleStrategy = iota
	// IdleBusySpin never parks: the lowest latency at every rate, at the
	// cost of a core per polling side for as long as a connection is
	// open. For dedicated cores only.
	IdleBusySpin
	// IdleParkOnly parks at once: the least CPU, and a wake-up (about 10
	// to 40 us on the development machine) for every message that finds
	// its peer parked.
	IdleParkOnly
)

// String returns the strategy's name: adaptive, busy-spin or park-only.
func (s IdleStrategy) String() string {
	switch s {
	case IdleAdaptive:
		return "adaptive"
	case IdleBusySpin:
		return "busy-spin"
	case IdleParkOnly:
		return "park-only"
	}
	return fmt.Sprintf("IdleStrategy(%d)", int(s))
}

// WithIdleStrategy sets how the side waits for its peer (IdleAdaptive by
// default). Each side chooses its own: a client and a server may differ.
func WithIdleStrategy(s IdleStrategy) WaitOption {
	return WaitOption{func(w *waitConfig) {
		switch s {
		case IdleBusySpin:
			w.Idle = transport.IdleBusySpin
		case IdleParkOnly:
			w.Idle = transport.IdleParkOnly
		default:
			w.Idle = transport.IdleAdaptive
		}
	}}
}

// WithPollOnly makes the side never use a futex doorbell: after spinning it
// sleeps and polls again; wake-up latency is then that of time.Sleep
// (about 1 ms on Linux). It changes how this side waits, nothing else:
// each side of a connection may choose. A pool shared across hosts is not
// made by this option but by the pool itself (WithCrossHost): every
// process in a cross-host pool polls only, whether or not it says so.
func WithPollOnly() WaitOption {
	return WaitOption{func(w *waitConfig) { w.PollOnly = true }}
}

// CrossHostOption asks for a cross-host pool; it is both a ListenOption
// and a DialOption (WithCrossHost).
type CrossHostOption struct{}

func (CrossHostOption) applyListen(o *listenOptions) { o.crossHost = true }
func (CrossHostOption) applyDial(o *dialOptions)     { o.crossHost = true }

// WithCrossHost says that the pool is shared by processes on different
// hosts (a DAX or CXL file system that several machines map), where no
// futex, Unix socket or pid reaches from one to another.
//
// On Listen it makes the pool cross-host: a pool that does not exist is
// made with a marker (the file hosts, docs/PROTOCOL.md 3.7) already in
// it, and an existing pool that nobody uses yet (no listener, connection
// or socket in it) gets one; a cross-host pool is taken as it is. An
// existing pool of one host that is in use is an error (wrapping
// ErrPoolInUse): marking it under processes that already run there would
// change their peers' mode under them. `notnets pool init -cross-host
// DIR` does the same from the command line.
//
// The marker, not this option, is what every process of the pool obeys:
// Listen, NewServer's connections, Dial and NewClient, ListenConn and
// ContextDialer, and notnets pool ls and clean all read it, and in a
// cross-host pool they never wait on a futex (poll-only waiting), never
// use the Unix socket (connections are set up through the listener's
// slots), never look a peer's pid up, and judge liveness by heartbeats
// alone, whatever their own options say: the settings cannot disagree.
// On Dial, NewClient and ContextDialer the option only asserts: a pool
// without the marker makes their connections fail with
// FailedPrecondition, rather than treat as local the peers the caller
// says are remote (an error rather than a warning, since going on is the
// mismatch the marker exists to prevent).
func WithCrossHost() CrossHostOption { return CrossHostOption{} }

// ErrPoolInUse is wrapped by the error of Listen WithCrossHost in an
// existing pool of one host that has listeners or connections.
var ErrPoolInUse = pool.ErrPoolInUse

// WithRingSize sets the capacity of each ring of connections this client
// makes: a power of two from 4 KiB to 1 GiB. Messages larger than half the
// ring are split into fragments.
func WithRingSize(n int) DialOption { return dialFunc(func(o *dialOptions) { o.ringSize = n }) }

// WithArenaSize sets the size of each of the two heaps of connections this
// client makes (default DefaultArenaSize): a power of two from 64 KiB to
// 1 GiB, or 0 for none. Messages of ArenaThreshold bytes or more travel
// through the heap as a reference instead of being copied through the
// ring; a message larger than the heap, or one that finds the heap full,
// goes through the ring.
func WithArenaSize(n int) DialOption { return dialFunc(func(o *dialOptions) { o.arenaSize = n }) }

// WithViewChecks makes a side protect every page of the peer's heap that
// no received message holds (mprotect, two system calls per message), so
// that reading a Bytes after Free, or a message a codec kept without a
// reference, faults at once instead of reading another message's bytes.
// Meant for tests and debugging. Like every WaitOption it is a
// DialOption, a ServerOption and a ListenOption (where it does nothing).
func WithViewChecks() WaitOption {
	return WaitOption{func(w *waitConfig) { w.CheckViews = true }}
}

// WithUnaryInterceptor sets the client's unary interceptor; it runs before
// any set with WithChainUnaryInterceptor.
func WithUnaryInterceptor(i grpc.UnaryClientInterceptor) DialOption {
	return dialFunc(func(o *dialOptions) { o.unary = append([]grpc.UnaryClientInterceptor{i}, o.unary...) })
}

// WithChainUnaryInterceptor appends client unary interceptors; the first is
// outermost.
func WithChainUnaryInterceptor(is ...grpc.UnaryClientInterceptor) DialOption {
	return dialFunc(func(o *dialOptions) { o.unary = append(o.unary, is...) })
}

// WithStreamInterceptor sets the client's stream interceptor; it runs before
// any set with WithChainStreamInterceptor.
func WithStreamInterceptor(i grpc.StreamClientInterceptor) DialOption {
	return dialFunc(func(o *dialOptions) { o.stream = append([]grpc.StreamClientInterceptor{i}, o.stream...) })
}

// WithChainStreamInterceptor appends client stream interceptors; the first
// is outermost.
func WithChainStreamInterceptor(is ...grpc.StreamClientInterceptor) DialOption {
	return dialFunc(func(o *dialOptions) { o.stream = append(o.stream, is...) })
}

// WithDefaultCallOptions sets call options applied to every call before
// the call's own.
func WithDefaultCallOptions(cos ...grpc.CallOption) DialOption {
	return dialFunc(func(o *dialOptions) { o.callOptions = append(o.callOptions, cos...) })
}

// WithMaxRecvMsgSize sets the largest response message the client accepts
// (default 4 MiB); grpc.MaxCallRecvMsgSize overrides it per call.
func WithMaxRecvMsgSize(n int) DialOption {
	return dialFunc(func(o *dialOptions) { o.maxRecvSize = n })
}

// WithMaxSendMsgSize sets the largest request message the client sends
// (default unlimited); grpc.MaxCallSendMsgSize overrides it per call.
func WithMaxSendMsgSize(n int) DialOption {
	return dialFunc(func(o *dialOptions) { o.maxSendSize = n })
}

// WithBackoff sets how the connection waits between attempts to connect
// again after it failed (default: grpc-go's backoff.DefaultConfig).
func WithBackoff(cfg backoff.Config) DialOption {
	return dialFunc(func(o *dialOptions) { o.backoff = cfg })
}

// WithConnectTimeout bounds how long Dial waits for the server to accept
// when the context has no earlier deadline (default 20 s).
func WithConnectTimeout(d time.Duration) DialOption {
	return dialFunc(func(o *dialOptions) { o.connectLimit = d })
}

// UnaryInterceptor sets the server's unary interceptor; it runs before any
// set with ChainUnaryInterceptor.
func UnaryInterceptor(i grpc.UnaryServerInterceptor) ServerOption {
	return serverFunc(func(o *serverOptions) { o.unary = append([]grpc.UnaryServerInterceptor{i}, o.unary...) })
}

// ChainUnaryInterceptor appends server unary interceptors; the first is
// outermost.
func ChainUnaryInterceptor(is ...grpc.UnaryServerInterceptor) ServerOption {
	return serverFunc(func(o *serverOptions) { o.unary = append(o.unary, is...) })
}

// StreamInterceptor sets the server's stream interceptor; it runs before
// any set with ChainStreamInterceptor.
func StreamInterceptor(i grpc.StreamServerInterceptor) ServerOption {
	return serverFunc(func(o *serverOptions) { o.stream = append([]grpc.StreamServerInterceptor{i}, o.stream...) })
}

// ChainStreamInterceptor appends server stream interceptors; the first is
// outermost.
func ChainStreamInterceptor(is ...grpc.StreamServerInterceptor) ServerOption {
	return serverFunc(func(o *serverOptions) { o.stream = append(o.stream, is...) })
}

// MaxConcurrentStreams limits the calls a client may have open at once on
// one connection, as grpc.MaxConcurrentStreams does: the limit is told to
// the client when it connects, and its further calls wait for one to end.
// A client that opens more breaks the protocol and loses the connection.
// The default is DefaultMaxConcurrentStreams; 0 is no limit.
func MaxConcurrentStreams(n uint32) ServerOption {
	return serverFunc(func(o *serverOptions) { o.maxStreams = n })
}

// DefaultMaxConcurrentStreams is the stream limit of a server without
// MaxConcurrentStreams: the smallest limit HTTP/2 (RFC 9113, 6.5.2)
// recommends that a server allow. grpc-go has no limit by default; a
// limit bounds what one client can make the server hold (each open stream
// may buffer up to its window plus a message being assembled).
const DefaultMaxConcurrentStreams = 100

// MaxConnections limits the connections a server keeps open through each
// of its listeners. A client that connects beyond it has its connection
// closed at once, with a GOAWAY saying why: its calls fail with
// Unavailable, naming the limit, as a refused TCP connection does in
// grpc-go. The default is
// DefaultMaxConnections; 0 is no limit. A connection costs the server a
// mapping, a reader and its streams' buffers; there is no HTTP/2
// counterpart (a TCP server bounds its accept queue instead).
func MaxConnections(n int) ServerOption {
	return serverFunc(func(o *serverOptions) { o.maxConns = n })
}

// DefaultMaxConnections is the connection limit per listener of a server
// without MaxConnections.
const DefaultMaxConnections = 1024

// MaxRecvMsgSize sets the largest request message the server accepts
// (default 4 MiB).
func MaxRecvMsgSize(n int) ServerOption {
	return serverFunc(func(o *serverOptions) { o.maxRecvSize = n })
}

// MaxSendMsgSize sets the largest response message the server sends
// (default unlimited).
func MaxSendMsgSize(n int) ServerOption {
	return serverFunc(func(o *serverOptions) { o.maxSendSize = n })
}

// DefaultMaxHeaderListSize is the largest header block (request headers,
// response headers, trailers) a side accepts without MaxHeaderListSize or
// WithMaxHeaderListSize: grpc-go's default header list limit, 16 MiB.
const DefaultMaxHeaderListSize = pool.DefaultHeaderLimit

// MaxHeaderListSize sets the largest request header block the server
// accepts, as grpc.MaxHeaderListSize does (default
// DefaultMaxHeaderListSize; 0 is the default). The server announces it to
// each client when it connects, and a call whose metadata is larger fails
// at the client with Internal "header list size to send violates the
// maximum size (<n> bytes) set by server", grpc-go's error, before
// anything is sent. Sizes count the encoded metadata (each key and value
// with its length, PROTOCOL.md 11.11), where HTTP/2 counts each field's
// name and value and 32 more: within a few bytes per pair the same. It
// applies to ServeGRPC's grpc.Server too when set.
func MaxHeaderListSize(n uint32) ServerOption {
	return serverFunc(func(o *serverOptions) { o.maxHeader = n })
}

// WithMaxHeaderListSize sets the largest response header block (headers,
// and trailers with the status) the client accepts, as
// grpc.WithMaxHeaderListSize does (default DefaultMaxHeaderListSize; 0 is
// the default). The client announces it to the server when it connects: a
// response whose headers or trailers are larger ends with Internal, and
// the handler's grpc.SendHeader (or send) fails as in grpc-go.
func WithMaxHeaderListSize(n uint32) DialOption {
	return dialFunc(func(o *dialOptions) { o.maxHeader = n })
}

// ForceServerCodecV2 makes the server use codec for every call, whatever
// content subtype the client asked for, as grpc.ForceServerCodecV2 does.
func ForceServerCodecV2(codec encoding.CodecV2) ServerOption {
	return serverFunc(func(o *serverOptions) { o.codec = codec })
}

// UnknownServiceHandler makes the server hand every call of a service or
// method it has not registered to h, as grpc.UnknownServiceHandler does,
// instead of answering it Unimplemented: as a bidirectional stream,
// whatever the method's kind, with a nil srv. The handler finds the full
// method name with grpc.Method(ctx) or grpc.MethodFromServerStream, and
// the call's codec in the "content-type" of its incoming metadata
// (application/grpc, or application/grpc+<subtype>). Its stream's RecvMsg
// and SendMsg use the call's codec, or the one ForceServerCodecV2 sets:
// the notnets-bytes codec there (encoding.GetCodecV2(BytesCodecName))
// makes them take *Bytes and leaves the messages undecoded, for a proxy
// (Forward). The server's stream interceptors run around h, with
// StreamServerInfo's IsClientStream and IsServerStream both true; unary
// interceptors do not. Calls over ServeGRPC's HTTP/2 go to h too. A
// malformed method name is still Unimplemented.
func UnknownServiceHandler(h grpc.StreamHandler) ServerOption {
	return serverFunc(func(o *serverOptions) {
		o.unknown = &grpc.StreamDesc{StreamName: "unknown_service_handler", Handler: h, ClientStreams: true, ServerStreams: true}
	})
}

// Balancing is how a ClientConn spreads its calls over the instances of
// its service.
type Balancing = balance.Policy

// The balancing policies.
const (
	// LeastRequest, the default, sends each call to the less loaded of
	// two instances chosen at random, load being the calls in flight and
	// queued that each instance publishes in the pool, per worker thread
	// (gRPC's least_request policy, on the servers' own counts).
	LeastRequest Balancing = balance.LeastLoad
	// RoundRobin sends calls to the connected instances in turn.
	RoundRobin Balancing = balance.RoundRobin
	// PickFirst sends every call to one instance (the first by name) while
	// it is connected.
	PickFirst Balancing = balance.PickFirst
)

// WithBalancing sets how calls are spread over the instances of the
// service (LeastRequest by default).
func WithBalancing(b Balancing) DialOption { return dialFunc(func(o *dialOptions) { o.policy = b }) }

// WithDefaultServiceConfig takes the balancing policy from a gRPC service
// config in JSON, as grpc.WithDefaultServiceConfig does: the first policy
// of its loadBalancingConfig that notnets knows ("least_request",
// "round_robin", "pick_first"), or its loadBalancingPolicy. Other fields
// are ignored. A config that is not valid JSON is ignored too; NewClient
// and Dial then fail with InvalidArgument.
func WithDefaultServiceConfig(js string) DialOption {
	return dialFunc(func(o *dialOptions) {
		p, err := policyFromServiceConfig(js)
		if err != nil {
			o.badConfig = err
			return
		}
		o.policy = p
	})
}

// WithFallback makes the ClientConn send calls over a grpc-go client of
// target (HTTP/2, with grpc-go's own resolver and balancer, made with
// grpc.NewClient(target, opts...)) whenever no instance of the service is
// connected in the pool, and over the pool again as soon as one is. The
// ClientConn's interceptors run once for either path; the path a call
// took shows in its peer address (Network "notnets" or the fallback's,
// "tcp") and in FallbackCalls. Stats handlers and per-RPC credentials of
// the fallback are given in opts, as to grpc.NewClient.
func WithFallback(target string, opts ...grpc.DialOption) DialOption {
	return dialFunc(func(o *dialOptions) { o.fallback = &fallbackConfig{target: target, opts: opts} })
}

// WithServerUIDs makes the ClientConn use only instances of the service
// run by one of these users: their listener files must belong to one of
// them, and the kernel must report one of them for the server process
// when the connection is made. Instances of other users (in a pool shared
// by a group, WithPoolGroup) are never called. It is the notnets
// counterpart of checking a TLS server name. In a cross-host pool
// (WithCrossHost) there is no kernel to ask: the check rests on the
// listener file's owner alone (docs/SECURITY.md).
func WithServerUIDs(uids ...uint32) DialOption {
	return dialFunc(func(o *dialOptions) { o.serverUIDs = append([]uint32{}, uids...) })
}

// WithServerGIDs makes the ClientConn use only instances whose server
// process runs with one of these groups (primary or supplementary), as
// the kernel reports it when the connection is made.
func WithServerGIDs(gids ...uint32) DialOption {
	return dialFunc(func(o *dialOptions) { o.serverGIDs = append([]uint32{}, gids...) })
}

// WithGRPCServerOptions adds options for the grpc.Server behind
// Server.ServeGRPC: grpc.Creds(credentials.NewTLS(cfg)) to serve TLS, or
// keepalive parameters, say. They apply after the options ServeGRPC
// derives from the server's own, so they win where both set the same
// thing (grpc.UnknownServiceHandler among them would stop ServeGRPC from
// serving services registered after its first call: use notnets'
// UnknownServiceHandler, which serves both paths). Interceptors added
// with grpc.ChainUnaryInterceptor or grpc.ChainStreamInterceptor run
// inside the server's, and one set with grpc.UnaryInterceptor or
// grpc.StreamInterceptor outside them. They do nothing to calls over the
// pool.
func WithGRPCServerOptions(opts ...grpc.ServerOption) ServerOption {
	return serverFunc(func(o *serverOptions) { o.grpcOpts = append(o.grpcOpts, opts...) })
}
