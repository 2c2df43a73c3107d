package notnets

import (
	"context"

	"google.golang.org/grpc"
)

// Fallback: with WithFallback, a call made while no instance of the
// service is connected in the pool goes over a grpc-go client (HTTP/2)
// instead, below the ClientConn's interceptors, so that they run once
// whichever way the call goes. As soon as an instance is connected, new
// calls go to the pool again; calls already on either path finish there.

// useFallback reports whether a new call goes over the fallback: there is
// one, the pool has been read and no instance is usable.
func (cc *ClientConn) useFallback() bool {
	if cc.fallback == nil {
		return false
	}
	for _, e := range cc.pickable() {
		if e.Usable() && e.inst.Open() {
			return false
		}
	}
	cc.mu.Lock()
	settled := cc.firstSettled()
	cc.mu.Unlock()
	return settled
}

func (cc *ClientConn) invokeFallback(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cc.fellBack.Add(1)
	return cc.fallback.Invoke(ctx, method, args, reply, opts...)
}

func (cc *ClientConn) streamFallback(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cc.fellBack.Add(1)
	return cc.fallback.NewStream(ctx, desc, method, opts...)
}
