package pubsub

import (
	"context"
	"slices"
	"sync"
)

// Group presence events (GroupPresenceHandler). A membership change is
// recorded under conn.mu, where it happens, in the connection's own queue:
// so one connection's events keep the order of its changes, whichever
// goroutines made them. They are handed to the handler with no lock held,
// by a few workers of the service, never by the goroutine that changed the
// membership: that may be a client's read loop, or the broker's goroutine
// in a cluster, which an application's handler calling the Go API (and so
// waiting for the broker) would stall. A connection's events wait until
// its connected event was handled, and its end hands over what is left
// before the disconnected event.

// presenceWorkers bounds the goroutines handing presence events over; they
// start with work and end without.
const presenceWorkers = 4

type presenceEvent struct {
	group  string
	joined bool
}

// presenceQueue is a connection's presence events not yet handed over,
// guarded by conn.mu.
type presenceQueue struct {
	pending []presenceEvent
	started bool          // the connected event was handled: events may go
	busy    bool          // a goroutine is handing pending's events over
	idle    chan struct{} // closed when busy ends, for release to wait on
}

// presLocked returns c's queue, made on first use, under c.mu.
func (c *conn) presLocked() *presenceQueue {
	if c.pres == nil {
		c.pres = &presenceQueue{}
	}
	return c.pres
}

// maxPendingPresence bounds a connection's waiting events: past it, a
// handler that does not keep up loses a group's round trips (logged), not
// the end of a membership, rather than the service holding them without
// bound.
func (s *Service) maxPendingPresence() int {
	return max(4096, 2*s.cfg.MaxGroupsPerConnection)
}

// announceLocked records that c joined or left group, under c.mu. It
// reports whether the caller, once c.mu is released, must schedule c.
func (c *conn) announceLocked(group string, joined bool) (schedule bool) {
	s := c.svc
	if s.presence == nil {
		return false
	}
	q := c.presLocked()
	if len(q.pending) >= s.maxPendingPresence() {
		// A group's events alternate: the last one waiting of this group
		// is the opposite change. Both go (the handler misses a round trip,
		// not an end); the handler's view stays the membership. Past the
		// limit, only a group with nothing waiting adds one event: a
		// group's change whose opposite the handler was already told.
		for i := len(q.pending) - 1; i >= 0; i-- {
			if q.pending[i].group == group {
				s.log.Error("dropping a group presence event and its opposite: the event handler is not keeping up",
					"connectionId", c.id, "group", group, "joined", joined)
				q.pending = slices.Delete(q.pending, i, i+1)
				return false
			}
		}
	}
	q.pending = append(q.pending, presenceEvent{group, joined})
	if !q.started || q.busy {
		return false
	}
	q.busy = true
	return true
}

