package pubsub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/lxzan/gws"
)

// This file owns a connection's lifecycle: its states and the transitions
// between them, which are the only way a connection changes state.
//
//	connecting ──attach──▶ open ──transport drops (reliable)──▶ detached
//	    │                   │ ▲                                    │
//	    │                   │ └────────────resume──────────────────┘
//	    │                 close                                    │
//	    ▼                   ▼                                      │
//	released ◀──transport ends── closing ◀─────────close───────────┘
//	    ▲                                                           │
//	    └──────────────recovery window ends, or closing─────────────┘
//
// A connection is registered (connecting) before its client sees the 101,
// so that it can be sent to at once; its frames wait in the held outbox of
// its first transport. It is released exactly once, and only where no read
// loop of it runs: at the end of its transport's read loop (on that
// goroutine), when its upgrade fails, or while it is detached (on the
// recovery timer's goroutine, or one started by close). So its events keep
// their order: connected, user events, disconnected, and nothing after.
//
// Lock order (every lock of the service, outermost first):
//
//	cluster.mu (an arriving connection registered: handover.go)
//	Service.mu (read: registration; write: Shutdown)
//	  → the xsync bucket locks of Service.hubs and of an index's sets
//	    (taken by Compute; hold nothing else of ours but set.mu)
//	conn.stateMu (a connection's group state changes, each with its update
//	  published in order: groupstate.go; never two at once)
//	  → conn.mu (its own, released before the update goes out; then each
//	    subscriber's in turn), cluster.pubMu, the registry's (at release)
//	conn.mu
//	  → outbox.mu (of that connection's transports)
//	  → the index bucket locks and memberSet.mu (joins and leaves)
//	  → cluster.imu (subscriptions, counted; taken inside Compute)
//	outStream.mu (a stream's fragment being published: stream.go)
//	  → the fan-out's locks, as any send
//	streamSet.mu → groupStreams.mu (a stream admitted: stream.go)
//	memberSet.mu, permissions.mu, writers.mu, cluster.imu, presenceDispatch.mu,
//	groupStreams.mu: leaves.
//
// No lock is held while calling into another connection, the event
// handler, or a socket: a fan-out takes a snapshot of a set's members,
// releases its lock, then delivers, filters or closes. (A connection's
// stateMu is held while its group state update is delivered: it guards no
// set, only the order of that connection's own updates.)

// connState is where a connection is in its lifecycle.
type connState uint8

const (
	// stateConnecting: registered; the WebSocket upgrade is under way.
	stateConnecting connState = iota
	// stateOpen: a transport is attached and its frames are read.
	stateOpen
	// stateDetached: a reliable connection whose transport dropped without
	// a close frame, kept for RecoveryWindow with its groups, permissions
	// and unacknowledged messages.
	stateDetached
	// stateClosing: the service ended the session; the "disconnected"
	// message and the close frame are on their way, and the transport's
	// end releases the connection.
	stateClosing
	// stateReleased: out of the registry, disconnected event raised.
	stateReleased
)

// attach makes w, whose upgrade succeeded, the transport the connection is
// read from: connecting becomes open. A connection the service closed
// meanwhile stays closing; its transport carries the close.
func (c *conn) attach(w *wire) {
	c.mu.Lock()
	if c.state == stateConnecting {
		c.state = stateOpen
	}
	c.mu.Unlock()
}

// close ends the session as the service: a PubSub client gets a
// "disconnected" message with the reason, then the close frame, after what
// is queued (slow clients: instead of it). The first reason wins; later
// calls do nothing. It never waits: a detached connection is released on a
// goroutine of its own, an attached one by its transport's end.
func (c *conn) close(d Disconnect) {
	c.mu.Lock()
	after := c.closeLocked(d, false)
	c.mu.Unlock()
	after.run(c)
}

// closeLocked is close's transition, under c.mu. drop discards the frames
// queued and not yet written (a slow client's). What needs no lock, the
// caller runs after unlocking.
func (c *conn) closeLocked(d Disconnect, drop bool) (after afterUnlock) {
	switch c.state {
	case stateClosing, stateReleased:
		return after
	case stateDetached:
		c.state, c.disconnect = stateClosing, d
		c.rel.stopTimer()
		after.release = true
		return after
	}
	c.state, c.disconnect = stateClosing, d
	after.cancel = true // a user event under way is abandoned: its answer has nowhere to go
	var msg []byte
	if c.kind != kindSimple {
		msg = c.encodeDisconnected(d.Reason)
	}
	after.kick = c.w.out.close(msg, closeFrame(d), drop)
	return after
}

