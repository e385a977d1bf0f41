package pubsub

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// This file owns group streaming (spec §6.1): the streams a connection
// publishes to its groups. A stream start opens one; each streamData with
// the next sequence id is published as a group message carrying the
// stream's fragment (fan-out as for any group message, encoded once); a
// streamEnd, the publisher's disconnect, a revoked permission or the idle
// timeout ends it with a terminal fragment. JSON subprotocols only: the
// protobuf ones have no frames for stream data.

// Defaults of the stream limits of Config.
const (
	DefaultMaxStreamsPerConnection = 100
	DefaultMaxStreamsPerGroup      = 1000
	// DefaultStreamIdleTimeout is the idle timeout of a stream whose start
	// names none (spec §6.1).
	DefaultStreamIdleTimeout = 300 * time.Second
	// MaxStreamIdleTimeout bounds a stream start's idleTimeoutMs.
	MaxStreamIdleTimeout = time.Hour
)

// streamTransientError is the streamNack name of a fragment that may be
// sent again (spec §6.2).
const streamTransientError = "TransientError"

// outStream is one stream a connection publishes.
//
// Its fields are touched by the connection's read loop (data, end), the
// stream's idle timer and the session's end. mu serialises them, and is
// held while a fragment is published, so that a terminal fragment never
// overtakes a data fragment. It is taken under no other lock of ours; the
// publish under it takes the fan-out's (lock order in lifecycle.go).
type outStream struct {
	id     string
	group  string
	noEcho bool
	idle   time.Duration
	// last is when the stream last had a frame (Unix nanoseconds), read by
	// its idle timer.
	last atomic.Int64

	mu   sync.Mutex
	next uint64 // the sequence id expected next
	// gap: a fragment was refused (streamNack) and next was not published
	// since; an end then would hide the hole from receivers.
	gap   bool
	ended bool
	timer *time.Timer
}

// streamSet is a connection's open streams. mu guards the map; only
// groupStreams.mu, a leaf, is taken while it is held.
type streamSet struct {
	mu     sync.Mutex
	open   map[string]*outStream
	closed bool // the session ended: no stream opens any more
}

// groupStreams counts a hub's open streams per group (this node's), to
// bound them. mu is a leaf.
type groupStreams struct {
	mu sync.Mutex
	n  map[string]int
}

func (g *groupStreams) add(group string, limit int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n[group] >= limit {
		return false
	}
	if g.n == nil {
		g.n = make(map[string]int)
	}
	g.n[group]++
	return true
}

func (g *groupStreams) remove(group string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n[group]--; g.n[group] <= 0 {
		delete(g.n, group)
	}
}

// handleStream answers a group streaming frame, on the read loop. A start
// or data fragment over the connection's message rate is refused (streamEnd
// and keepalives are not counted: they free or keep what is held).
func (c *conn) handleStream(req protocol.Request) {
	rateLimited := false
	if req.Type == protocol.StreamStart || req.Type == protocol.StreamData && !req.Stream.KeepAlive {
		if rateLimited = !c.rate.allow(); rateLimited {
			c.rateLimited()
		}
	}
	switch req.Type {
	case protocol.StreamStart:
		if rateLimited {
			c.sendStreamClosed(req.StreamID, protocol.AckTooManyRequests, fmt.Sprintf("The client sends more than %d messages per second.", c.svc.cfg.MaxMessagesPerSecond))
			return
		}
		c.startStream(req)
	case protocol.StreamData, protocol.StreamEnd:
		s := c.lookupStream(req.StreamID)
		switch {
		case s == nil:
			c.sendStreamNotFound(req.StreamID)
		case req.Stream.Problem != "":
			c.endStream(s, &protocol.StreamError{Name: protocol.StreamCancelled, Message: req.Stream.Problem}, protocol.AckBadRequest)
		case req.Type == protocol.StreamEnd:
			c.streamEnd(s, req.Stream.Error)
		case !c.perms.allows(PermissionSendToGroup, s.group):
			// Keepalives too: they would hold the stream open.
			c.endStream(s, &protocol.StreamError{Name: protocol.AckForbidden, Message: "The publisher lost its permission to send to the group."},
				protocol.AckForbidden)
		default:
			s.last.Store(time.Now().UnixNano())
			if !req.Stream.KeepAlive {
				c.streamData(s, req, rateLimited)
			}
		}
	}
}

