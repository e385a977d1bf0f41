package pubsub

import (
	"net"
	"syscall"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/lxzan/gws"
)

// outbox is one transport's outbound queue of WebSocket frames, each frame
// one or more byte slices (a reliable receiver's frame is a small
// per-connection prefix and the body shared by every recipient). A send
// never blocks: it appends the slices and, if no write is under way, hands
// the outbox to the writers (writer.go), which write everything queued in
// one writev, so a burst to one connection costs one syscall, and an idle
// connection holds no goroutine.
//
// A reliable connection gets a new outbox with each transport; the
// connection's outMu guards whichever is current and the old ones.
type outbox struct {
	socket *gws.Conn       // nil until the upgrade is done
	raw    syscall.RawConn // socket's, for non-blocking writes; nil if it has none
	frames [][]byte
	queued int // frames in frames (a frame may be several slices)
	// expires holds each queued slice's deadline (Unix nanoseconds, 0 for
	// none), or is nil while no queued slice has one.
	expires  []int64
	spare    [][]byte
	size     int  // bytes queued or being written
	flushing bool // a write is queued or under way (or the outbox is held)
	closed   bool // nothing more is written
	closeReq *Disconnect
}

// newOutbox returns an outbox held until start is called with its socket.
func newOutbox() *outbox { return &outbox{flushing: true} }

// start gives a held outbox its socket and flushes what was queued.
func (c *conn) start(o *outbox, socket *gws.Conn) {
	raw := rawConn(socket.NetConn())
	c.outMu.Lock()
	o.socket, o.raw = socket, raw
	aborted := o.closed
	c.outMu.Unlock()
	if aborted {
		_ = socket.NetConn().Close() // the read loop then releases it
	}
	c.kick(o)
}

// send queues one frame for c.
func (c *conn) send(frame []byte) { c.enqueue(0, frame) }

// enqueue queues one frame, made of parts, to be dropped if it is not
// written by deadline (Unix nanoseconds; 0: never).
func (c *conn) enqueue(deadline int64, parts ...[]byte) {
	c.outMu.Lock()
	start := c.enqueueLocked(c.out, deadline, parts)
	o := c.out
	c.outMu.Unlock()
	if start {
		c.kick(o)
	}
}

// enqueueLocked queues parts on o and reports whether a flush must start.
// When the bytes queued or in flight would exceed the outbound buffer, c is
// a slow client: its queue is dropped and it is closed, and no sender waits
// for it.
func (c *conn) enqueueLocked(o *outbox, deadline int64, parts [][]byte) bool {
	if o.closed || o.closeReq != nil {
		return false
	}
	n := byteLen(parts)
	if o.size > 0 && o.size+n > c.hub.svc.cfg.OutboundBufferSize {
		c.hub.svc.slowClients.Add(1)
		c.hub.svc.log.Warn("closing a slow client", "hub", c.hub.name, "connectionId", c.id)
		o.size -= byteLen(o.frames)
		clear(o.frames)
		o.frames, o.expires, o.queued = o.frames[:0], nil, 0
		c.endSessionLocked(DisconnectSlowClient)
		o.closeReq = &c.disconnect
		return false // the write under way ends with the close frame
	}
	if deadline != 0 && o.expires == nil {
		o.expires = make([]int64, len(o.frames), cap(o.frames))
	}
	o.frames = append(o.frames, parts...)
	o.queued++
	if o.expires != nil {
		for range parts {
			o.expires = append(o.expires, deadline)
		}
	}
	o.size += n
	start := !o.flushing
	o.flushing = true
	return start
}

// close closes c as the service: a PubSub client gets a "disconnected"
// message, then a close frame after what is queued. The logical connection
// ends with it (a reliable one is not recoverable). It is idempotent; the
// first reason wins.
func (c *conn) close(d Disconnect) {
	c.outMu.Lock()
	flush, release := c.closeLocked(d)
	c.outMu.Unlock()
	c.afterClose(flush, release)
}

