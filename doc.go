// Package notnets carries gRPC calls between processes through shared
// memory instead of the network, after the NotNets design ("NotNets:
// Accelerating Microservices by Bypassing the Network").
//
// Services keep the stubs that protoc-gen-go-grpc generated for them: a
// [*Server] is a grpc.ServiceRegistrar, so pb.RegisterFooServer takes it,
// and a [*ClientConn] is a grpc.ClientConnInterface, so pb.NewFooClient
// takes it. A connection is a segment of shared memory holding a
// single-producer/single-consumer ring for each direction and, unless
// [WithArenaSize](0), a heap for each direction. Both sides poll the rings:
// a call crosses no socket, no HTTP/2 and no TLS, and takes no lock in
// shared memory. An idle side polls for its spin period ([WithSpin],
// default [DefaultSpin]), then blocks on a futex that the writer wakes
// (with [WithPollOnly], and in a cross-host pool, it sleeps and polls
// again instead).
//
// Metadata, status details, deadlines, cancellation, interceptors, codecs,
// stats handlers, per-RPC credentials, flow control and all four kinds of
// call work as in grpc-go, with the differences listed below, and
// grpc-go's own services (health, reflection) register on a [Server] as on
// a grpc.Server.
//
// # Server and client
//
// A server publishes a name in a memory pool with [Listen] and serves it;
// a client connects to that name with [Dial]:
//
//	// Server process.
//	lis, err := notnets.Listen("greeter") // publishes "greeter" in the pool
//	if err != nil {
//		log.Fatal(err)
//	}
//	srv := notnets.NewServer()
//	pb.RegisterGreeterServer(srv, &server{}) // generated code, unchanged
//	go srv.Serve(lis)
//
//	// Client process.
//	cc, err := notnets.Dial(ctx, "greeter") // returns once the server has accepted
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer cc.Close()
//	r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "world"})
//
// # Services, instances and fallback
//
// Each [Listen] of a name starts one more instance of that service; a
// [ClientConn] connects to every live instance and balances its calls by
// the load each publishes in the pool ([WithBalancing]; least request by
// default), sees instances come and go within a wake-up, and sends no new
// call to one that drains. [WithExclusive] makes Listen refuse a second
// instance. [WithFallback] sends calls over a grpc.ClientConn while the
// pool has no instance of the service, and [Server.ServeGRPC] serves the
// same registrations over HTTP/2, so one code path reaches a service
// wherever it runs. [WithServerUIDs] and [WithServerGIDs] keep a client to
// instances of trusted users.
//
// Options follow grpc-go's names: [UnaryInterceptor],
// [ChainUnaryInterceptor], [MaxRecvMsgSize], [StatsHandler] and
// [MaxConcurrentStreams] for a server; [WithChainUnaryInterceptor],
// [WithMaxRecvMsgSize], [WithDefaultCallOptions], [WithPerRPCCredentials]
// and [WithStatsHandler] for a client; calls take grpc-go's own call
// options. [Server.Stop] and [Server.GracefulStop] end serving as in
// grpc-go; GracefulStop tells clients to start no new calls (a GOAWAY
// frame) and waits for the calls in progress.
//
// The same server serves its services to clients outside the pool too,
// as ordinary gRPC over HTTP/2, with one registration: [Server.ServeGRPC]
// serves on a net.Listener through a grpc.Server that gets the server's
// interceptors, stats handlers and limits, and the grpc.ServerOptions of
// [WithGRPCServerOptions] (grpc.Creds for TLS, say). A handler tells
// which path a call took by its peer.Addr: a [*Addr] over the pool, the
// TCP address of the client over HTTP/2. Stop and GracefulStop end both.
//
//	go srv.Serve(lis)         // the pool
//	go srv.ServeGRPC(tcpLis)  // HTTP/2, for grpc.NewClient("host:port", ...)
//
// # The drop-in tier
//
// Code typed on grpc-go's concrete types (*grpc.ClientConn, *grpc.Server)
// gets shared memory too, at HTTP/2's cost: serve the grpc.Server on
// [ListenConn] and give grpc-go's client one dial option,
// grpc.WithContextDialer([ContextDialer]()). HTTP/2 then crosses the same
// rings and doorbells as a byte stream, with no socket on the data path,
// and everything grpc-go offers keeps working (service config,
// keepalive, channelz, grpc-gateway). The native tier above skips
// HTTP/2, a goroutine hand-off and the copies; [ListenConn] says what
// each tier gives.
//
//	go grpcServer.Serve(lis) // lis, err := notnets.ListenConn("greeter")
//	cc, err := grpc.NewClient("passthrough:///greeter",
//		grpc.WithContextDialer(notnets.ContextDialer()),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
//
// A peer whose process exits costs its calls Unavailable within about
// 100 ms on one host (in a pool that is not cross-host, and in the same
// pid namespace); so does a peer whose heartbeat
// stands still for the liveness timeout ([WithLivenessTimeout], default
// [DefaultLivenessTimeout]). A
// [ClientConn] whose connection is lost, or whose server sent GOAWAY,
// connects again in the background with grpc-go's backoff ([WithBackoff]).
//
// # Pools
//
// A pool is a directory: $NOTNETS_POOL when set, else notnets-<uid> in
// /dev/shm (in [os.TempDir] where there is no /dev/shm). [WithPool] names
// it in code; it is both a [DialOption] and a [ListenOption], and both
// sides must name the same pool. [Listen] creates the directory when it is
// missing (mode 0700: the pool of one user); [Dial] fails with Unavailable
// when it is missing. Services that run as different users share a pool through a
// group: [WithPoolGroup] on both Listen and Dial (directory 03770: setgid and sticky; files
// 0660). A pool directory that is a symbolic link, writable by others, or
// owned by an unexpected user is refused with an error that says why
// (PermissionDenied at Dial). Files left by processes that died are removed
// at Listen and at Dial, and by the pool clean command of the repository's
// notnets tool (go run ./cmd/notnets pool clean).
//
// On one host a connection is set up through a Unix socket next to the
// listener (<name>.sock): the client hands over its segment as a sealed
// memfd that no other process can open, and each side learns the other's
// credentials from the kernel. A pool shared across hosts (DAX or CXL
// memory) is made cross-host once, by [WithCrossHost] on the first Listen
// or `notnets pool init -cross-host DIR`: a marker in the pool then makes
// every process that opens it treat its peers as remote (no futex, no
// socket, no pid; heartbeats alone), whatever its own options say.
//
// # Authorization
//
// notnets has no TLS; the kernel stands in for it. A server finds its
// caller's uid, gid and pid in peer.FromContext(ctx).AuthInfo, an
// [AuthInfo]; a client finds the server's with grpc.Peer. [AllowUIDs],
// [AllowGIDs] and [WithAuthorizer] restrict who may call: a refused call
// ends with PermissionDenied before any interceptor or handler runs, and
// [Server.RefusedCalls] counts it. Each side maps the regions of the
// segment that its peer writes read-only. docs/SECURITY.md in the
// repository states the threat model.
//
// # Large messages and Bytes
//
// A message of [ArenaThreshold] bytes or more is written once into the
// sender's heap (protobuf marshals straight into it) and crosses as a
// reference; a message that finds the heap full, or is larger than it,
// goes through the ring instead. Nothing changes for protobuf users.
// [WithArenaSize] sets the heaps' size for a client's connections (default
// [DefaultArenaSize]; 0 for none).
//
// To skip serialization too, send and receive [*Bytes] with the
// notnets-bytes codec ([BytesCodecName]):
//
//	in := cc.Alloc(n) // n bytes in the connection's heap
//	fill(in.Data())   // build the request where the server will read it
//	var out notnets.Bytes
//	err := cc.Invoke(ctx, "/svc/Method", in, &out, grpc.CallContentSubtype(notnets.BytesCodecName))
//	use(out.Data())   // the reply, read in place in the server's heap
//	out.Free()        // required: hands the memory back to the server
//
// The codec is also registered with grpc-go's codec registry, so a service
// written this way works over grpc-go as well.
//
// The lifetime rules of a Bytes:
//
//   - A received Bytes (the reply of Invoke, a message from RecvMsg, a
//     request a handler decodes) views the message where it lies: in the
//     peer's heap when the message crossed by reference. It is valid until
//     [Bytes.Free]: do not keep Data, or anything that points into it, past
//     Free.
//   - Free hands the memory back to the sender. A received Bytes that is
//     never freed keeps its block from the sender for the life of the
//     connection, and keeps the connection's segment mapped after it
//     closes. Free may be called more than once.
//   - The peer can still write the memory you are reading: treat received
//     bytes as untrusted input that may change under you.
//   - Sending a Bytes (as a request, with SendMsg, or by returning it from
//     a handler) gives it to the transport: do not use it afterwards. It
//     is empty once sent.
//   - [ClientConn.Alloc] returns memory in the client's heap, and [Alloc]
//     memory in the heap of the connection that carries a handler's call,
//     to fill and send without a copy. Below ArenaThreshold, or when there
//     is no heap or it has no room, they return ordinary memory, which is
//     sent the usual way. Heap memory is not zeroed. A Bytes from Alloc that is not
//     sent must be freed.
//   - [ClientConn.AllocInto] refills a Bytes, freeing what it held first;
//     since a Bytes is empty once sent, a client that reuses one allocates
//     nothing per call for its requests.
//   - [NewBytes] wraps ordinary memory, which is copied when sent.
//   - A Bytes is not safe for concurrent use.
//
// [WithViewChecks], meant for tests and debugging, makes a read of a Bytes
// after Free fault at once instead of reading another message's bytes. Any
// encoding.CodecV2 receives the heap views as its mem.BufferSlice; a codec
// that keeps a buffer must Ref it, as with grpc-go.
//
// # Bridges and proxies
//
// A [Bridge] serves services of the pool as ordinary gRPC over HTTP/2 on a
// net.Listener (a Unix socket, a loopback port), for grpcurl, health
// probes and clients that are not notnets; a [ReverseBridge] puts a gRPC
// service of the network in the pool. Both forward every call undecoded,
// with its metadata, deadline, cancellation, headers, trailers and
// status. The repository's notnets tool runs them (notnets bridge).
//
// They are built on [UnknownServiceHandler], grpc-go's
// grpc.UnknownServiceHandler for a notnets server, and [Forward], a
// handler that proxies every call it gets to a grpc.ClientConnInterface,
// with the notnets-bytes codec forced on the server
// ([ForceServerCodecV2]) so that messages stay raw [*Bytes].
//
// # Differences from grpc-go
//
//   - The target of Dial is a service name in a pool, not an address
//     ([NewClient] also takes host:port and dns:/// targets, whose host
//     names the service); the pool is the resolver, and balancing is by
//     the load instances publish, not by grpc-go's balancers. [Server.Serve]
//     takes a [*Listener], not a net.Listener ([Server.ServeGRPC] takes
//     one, for gRPC over HTTP/2).
//   - Dial connects eagerly: it returns once the server has accepted, and
//     fails with Unavailable if no instance has the name. Without a
//     deadline on its context it waits at most the connect timeout
//     ([WithConnectTimeout]). After that, while a lost connection is being
//     replaced, calls fail fast with Unavailable, or wait with
//     grpc.WaitForReady(true); a call none of whose frames went out starts
//     again on the next connection.
//   - A ClientConn is never Idle: [ClientConn.GetState] reports
//     Connecting, Ready, TransientFailure or Shutdown, and
//     [ClientConn.Connect] does nothing. [ClientConn.WaitForStateChange]
//     and [ClientConn.ResetConnectBackoff] work as on a grpc.ClientConn.
//   - Client interceptors receive a nil *grpc.ClientConn: grpc-go's
//     interceptor types name that concrete type, which a ClientConn is
//     not.
//   - Call options are recognised by their exported types, since
//     grpc.CallOption's methods are unexported: grpc.CallContentSubtype,
//     grpc.ForceCodec, grpc.ForceCodecV2, grpc.Header, grpc.Trailer,
//     grpc.Peer, grpc.MaxCallRecvMsgSize, grpc.MaxCallSendMsgSize,
//     grpc.WaitForReady (and grpc.FailFast), grpc.OnFinish and
//     grpc.PerRPCCredentials. Others, such as grpc.UseCompressor,
//     grpc.CallAuthority and the deprecated grpc.CallCustomCodec, are
//     ignored.
//   - Nothing is compressed: compression options are ignored. In handlers,
//     grpc.SetSendCompressor and grpc.ClientSupportedCompressors fail over
//     notnets (grpc-go requires its own internal stream type); use
//     [SetSendCompressor] and [ClientSupportedCompressors], which answer
//     as grpc-go does for a client that advertises no compressor, and
//     hand calls served by [Server.ServeGRPC] to grpc-go's.
//   - A handler's incoming metadata has :authority (the service name,
//     not a host:port), content-type and user-agent, as in grpc-go;
//     [WithUserAgent] begins the user agent. Header lists (request
//     headers, response headers, trailers) may reach 16 MiB, grpc-go's
//     default ([MaxHeaderListSize], [WithMaxHeaderListSize]), counted in
//     encoded bytes rather than HTTP/2's 32 more per field.
//   - Stats handlers see grpc-go's events, but wire lengths are the
//     message bytes, without the 5-byte prefix and without compression. A
//     unary call's client sees InTrailer before InPayload: it waits for the
//     status, then decodes. OutHeader carries the context's metadata,
//     never per-RPC credentials.
//   - A peer's credentials.AuthInfo is an [AuthInfo] (uid, gid, pid), not
//     TLS state. A notnets connection counts as PrivacyAndIntegrity, so
//     per-RPC credentials that require transport security (OAuth tokens,
//     say) may be sent.
//   - There is no keepalive: heartbeats and, on one host, the peer's pid
//     tell a dead peer ([WithLivenessTimeout]).
//   - [Server.RegisterService] panics where grpc-go exits: on a duplicate
//     service, or an implementation that does not satisfy the service.
//   - grpc-go's channelz service does not know notnets servers: register
//     package github.com/notnets/notnets/channelz's instead, which adds
//     them, their listeners and connections, and their calls and streams
//     to grpc-go's entities.
package notnets
