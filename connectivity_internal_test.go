package notnets

import (
	"context"
	"testing"

	"google.golang.org/grpc/connectivity"
)

// Connectivity state changes seen from inside the package.

// TestWaitForStateChangeSeesAFlip: WaitForStateChange
// (client.go) wakes on the state channel but then compares the state
// again; if the state went away from source and came back before the
// waiter ran (READY -> TRANSIENT_FAILURE -> CONNECTING -> READY: a lost
// connection replaced at once, the first retry has no backoff), it waits
// on, and the change is never reported. grpc-go returns true once the
// channel is closed.
func TestWaitForStateChangeSeesAFlip(t *testing.T) {
	_, dir := modeServe(t, "rv3state", "")
	cc := dialInProcess(t, "rv3state", dir)
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &modeStateProbe{Context: base, waits: make(chan struct{}, 8)}
	res := make(chan bool, 1)
	go func() { res <- cc.WaitForStateChange(p, connectivity.Ready) }()
	<-p.waits // the waiter holds READY's channel
	cc.mu.Lock()
	cc.setState(connectivity.TransientFailure)
	cc.setState(connectivity.Connecting)
	cc.setState(connectivity.Ready)
	cc.mu.Unlock()
	select {
	case ok := <-res:
		if !ok {
			t.Error("WaitForStateChange reported no change")
		}
	case <-p.waits:
		cancel()
		<-res
		t.Error("READY -> TRANSIENT_FAILURE -> CONNECTING -> READY: WaitForStateChange(READY) waits on and misses the change")
	}
}

// TestResetBackoffWhileReadyLeavesNoToken: ResetConnectBackoff on a READY
// ClientConn leaves a token in retryNow; the next time the connection is
// lost and the first retry fails, reconnectLoop skips its backoff wait.
// grpc-go's reset affects only a wait in progress (and the backoff index).
func TestResetBackoffWhileReadyLeavesNoToken(t *testing.T) {
	_, dir := modeServe(t, "rv3reset", "")
	cc := dialInProcess(t, "rv3reset", dir)
	cc.ResetConnectBackoff()
	if n := len(cc.retryNow); n != 0 {
		t.Errorf("ResetConnectBackoff while READY left %d pending retry token(s) for a later reconnectLoop", n)
	}
}