// closeLocked does close's work under outMu and says what is left to do
// without it: start a flush of an outbox, or release a connection that has
// no transport.
func (c *conn) closeLocked(d Disconnect) (flush *outbox, release bool) {
	if c.ended {
		return nil, false
	}
	c.endSessionLocked(d)
	if c.detached() {
		return nil, true
	}
	o := c.out
	if o.closed || o.closeReq != nil {
		return nil, false
	}
	if c.kind != kindSimple {
		frame := c.encodeDisconnected(d.Reason)
		o.frames = append(o.frames, frame)
		o.queued++
		if o.expires != nil {
			o.expires = append(o.expires, 0)
		}
		o.size += len(frame)
	}
	o.closeReq = &c.disconnect
	if o.flushing {
		return nil, false
	}
	o.flushing = true
	return o, false
}

func (c *conn) afterClose(flush *outbox, release bool) {
	if flush != nil {
		go c.flush(flush, nil)
	}
	if release {
		c.hub.svc.release(c, "")
	}
}

// endSessionLocked records why the service ends c. Caller holds outMu.
func (c *conn) endSessionLocked(d Disconnect) {
	if !c.ended {
		c.ended = true
		c.disconnect = d
		c.closing.Store(true)
	}
}

// flush writes o's queue, waiting for the socket as long as the write
// timeout allows, until the queue is empty, then the close frame if one was
// requested. It starts with rest, what a non-blocking write left over.
func (c *conn) flush(o *outbox, rest [][]byte) {
	nc := o.socket.NetConn()
	batch := rest
	for {
		if len(batch) > 0 {
			n := byteLen(batch)
			_ = nc.SetWriteDeadline(c.writeDeadline())
			bufs := net.Buffers(batch)
			_, err := bufs.WriteTo(nc)
			c.outMu.Lock()
			o.size -= n
			c.outMu.Unlock()
			if err != nil {
				c.abort(o)
				return
			}
		}
		c.outMu.Lock()
		batch = o.frames
		if len(batch) == 0 || o.closed {
			req, wasClosed := o.closeReq, o.closed
			o.closed = wasClosed || req != nil
			o.flushing = false
			c.outMu.Unlock()
			if req != nil && !wasClosed {
				// A slow client may not read even the close frame: bound it.
				_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
				_ = o.socket.WriteClose(req.Code, []byte(req.Reason))
			} else {
				// Back to the writers' non-blocking writes, which a passed
				// deadline would refuse.
				_ = nc.SetWriteDeadline(time.Time{})
			}
			return
		}
		expires := o.expires
		o.frames, o.expires, o.queued = nil, nil, 0
		c.outMu.Unlock()
		if expires != nil {
			var dropped int
			batch, dropped = dropExpired(batch, expires)
			c.outMu.Lock()
			o.size -= dropped
			c.outMu.Unlock()
		}
	}
}

// byteLen is the number of bytes in bufs.
func byteLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// dropExpired removes the slices whose deadline has passed, in place, and
// returns the rest with the number of bytes dropped.
func dropExpired(batch [][]byte, expires []int64) ([][]byte, int) {
	now := time.Now().UnixNano()
	kept, dropped := batch[:0], 0
	for i, f := range batch {
		if expires[i] != 0 && now > expires[i] {
			dropped += len(f)
			continue
		}
		kept = append(kept, f)
	}
	return kept, dropped
}

// abort drops o's transport without a close frame: a write failed, or
// Shutdown ran out of time.
func (c *conn) abort(o *outbox) {
	c.outMu.Lock()
	o.closed = true
	clear(o.frames)
	o.frames, o.expires, o.queued = nil, nil, 0
	socket := o.socket
	c.outMu.Unlock()
	if socket != nil { // nil while the upgrade is under way: start checks closed
		_ = socket.NetConn().Close()
	}
}

// pongFrame answers a WebSocket ping with the same payload.
func pongFrame(payload []byte) []byte { return wsframe.Frame(wsframe.OpPong, payload) }
