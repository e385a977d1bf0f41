package pubsub

import "fmt"

// DescribeConns describes every registered connection's lifecycle state,
// for a review test's failure message.
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
