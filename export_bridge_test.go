package notnets

import (
	"context"

	"google.golang.org/grpc/connectivity"
)

// WaitBridgeReady waits until every ClientConn of b has an instance of its
// pool service connected, for tests that start a service after its
// bridge: the bridge forwards calls fail-fast, whatever the caller asked
// for (WaitForReady does not cross HTTP/2).
func WaitBridgeReady(ctx context.Context, b *Bridge) error {
	for _, cc := range b.conns {
		for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
			if !cc.WaitForStateChange(ctx, s) {
				return ctx.Err()
			}
		}
	}
	return nil
}
