package pubsub

import (
	"fmt"
	"testing"
)

// IsDetached reports whether a connection is a reliable one between
// transports: no event says so, and the tests need to know.
func IsDetached(s *Service, hub, id string) bool {
	h, ok := s.hubs.Load(hub)
	if !ok {
		return false
	}
	c, ok := h.conns.Load(id)
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateDetached
}

// SetTestHooks makes every inbound message go through frame, and every
// outbound slice through write, for the test's duration.
func SetTestHooks(t *testing.T, frame, write func([]byte)) {
	testHookFrame.Store(&frame)
	testHookWrite.Store(&write)
	t.Cleanup(func() { testHookFrame.Store(nil); testHookWrite.Store(nil) })
}

// DescribeConns describes every registered connection's lifecycle state,
// for a test's failure message.
func DescribeConns(s *Service) []string {
	var out []string
	s.eachConn(func(c *conn) {
		c.mu.Lock()
		d := fmt.Sprintf("conn %s user %s kind %d state %d connected %v", c.id, c.userID, c.kind, c.state, c.connected)
		if c.rel != nil {
			d += fmt.Sprintf(" unacked %d/%dB", len(c.rel.unacked), c.rel.bytes)
		}
		w := c.w
		c.mu.Unlock()
		if w != nil {
			o := &w.out
			o.mu.Lock()
			d += fmt.Sprintf(" wire{nc %v upgraded %v ready %v flushing %v closing %v full %v closed %v size %d inflight %d}",
				w.nc != nil, w.upgraded.Load(), o.ready, o.flushing, o.closing, o.fullClose, o.closed, o.size, o.inflight)
			o.mu.Unlock()
		}
		out = append(out, d)
	})
	return out
}

// ConnectionIDs returns the ids of a hub's registered connections.
func ConnectionIDs(s *Service, hub string) []string {
	var out []string
	if h, ok := s.hubs.Load(hub); ok {
		h.conns.Range(func(id string, _ *conn) bool { out = append(out, id); return true })
	}
	return out
}