// closeFrom is close on behalf of transport w (its read or write path
// failed): it ends the session only while w is current; a transport a
// recovery replaced is just dropped. It reports whether it ended the
// session.
func (c *conn) closeFrom(w *wire, d Disconnect) (ended bool) {
	c.mu.Lock()
	if c.w != w {
		c.mu.Unlock()
		w.out.abort()
		return false
	}
	ended = c.state < stateClosing
	after := c.closeLocked(d, false)
	c.mu.Unlock()
	after.run(c)
	return ended
}

// afterUnlock is what a transition leaves to do once c.mu is released.
type afterUnlock struct {
	kick    *outbox // start writing it
	cancel  bool    // cancel the connection's context: its user events
	release bool    // release the connection on a goroutine of its own
}

// merge adds b, another transition's of the same connection under the same
// lock: only one of them can have claimed the outbox's writing.
func (a *afterUnlock) merge(b afterUnlock) {
	if a.kick == nil {
		a.kick = b.kick
	}
	a.cancel = a.cancel || b.cancel
	a.release = a.release || b.release
}

func (a afterUnlock) run(c *conn) {
	if a.cancel {
		c.cancel()
	}
	if a.kick != nil {
		a.kick.kick()
	}
	if a.release {
		s := c.svc
		s.active.add()
		go func() {
			defer s.active.done()
			c.release("", "")
		}()
	}
}

// transportEnded is called once per transport, on its read loop's
// goroutine when the loop ends (or where the upgrade failed): the client
// closed, the socket failed, or the service's close is done. A reliable
// connection whose transport dropped without a close frame is detached;
// every other connection is released. A transport a recovery replaced
// changes nothing.
func (c *conn) transportEnded(w *wire) {
	c.mu.Lock()
	if c.w != w {
		c.mu.Unlock()
		w.out.finish() // replaced: the recovery closed it already
		return
	}
	reason := clientCloseReason(w.closeErr)
	if c.state == stateOpen && c.rel != nil && !w.clientClosed() {
		c.state, c.w = stateDetached, nil
		c.rel.reason = reason
		c.rel.timer = time.AfterFunc(c.svc.cfg.RecoveryWindow, c.recoveryExpired)
		c.mu.Unlock()
		w.out.finish()
		c.svc.connectionChanged(c, ConnectionDetached, Disconnect{}, "")
		return
	}
	c.mu.Unlock()
	w.out.finish()
	c.release(reason, clientCloseLabel(w.closeErr))
}

// recoveryExpired ends a detached connection whose client did not come
// back within RecoveryWindow.
func (c *conn) recoveryExpired() {
	c.mu.Lock()
	if c.state != stateDetached {
		c.mu.Unlock()
		return
	}
	c.state, c.disconnect = stateClosing, Disconnect{ClosePolicyViolation, c.rel.reason}
	c.mu.Unlock()
	c.release("", CloseReasonRecoveryExpired)
}

// errNotRecoverable refuses a recovery.
var errNotRecoverable = errors.New("pubsub: the connection cannot be recovered")

// resume attaches w, a recovering client's transport whose upgrade is
// still to come, to a reliable connection, and queues every message the
// client has not acknowledged on it first, in sequence order. An open
// connection whose drop was not noticed yet is taken over: its old
// transport is closed. previousRead is closed when the previous
// transport's read loop has ended: w's read loop waits for it, so that the
// connection's frames are never handled by two goroutines at once.
func (c *conn) resume(w *wire) (previousRead <-chan struct{}, err error) {
	c.mu.Lock()
	if c.rel == nil || c.state != stateDetached && c.state != stateOpen {
		c.mu.Unlock()
		return nil, errNotRecoverable
	}
	old := c.w
	c.rel.stopTimer()
	c.state, c.w = stateOpen, w
	c.lastSeen.Store(time.Now().UnixNano()) // keep-alive counts from the recovery
	previousRead, c.lastRead = c.lastRead, w.readDone
	c.rel.replay(&w.out)
	c.mu.Unlock()
	if old != nil {
		old.out.abort() // its read loop ends, and finds itself replaced
		// A drop not noticed yet: counted as one, so that every recovery
		// follows a detach.
		c.svc.connectionChanged(c, ConnectionDetached, Disconnect{}, "")
	}
	c.svc.connectionChanged(c, ConnectionRecovered, Disconnect{}, "")
	return previousRead, nil
}