// announceGroupsLocked records c's leaving each of groups (or joining them),
// in name order, under c.mu.
func (c *conn) announceGroupsLocked(groups map[string]struct{}, joined bool) (schedule bool) {
	if c.svc.presence == nil || len(groups) == 0 {
		return false
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	for _, g := range names {
		if c.announceLocked(g, joined) {
			schedule = true
		}
	}
	return schedule
}

// startPresence lets c's events go: its connected event was handled (or,
// handed over from another node, it was long ago).
func (c *conn) startPresence() {
	if c.svc.presence == nil {
		return
	}
	c.mu.Lock()
	q := c.presLocked()
	q.started = true
	schedule := !q.busy && len(q.pending) > 0
	if schedule {
		q.busy = true
	}
	c.mu.Unlock()
	if schedule {
		c.svc.schedulePresence(c)
	}
}

// drainPresence hands c's events over until none is left, on a worker.
func (c *conn) drainPresence() {
	for {
		c.mu.Lock()
		q := c.pres // a worker's: busy set it up
		evs := q.pending
		q.pending = nil
		if len(evs) == 0 {
			q.busy = false
			if q.idle != nil {
				close(q.idle)
				q.idle = nil
			}
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.deliverPresence(evs)
	}
}

// flushPresence hands over every event c has left, after those a worker is
// handing over, on the caller's goroutine: a released connection's, before
// its disconnected event. Nothing is recorded for c any more.
func (c *conn) flushPresence() {
	if c.svc.presence == nil {
		return
	}
	for {
		c.mu.Lock()
		q := c.pres
		if q == nil {
			c.mu.Unlock()
			return // it never had an event
		}
		if q.busy {
			if q.idle == nil {
				q.idle = make(chan struct{})
			}
			idle := q.idle
			c.mu.Unlock()
			<-idle
			continue
		}
		evs := q.pending
		q.pending = nil
		c.mu.Unlock()
		if len(evs) == 0 {
			return
		}
		c.deliverPresence(evs)
	}
}

func (c *conn) deliverPresence(evs []presenceEvent) {
	p := c.svc.presence
	ev := GroupPresenceEvent{ConnectionContext: c.context()}
	for _, e := range evs {
		ev.Group = e.group
		if e.joined {
			p.GroupJoined(context.Background(), ev)
		} else {
			p.GroupLeft(context.Background(), ev)
		}
	}
}

// presenceDispatch is the connections whose events a worker is to hand
// over, each at most once (its queue is busy from then on).
type presenceDispatch struct {
	mu      sync.Mutex
	ready   []*conn
	workers int
}

func (s *Service) schedulePresence(c *conn) {
	d := &s.presenceQ
	d.mu.Lock()
	d.ready = append(d.ready, c)
	start := d.workers < presenceWorkers
	if start {
		d.workers++
		s.active.add() // Shutdown waits for it
	}
	d.mu.Unlock()
	if start {
		go s.presenceWorker()
	}
}

func (s *Service) presenceWorker() {
	defer s.active.done()
	d := &s.presenceQ
	for {
		d.mu.Lock()
		if len(d.ready) == 0 {
			d.workers--
			d.ready = nil
			d.mu.Unlock()
			return
		}
		c := d.ready[0]
		d.ready[0] = nil
		d.ready = d.ready[1:]
		d.mu.Unlock()
		c.drainPresence()
	}
}

// GroupPattern is a group name pattern as wildcard roles write them
// (webpubsub.joinLeaveGroups.<pattern>): ? is one character but '.', * any
// run without '.', ** any run at all, and \ escapes \, * and ?; matching
// is case-sensitive. The CloudEvents upstream filters presence events with
// it (groupFilters).
type GroupPattern struct{ p groupPattern }

// CompileGroupPattern parses a pattern, within the limits of wildcard roles.
func CompileGroupPattern(s string) (GroupPattern, error) {
	p, err := compileGroupPattern(s)
	return GroupPattern{p}, err
}

// Match reports whether group matches the pattern.
func (p GroupPattern) Match(group string) bool { return p.p.match(group) }

// String returns the pattern as written.
func (p GroupPattern) String() string { return p.p.String() }

// handedPresence is a presence event handed over with a reliable session.
type handedPresence struct {
	Group  string `json:"g"`
	Joined bool   `json:"j,omitempty"`
}

// handPresenceLocked gives up c's waiting events to the node its session is
// handed to, under c.mu: raised here, they could come after that node's
// (a left before its joined, or after disconnected). Only an event a worker
// is handing over already stays.
func (c *conn) handPresenceLocked() []handedPresence {
	if c.pres == nil || len(c.pres.pending) == 0 {
		return nil
	}
	out := make([]handedPresence, len(c.pres.pending))
	for i, e := range c.pres.pending {
		out[i] = handedPresence{Group: e.group, Joined: e.joined}
	}
	c.pres.pending = nil
	return out
}

// adoptPresence queues the events a session was handed over with on the
// connection arriving with it, before any of its own; they wait for its
// transport, as its own do.
func (c *conn) adoptPresence(hs []handedPresence) {
	if c.svc.presence == nil || len(hs) == 0 {
		return
	}
	c.mu.Lock()
	q := c.presLocked()
	for _, h := range hs {
		q.pending = append(q.pending, presenceEvent{group: h.Group, joined: h.Joined})
	}
	c.mu.Unlock()
}