// streamEnd ends s as its publisher asked, with e (nil: normally), unless
// a refused fragment is still missing: then with an error.
func (c *conn) streamEnd(s *outStream, e *protocol.StreamError) {
	s.mu.Lock()
	gap, next := s.gap, s.next
	s.mu.Unlock()
	if gap && e == nil {
		msg := fmt.Sprintf("The stream ended with fragment %d missing.", next)
		c.endStream(s, &protocol.StreamError{Name: protocol.StreamCancelled, Message: msg}, protocol.AckBadRequest)
		return
	}
	c.endStream(s, e, "")
}

// startStream opens a stream and answers streamAck expecting 1, or
// streamClosed with why it cannot open.
func (c *conn) startStream(req protocol.Request) {
	refuse := func(name, msg string) { c.sendStreamClosed(req.StreamID, name, msg) }
	if req.Stream.Problem != "" {
		refuse(protocol.AckBadRequest, req.Stream.Problem)
		return
	}
	if !c.perms.allows(PermissionSendToGroup, req.Group) {
		refuse(protocol.AckForbidden, fmt.Sprintf("The client does not have permission to send to group '%s'.", req.Group))
		return
	}
	idle := DefaultStreamIdleTimeout
	if ms := req.Stream.IdleTimeoutMs; ms > 0 {
		if ms > uint64(MaxStreamIdleTimeout/time.Millisecond) {
			refuse(protocol.AckBadRequest, fmt.Sprintf("idleTimeoutMs must be at most %d.", MaxStreamIdleTimeout/time.Millisecond))
			return
		}
		idle = time.Duration(ms) * time.Millisecond
	}
	if old := c.lookupStream(req.StreamID); old != nil {
		if old.group == req.Group {
			// A start sent again: answered as the first was, with what
			// the stream expects now.
			old.mu.Lock()
			next := old.next
			old.mu.Unlock()
			c.sendStreamAck(old.id, next)
			return
		}
		refuse(protocol.AckBadRequest, fmt.Sprintf("The stream '%s' is already open to another group.", req.StreamID))
		return
	}
	s := &outStream{id: req.StreamID, group: req.Group, noEcho: req.NoEcho, idle: idle, next: 1}
	s.last.Store(time.Now().UnixNano())

	c.streams.mu.Lock()
	switch {
	case c.streams.closed:
		c.streams.mu.Unlock()
		return // the session ended; nothing more is answered
	case len(c.streams.open) >= c.svc.cfg.MaxStreamsPerConnection:
		c.streams.mu.Unlock()
		refuse(protocol.AckBadRequest, fmt.Sprintf("The connection has %d open streams, the most it may have.", c.svc.cfg.MaxStreamsPerConnection))
		return
	case !c.hub.streams.add(req.Group, c.svc.cfg.MaxStreamsPerGroup):
		c.streams.mu.Unlock()
		refuse(protocol.AckBadRequest, fmt.Sprintf("The group '%s' has %d open streams, the most it may have.", req.Group, c.svc.cfg.MaxStreamsPerGroup))
		return
	}
	if c.streams.open == nil {
		c.streams.open = make(map[string]*outStream)
	}
	c.streams.open[s.id] = s
	c.svc.openStreams.Add(1) // counted before it can be found, as in the group's count
	c.streams.mu.Unlock()
	s.mu.Lock()
	if !s.ended { // the session may have ended it already
		s.timer = time.AfterFunc(idle, func() { c.streamIdle(s) })
	}
	s.mu.Unlock()
	c.sendStreamAck(s.id, 1)
}

func (c *conn) lookupStream(id string) *outStream {
	c.streams.mu.Lock()
	defer c.streams.mu.Unlock()
	return c.streams.open[id]
}