// opened raises the connected event, once per logical connection: on the
// first transport's read loop, before its first frame. Its group presence
// events wait for it.
func (c *conn) opened() {
	c.mu.Lock()
	first := !c.connected
	c.connected = true
	c.mu.Unlock()
	if first {
		c.svc.connectionChanged(c, ConnectionOpened, Disconnect{}, "")
		c.svc.handler.Connected(c.ctx, c.context())
	}
	c.startPresence()
}

// release ends a registered connection, once: it leaves every index and
// its hub (an empty hub is pruned), its replay buffer is dropped, and the
// event handler gets the disconnected event with the service's reason for
// ending it, or else clientReason. why labels the end for observers; empty,
// the service's disconnect says.
func (c *conn) release(clientReason string, why CloseReason) {
	c.stateMu.Lock()
	c.mu.Lock()
	if c.state == stateReleased {
		c.mu.Unlock()
		c.stateMu.Unlock()
		return
	}
	c.state = stateReleased
	d := c.disconnect
	reason := d.Reason
	opened := c.connected // an upgrade that failed opened nothing to close
	groups := c.groups
	c.groups = nil
	switch {
	case c.connected:
		if c.pres != nil {
			c.pres.started = false // its last events are handed over below, not by a worker
		}
		c.announceGroupsLocked(groups, false)
	case c.pres != nil:
		c.pres.pending = nil // never connected (its upgrade failed): no presence either
	}
	stateGone := c.leaveAllGroupStateLocked()
	if c.rel != nil {
		c.rel.stopTimer()
		c.rel.drop(c.svc)
	}
	c.mu.Unlock()
	s := c.svc
	c.cancel()
	c.hub.unregister(c, groups)
	c.publishGroupState(stateGone) // the state leaves with the session
	c.stateMu.Unlock()
	c.endStreams() // no lock of c held: a stream's lock comes first
	s.connections.Add(-1)
	if c.movedFrom != "" {
		s.cluster.connectionGone(c)
	}
	if reason == "" {
		reason = clientReason
	}
	c.flushPresence()
	if why == "" || why != CloseReasonRecoveryExpired && d != (Disconnect{}) {
		why = closeReasonOf(d) // the service ended it: its reason, not the transport's end
	}
	if opened {
		s.connectionChanged(c, ConnectionClosed, d, why)
	}
	s.handler.Disconnected(context.Background(), c.context(), reason)
	s.active.done() // Shutdown waits for the disconnected event too
}

// clientCloseReason describes a transport's end the service did not
// initiate.
func clientCloseReason(err error) string {
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		if len(ce.Reason) > 0 {
			return string(ce.Reason)
		}
		if ce.Code == CloseNormal || ce.Code == CloseGoingAway || ce.Code == 0 {
			return ""
		}
		return fmt.Sprintf("The client closed the connection with code %d.", ce.Code)
	case err == nil, errors.Is(err, io.EOF):
		return ""
	}
	// A socket error names addresses; the event handler gets the fact.
	return "The connection was lost."
}

// keepAlive pings an open connection, or ends it when nothing came from its
// client since deadline (Unix nanoseconds): a reliable one loses its
// transport and waits for a recovery, any other is closed.
func (c *conn) keepAlive(deadline int64) {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return // a detached connection has its recovery window instead
	}
	var after afterUnlock
	switch {
	case c.lastSeen.Load() < deadline && c.rel != nil:
		// A reliable client whose transport went silent may come back on
		// another: drop the transport, keep the session (detached).
		w := c.w
		c.mu.Unlock()
		w.out.abort()
		return
	case c.lastSeen.Load() < deadline:
		after = c.closeLocked(DisconnectPingTimeout, false)
	default:
		after, _ = c.enqueueLocked(0, [][]byte{pingFrame}, nil, -1)
	}
	c.mu.Unlock()
	after.run(c)
}
