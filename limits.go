package pubsub

import (
	"fmt"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"
)

// This file holds the bounds on what clients can make the service hold
// beyond one connection's own limits: the service-wide budgets of inbound
// and buffered bytes, a connection's message rate, and what a panic costs.

// reserveInbound takes n bytes of the inbound budget (n < 0 gives them
// back) and reports whether they fit.
func (s *Service) reserveInbound(n int64) bool {
	if s.inboundBytes.Add(n) > s.cfg.MaxInboundBytes && n > 0 {
		s.inboundBytes.Add(-n)
		return false
	}
	return true
}

// buffered counts n more bytes held for clients (n < 0: fewer): bytes
// waiting in outbound queues and in replay buffers, a message's shared
// encoding once however many hold it (sharedBytes). Past MaxBufferedBytes,
// the connections holding the most are shed.
func (s *Service) buffered(n int) {
	if n == 0 {
		return // a queue holding only shared encodings: no shared write to make
	}
	if s.bufferedBytes.Add(int64(n)) > s.cfg.MaxBufferedBytes && n > 0 && s.shedding.CompareAndSwap(false, true) {
		s.active.add()
		go s.shed() // not here: the caller may hold a connection's lock
	}
}

// sharedBytes is one encoding of a message that many queues and replay
// buffers hold at once (fan-out encodes once per client kind): its bytes
// count against the buffer budget once, from its encoding until the last
// holder lets go. A fan-out takes its references in one step when it is
// done (settle); until then a bias keeps the count from reaching zero.
type sharedBytes struct {
	svc  *Service
	size int
	refs atomic.Int64
}

const sharedBias = 1 << 40

func newSharedBytes(s *Service, size int) *sharedBytes {
	sh := &sharedBytes{svc: s, size: size}
	sh.refs.Store(sharedBias)
	s.buffered(size)
	return sh
}

// settle replaces the bias with the n references the fan-out took.
func (sh *sharedBytes) settle(n int64) { sh.release(sharedBias - n) }

// hold takes one more reference, from a holder that keeps one already (a
// replay buffer whose message is queued again on a recovery).
func (sh *sharedBytes) hold() {
	if sh != nil {
		sh.refs.Add(1)
	}
}

// release lets go of n references; the last one gives the bytes back.
func (sh *sharedBytes) release(n int64) {
	if sh != nil && sh.refs.Add(-n) == 0 {
		sh.svc.buffered(-sh.size)
	}
}

// part is one reference's fair part of sh's bytes: the budget counts them
// once, so a holder that lets go frees them only with all the others. While
// a fan-out is under way (the bias) the count is not known yet and the
// fan-out keeps the bytes anyway: no part.
func (sh *sharedBytes) part() int {
	if sh == nil {
		return 0
	}
	refs := sh.refs.Load()
	if refs <= 0 || refs > sharedBias/2 {
		return 0
	}
	return sh.size / int(refs)
}

// shed closes the connections whose close frees the most of the budget
// (freeableBytes) until a tenth of it would be free again. Their queues
// are dropped at once; replay buffers go with their release.
func (s *Service) shed() {
	defer s.active.done()
	defer s.shedding.Store(false)
	excess := s.bufferedBytes.Load() - s.cfg.MaxBufferedBytes*9/10
	if excess <= 0 {
		return
	}
	type holder struct {
		c *conn
		n int
	}
	var all []holder
	s.eachConn(func(c *conn) {
		if n := c.freeableBytes(); n > 0 {
			all = append(all, holder{c, n})
		}
	})
	slices.SortFunc(all, func(a, b holder) int { return b.n - a.n })
	for _, h := range all {
		if excess <= 0 {
			break
		}
		excess -= int64(h.n) // a connection closing already frees its bytes soon too
		h.c.mu.Lock()
		closing := h.c.state >= stateClosing
		var after afterUnlock
		if !closing {
			after = h.c.closeLocked(DisconnectBufferBudget, true)
		}
		h.c.mu.Unlock()
		if closing {
			continue
		}
		s.budgetDisconnects.Add(1)
		s.log.Warn("closing a client: the service's buffer budget is exhausted and it holds the most",
			"hub", h.c.hub.name, "connectionId", h.c.id, "bytes", h.n)
		after.run(h.c)
	}
}

// rateLimiter is a token bucket of one connection's inbound messages: up
// to a second's worth at once, refilled continuously. The read loop alone
// uses it.
type rateLimiter struct {
	rate   float64 // messages per second; 0: no limit
	tokens float64
	last   time.Time
}

func (l *rateLimiter) init(perSecond int) {
	if perSecond > 0 {
		l.rate, l.tokens, l.last = float64(perSecond), float64(perSecond), time.Now()
	}
}

// allow takes one message from the bucket.
func (l *rateLimiter) allow() bool {
	if l.rate == 0 {
		return true
	}
	now := time.Now()
	l.tokens = min(l.rate, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

func (c *conn) rateLimited() { c.svc.rateLimited.Add(1) }

// panicked logs and counts a panic recovered on a connection's read or
// write path.
func (s *Service) panicked(path string, r any) {
	s.panics.Add(1)
	stack := debug.Stack()
	if p, ok := r.(stackedPanic); ok {
		r, stack = p.value, p.stack
	}
	s.log.Error("recovered a panic on a connection's "+path+" path; closing it",
		"panic", fmt.Sprint(r), "stack", string(stack))
}