// streamData publishes a data fragment if it is the one expected: a lower
// sequence id is a duplicate (not published again; the expected id is
// reported again), a higher one a gap (streamNack).
func (c *conn) streamData(s *outStream, req protocol.Request, rateLimited bool) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		c.sendStreamNotFound(s.id)
		return
	}
	seq, next := req.Stream.SequenceID, s.next
	switch {
	case rateLimited:
		// Ended, not nacked: the official client does not send a nacked
		// fragment again, and its stream would go on with a hole.
		s.mu.Unlock()
		msg := fmt.Sprintf("The publisher sent more than %d messages per second.", c.svc.cfg.MaxMessagesPerSecond)
		c.endStream(s, &protocol.StreamError{Name: protocol.StreamCancelled, Message: msg}, protocol.AckTooManyRequests)
		return
	case seq < next:
		s.mu.Unlock()
		c.sendStreamAck(s.id, next)
		return
	case seq > next:
		s.gap = true
		s.mu.Unlock()
		c.sendStreamNack(s.id, next, protocol.StreamInvalidSequenceID, fmt.Sprintf("Expected streamSequenceId %d, got %d.", next, seq))
		return
	}
	err := c.svc.publishFromClient(c.streamCommand(s, &protocol.StreamInfo{ID: s.id, Sequence: seq}, req.DataType, req.Data))
	if err == nil {
		s.next++
		s.gap = false // every fragment below next was published
	} else {
		s.gap = true
	}
	next = s.next
	s.mu.Unlock()
	if err != nil {
		c.sendStreamNack(s.id, next, streamTransientError, err.Error())
		return
	}
	c.sendStreamAck(s.id, next)
}

// streamCommand is a stream fragment as a group send.
func (c *conn) streamCommand(s *outStream, info *protocol.StreamInfo, t DataType, data []byte) *command {
	cmd := &command{
		Op:         opSendToGroup,
		Hub:        c.hub.name,
		Target:     s.group,
		DataType:   t,
		Data:       data,
		FromUserID: c.userID,
		Stream:     info,
	}
	if s.noEcho {
		cmd.Excluded = []string{c.id}
	}
	return cmd
}

// endStream ends s once: receivers get the terminal fragment (with e, if
// the stream did not end normally) and, unless the session ended, the
// publisher gets streamClosed (with closedName's error, if not empty).
func (c *conn) endStream(s *outStream, e *protocol.StreamError, closedName string) {
	if !c.forgetStream(s) {
		return
	}
	c.finishStream(s, e)
	msg := ""
	if e != nil {
		msg = e.Message
	}
	c.sendStreamClosed(s.id, closedName, msg)
}

// forgetStream removes s from the connection's open streams; it reports
// false if something else ended it first.
func (c *conn) forgetStream(s *outStream) bool {
	c.streams.mu.Lock()
	defer c.streams.mu.Unlock()
	if c.streams.open[s.id] != s {
		return false
	}
	delete(c.streams.open, s.id)
	return true
}

// finishStream publishes s's terminal fragment, after any data fragment
// under way, and releases what s holds.
func (c *conn) finishStream(s *outStream, e *protocol.StreamError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	if s.timer != nil {
		s.timer.Stop()
	}
	c.hub.streams.remove(s.group)
	c.svc.openStreams.Add(-1)
	end := &protocol.StreamInfo{ID: s.id, Sequence: s.next, End: true, Error: e}
	// Published even while the service shuts down (publishFromClient
	// refuses then): receivers on other nodes would never see the end.
	// Shutdown closes the broker only after every connection is released.
	cmd := c.streamCommand(s, end, DataTypeText, []byte{})
	if c.svc.cluster != nil {
		c.svc.cluster.publish(cmd)
	} else {
		c.svc.exec(cmd)
	}
}

// streamIdle runs on s's timer: it ends an idle stream, or waits again for
// the rest of the timeout since its last frame.
func (c *conn) streamIdle(s *outStream) {
	if rest := s.idle - time.Since(time.Unix(0, s.last.Load())); rest > 0 {
		s.mu.Lock()
		if !s.ended {
			s.timer.Reset(rest)
		}
		s.mu.Unlock()
		return
	}
	msg := fmt.Sprintf("The stream had no frame for %d ms.", s.idle/time.Millisecond)
	c.endStream(s, &protocol.StreamError{Name: protocol.StreamIdleTimeout, Message: msg}, protocol.StreamIdleTimeout)
}

