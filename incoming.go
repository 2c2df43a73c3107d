package notnets

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// Version is the version of this module; it ends the user agent that
// notnets clients send ("grpc-go/<grpc.Version> notnets/<Version>").
const Version = "0.1.0-dev"

// baseUserAgent is the user agent of a client without WithUserAgent.
const baseUserAgent = "grpc-go/" + grpc.Version + " notnets/" + Version

// WithUserAgent sets the user agent of the ClientConn's connections, as
// grpc.WithUserAgent does: s goes before notnets' own, and handlers find
// "<s> grpc-go/<grpc.Version> notnets/<Version>" under the "user-agent"
// key of their incoming metadata. The whole user agent may have at most
// 1024 bytes; NewClient and Dial refuse a longer one.
func WithUserAgent(s string) DialOption {
	return dialFunc(func(o *dialOptions) { o.userAgent = s })
}

// fullUserAgent returns the user agent that o's connections send.
func (o *dialOptions) fullUserAgent() (string, error) {
	ua := baseUserAgent
	if o.userAgent != "" {
		ua = o.userAgent + " " + ua
	}
	if len(ua) > pool.MaxUserAgent {
		return "", fmt.Errorf("notnets: user agent of %d bytes exceeds the limit of %d (WithUserAgent)", len(ua), pool.MaxUserAgent)
	}
	return ua, nil
}

// incomingKeys are the keys that grpc-go's server adds to the incoming
// metadata of every call, :authority, content-type and user-agent, which
// handlers log and route on.
//
// They do not cross per call. grpc-go's client sends them in every
// HEADERS frame (HPACK compresses the repeats); here the server knows
// them already: the authority is the service name of the listener, the
// content type follows from the request's content subtype, and the user
// agent comes once per connection, in its header (PROTOCOL.md 4). So a
// call carries no byte more than before, and the server builds each value
// once per connection. The incoming metadata of a call without metadata
// of its own is shared by the connection's calls (no allocation per
// call): metadata.FromIncomingContext and ValueFromIncomingContext hand
// handlers copies, never the map in the context, so no handler can change
// what another one sees. A call with metadata gets the three keys added
// to the map its headers were decoded into, which has room for them
// (frame.RequestHeaders.Decode), values shared likewise.
//
// Only the connection's reading role uses it (NewCall), one goroutine at
// a time.
type incomingKeys struct {
	authority []string // the service name
	userAgent []string // nil when the client sent none
	grpcType  []string // "application/grpc", for calls without a subtype
	plain     metadata.MD

	// The last content subtype seen, its content type and the metadata
	// of a call without its own: a connection's calls mostly use one.
	sub      string
	subType  []string
	subPlain metadata.MD
}

func newIncomingKeys(service, userAgent string) incomingKeys {
	k := incomingKeys{authority: []string{service}, grpcType: []string{"application/grpc"}}
	if userAgent != "" {
		k.userAgent = []string{userAgent}
	}
	k.plain = k.add(metadata.MD{}, k.grpcType)
	return k
}

// md returns the incoming metadata of the call whose headers are rh: the
// client's metadata with the three keys, which replace any of the same
// name the client sent, as grpc-go's client never sends them itself
// (user-agent is reserved there) and its server sets them from the
// request.
func (k *incomingKeys) md(rh *frame.RequestHeaders) metadata.MD {
	ctype, plain := k.grpcType, k.plain
	if s := rh.ContentSubtype; s != "" {
		if s != k.sub || k.subType == nil {
			k.sub, k.subType = s, []string{"application/grpc+" + s}
			k.subPlain = k.add(metadata.MD{}, k.subType)
		}
		ctype, plain = k.subType, k.subPlain
	}
	if rh.MD == nil {
		return plain
	}
	return k.add(rh.MD, ctype)
}

func (k *incomingKeys) add(md metadata.MD, ctype []string) metadata.MD {
	md[":authority"] = k.authority
	md["content-type"] = ctype
	if k.userAgent != nil {
		md["user-agent"] = k.userAgent
	}
	return md
}
