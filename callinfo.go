package notnets

import (
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// callInfo is what the call options of one call add up to.
type callInfo struct {
	codec          encoding.CodecV2
	contentSubtype string
	maxRecv        int
	maxSend        int
	headers        []*metadata.MD
	trailers       []*metadata.MD
	peers          []*peer.Peer
	onFinish       []func(error)
	waitForReady   bool
	creds          credentials.PerRPCCredentials // grpc.PerRPCCredentials
}

// newCallInfo applies the connection's default call options, then the
// call's. grpc-go's CallOption interface has unexported methods, so options
// are recognised by their exported types; options that make no sense over
// shared memory (compression, authority) are ignored.
func newCallInfo(o *dialOptions, opts []grpc.CallOption) (*callInfo, error) {
	if len(opts) == 0 && len(o.callOptions) == 0 && o.plainCall != nil {
		return o.plainCall, nil // shared: nothing in it is written after this
	}
	if len(opts) == 1 && len(o.callOptions) == 0 && o.subtypeCalls != nil {
		if cs, ok := opts[0].(grpc.ContentSubtypeCallOption); ok {
			return o.subtypeCalls.get(o, cs)
		}
	}
	return buildCallInfo(o, opts)
}

// subtypeCalls shares the call info of calls whose only option is a
// content subtype (the common way to pick a codec, as for notnets.Bytes),
// so that such calls allocate none. At most maxSubtypeCalls are kept.
type subtypeCalls struct {
	mu sync.RWMutex
	m  map[string]*callInfo
}

const maxSubtypeCalls = 16

func (sc *subtypeCalls) get(o *dialOptions, cs grpc.ContentSubtypeCallOption) (*callInfo, error) {
	sc.mu.RLock()
	ci := sc.m[cs.ContentSubtype]
	sc.mu.RUnlock()
	if ci != nil {
		return ci, nil
	}
	ci, err := buildCallInfo(o, []grpc.CallOption{cs})
	if err != nil {
		return nil, err
	}
	sc.mu.Lock()
	if len(sc.m) < maxSubtypeCalls {
		sc.m[cs.ContentSubtype] = ci
	}
	sc.mu.Unlock()
	return ci, nil
}

func buildCallInfo(o *dialOptions, opts []grpc.CallOption) (*callInfo, error) {
	ci := &callInfo{maxRecv: o.maxRecvSize, maxSend: o.maxSendSize}
	for _, set := range [][]grpc.CallOption{o.callOptions, opts} {
		for _, opt := range set {
			switch v := opt.(type) {
			case grpc.ContentSubtypeCallOption:
				ci.contentSubtype = strings.ToLower(v.ContentSubtype)
			case grpc.ForceCodecV2CallOption:
				ci.codec = v.CodecV2
			case grpc.ForceCodecCallOption:
				ci.codec = codecV1{v.Codec}
			case grpc.HeaderCallOption:
				ci.headers = append(ci.headers, v.HeaderAddr)
			case grpc.TrailerCallOption:
				ci.trailers = append(ci.trailers, v.TrailerAddr)
			case grpc.PeerCallOption:
				ci.peers = append(ci.peers, v.PeerAddr)
			case grpc.MaxRecvMsgSizeCallOption:
				ci.maxRecv = v.MaxRecvMsgSize
			case grpc.MaxSendMsgSizeCallOption:
				ci.maxSend = v.MaxSendMsgSize
			case grpc.FailFastCallOption:
				ci.waitForReady = !v.FailFast
			case grpc.OnFinishCallOption:
				ci.onFinish = append(ci.onFinish, v.OnFinish)
			case grpc.PerRPCCredsCallOption:
				ci.creds = v.Creds
			}
		}
	}
	if ci.codec != nil {
		if ci.contentSubtype == "" {
			ci.contentSubtype = strings.ToLower(ci.codec.Name())
		}
		return ci, nil
	}
	name := ci.contentSubtype
	if name == "" {
		name = proto.Name
	}
	if ci.codec = encoding.GetCodecV2(name); ci.codec == nil {
		return nil, status.Errorf(codes.Internal, "grpc: no codec registered for content-subtype %s", name)
	}
	return ci, nil
}

// codecV1 adapts a deprecated encoding.Codec to CodecV2.
type codecV1 struct{ c encoding.Codec }

func (c codecV1) Marshal(v any) (mem.BufferSlice, error) {
	b, err := c.c.Marshal(v)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (c codecV1) Unmarshal(data mem.BufferSlice, v any) error {
	return c.c.Unmarshal(data.Materialize(), v)
}

func (c codecV1) Name() string { return c.c.Name() }
