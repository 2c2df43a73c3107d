package notnets

// HeapRefs returns how many messages cc's current connection has sent and
// received as heap references, for tests in package notnets_test.
func HeapRefs(cc *ClientConn) (sent, recv uint64) {
	c := cc.conn()
	return c.refsSent.Load(), c.refsRecv.Load()
}

// SizeName names a message size in benchmarks: 16B, 64KiB, 1MiB.
var SizeName = sizeName

// SegmentPath returns the file name of cc's connection segment: empty for
// a memfd handed over through the listener's socket.
func SegmentPath(cc *ClientConn) string { return cc.conn().seg.Path }