// endStreams ends every stream of a session that ended: receivers get a
// terminal fragment with the error Cancelled.
func (c *conn) endStreams() {
	c.streams.mu.Lock()
	c.streams.closed = true
	open := c.streams.open
	c.streams.open = nil
	c.streams.mu.Unlock()
	for _, s := range open {
		c.finishStream(s, &protocol.StreamError{Name: protocol.StreamCancelled, Message: "The publisher disconnected."})
	}
}

func (c *conn) sendStreamAck(id string, expected uint64) {
	c.send(jsonFrame(protocol.AppendStreamAck(wsframe.Begin(64+len(id)), id, expected)))
}

func (c *conn) sendStreamNack(id string, expected uint64, name, msg string) {
	c.send(jsonFrame(protocol.AppendStreamNack(wsframe.Begin(96+len(id)+len(msg)), id, expected, name, msg)))
}

func (c *conn) sendStreamNotFound(id string) {
	c.sendStreamClosed(id, protocol.StreamNotFound, fmt.Sprintf("The stream '%s' is not open.", id))
}

func (c *conn) sendStreamClosed(id, name, msg string) {
	c.send(jsonFrame(protocol.AppendStreamClosed(wsframe.Begin(96+len(id)+len(msg)), id, name, msg)))
}

// handedStream is an open stream handed over to another node with its
// reliable session (handover.go): its publisher goes on where it was.
type handedStream struct {
	ID     string `json:"i"`
	Group  string `json:"g"`
	NoEcho bool   `json:"e,omitempty"`
	Next   uint64 `json:"n"`
	IdleMs int64  `json:"t"`
}

// handStreams gives up the session's open streams to the node it is handed
// to, without ending them for their receivers. c.mu must not be held (a
// stream's lock is taken before it, lifecycle.go).
func (c *conn) handStreams() []handedStream {
	c.streams.mu.Lock()
	c.streams.closed = true
	open := c.streams.open
	c.streams.open = nil
	c.streams.mu.Unlock()
	var out []handedStream
	for _, s := range open {
		s.mu.Lock()
		if !s.ended {
			s.ended = true
			if s.timer != nil {
				s.timer.Stop()
			}
			c.hub.streams.remove(s.group)
			c.svc.openStreams.Add(-1)
			out = append(out, handedStream{ID: s.id, Group: s.group, NoEcho: s.noEcho, Next: s.next, IdleMs: s.idle.Milliseconds()})
		}
		s.mu.Unlock()
	}
	return out
}

// adoptStreams opens the streams a session was handed over with, on the
// connection that arrived with it (registered: its hub is known). They
// count against the group's bound without being refused by it: they were
// admitted on the first node.
func (c *conn) adoptStreams(hs []handedStream) {
	for _, h := range hs {
		s := &outStream{id: h.ID, group: h.Group, noEcho: h.NoEcho, idle: time.Duration(h.IdleMs) * time.Millisecond, next: h.Next}
		if s.idle <= 0 {
			s.idle = DefaultStreamIdleTimeout
		}
		s.last.Store(time.Now().UnixNano())
		c.streams.mu.Lock()
		// Counted before it can be found: whoever ends it uncounts it.
		c.hub.streams.add(s.group, math.MaxInt)
		c.svc.openStreams.Add(1)
		closed := c.streams.closed
		if !closed {
			if c.streams.open == nil {
				c.streams.open = make(map[string]*outStream)
			}
			c.streams.open[s.id] = s
		}
		c.streams.mu.Unlock()
		if closed { // the session ended as it arrived: receivers are told
			c.finishStream(s, &protocol.StreamError{Name: protocol.StreamCancelled, Message: "The publisher disconnected."})
			continue
		}
		s.mu.Lock()
		if !s.ended {
			s.timer = time.AfterFunc(s.idle, func() { c.streamIdle(s) })
		}
		s.mu.Unlock()
	}
}
