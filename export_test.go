package pubsub

import "testing"

// IsDetached reports whether a connection is a reliable one between
// transports: no event says so, and the tests need to know.
func IsDetached(s *Service, hub, id string) bool {
	h, ok := s.hubs.Load(hub)
	if !ok {
		return false
	}
	c, ok := h.conns.Load(id)
	return ok && c.isDetached()
}

// SetTestHooks makes every inbound message go through frame, and every
// outbound slice through write, for the test's duration.
func SetTestHooks(t *testing.T, frame, write func([]byte)) {
	testHookFrame.Store(&frame)
	testHookWrite.Store(&write)
	t.Cleanup(func() { testHookFrame.Store(nil); testHookWrite.Store(nil) })
}
