package pubsub

import (
	"net"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// outbox is a connection's outbound queue of complete WebSocket frames. A
// send never blocks: it appends the frame (shared with the other recipients
// of the same message) and, if no flush is running, starts one. The flush
// writes everything queued in one writev, so a burst to one connection costs
// one syscall, and an idle connection holds no goroutine.
type outbox struct {
	frames [][]byte
	// expires holds each queued frame's deadline (Unix nanoseconds, 0 for
	// none), or is nil while no queued frame has one.
	expires  []int64
	spare    [][]byte
	size     int  // bytes queued or being written
	flushing bool // a flush goroutine is running
	closed   bool // nothing more is written
	closeReq *Disconnect
}

// send queues one frame for c.
func (c *conn) send(frame []byte) { c.enqueue(frame, 0) }

// enqueue queues one frame for c, to be dropped if it is not written by
// deadline (Unix nanoseconds; 0: never). When the frames queued or in flight
// would exceed the outbound buffer, c is a slow client: its queue is dropped
// and it is closed, and no sender waits for it.
func (c *conn) enqueue(frame []byte, deadline int64) {
	o := &c.out
	c.outMu.Lock()
	if o.closed || o.closeReq != nil {
		c.outMu.Unlock()
		return
	}
	if o.size > 0 && o.size+len(frame) > c.hub.svc.cfg.OutboundBufferSize {
		c.hub.svc.slowClients.Add(1)
		c.disconnect = DisconnectSlowClient
		c.closing.Store(true)
		for _, f := range o.frames {
			o.size -= len(f)
		}
		clear(o.frames)
		o.frames = o.frames[:0]
		o.expires = nil
		o.closeReq = &c.disconnect
		c.outMu.Unlock()
		c.hub.svc.log.Warn("closing a slow client", "hub", c.hub.name, "connectionId", c.id)
		return // the running flush writes the close frame when its write returns
	}
	if deadline != 0 && o.expires == nil {
		o.expires = make([]int64, len(o.frames), cap(o.frames))
	}
	o.frames = append(o.frames, frame)
	if o.expires != nil {
		o.expires = append(o.expires, deadline)
	}
	o.size += len(frame)
	start := !o.flushing
	o.flushing = true
	c.outMu.Unlock()
	if start {
		go c.flush()
	}
}

// close closes c as the service: a PubSub client gets a "disconnected"
// message, then every client gets a close frame after what is queued. It is
// idempotent; the first reason wins.
func (c *conn) close(d Disconnect) {
	c.outMu.Lock()
	if c.out.closed || c.out.closeReq != nil {
		c.outMu.Unlock()
		return
	}
	c.disconnect = d
	c.closing.Store(true)
	if c.kind != kindSimple {
		frame := c.encode(func(b []byte) []byte { return protocol.AppendDisconnected(b, d.Reason) })
		c.out.frames = append(c.out.frames, frame)
		c.out.size += len(frame)
	}
	c.out.closeReq = &c.disconnect
	start := !c.out.flushing
	c.out.flushing = true
	c.outMu.Unlock()
	if start {
		go c.flush()
	}
}

// flush writes the queue until it is empty, then the close frame if one was
// requested.
func (c *conn) flush() {
	o := &c.out
	nc := c.socket.NetConn()
	for {
		c.outMu.Lock()
		batch := o.frames
		if len(batch) == 0 || o.closed {
			req, wasClosed := o.closeReq, o.closed
			o.closed = wasClosed || req != nil
			o.flushing = false
			c.outMu.Unlock()
			if req != nil && !wasClosed {
				// A slow client may not read even the close frame: bound it.
				_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
				_ = c.socket.WriteClose(req.Code, []byte(req.Reason))
			}
			return
		}
		expires := o.expires
		o.frames, o.expires = o.spare[:0], nil
		c.outMu.Unlock()

		n := 0
		if expires != nil {
			batch, n = dropExpired(batch, expires)
		}
		for _, f := range batch {
			n += len(f)
		}
		_ = nc.SetWriteDeadline(time.Now().Add(c.hub.svc.cfg.WriteTimeout))
		bufs := net.Buffers(batch)
		_, err := bufs.WriteTo(nc)

		c.outMu.Lock()
		o.size -= n
		clear(batch[:cap(batch)])
		o.spare = batch[:0]
		c.outMu.Unlock()
		if err != nil {
			c.abort()
			return
		}
	}
}

// dropExpired removes the frames whose deadline has passed, in place, and
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

// abort drops c's connection without a close frame: a write failed, or
// Shutdown ran out of time.
func (c *conn) abort() {
	c.outMu.Lock()
	c.out.closed = true
	clear(c.out.frames)
	c.out.frames, c.out.expires = nil, nil
	socket := c.socket
	c.outMu.Unlock()
	if socket != nil { // nil while the upgrade is under way: it checks closed
		_ = socket.NetConn().Close()
	}
}

// pongFrame answers a WebSocket ping with the same payload.
func pongFrame(payload []byte) []byte { return wsframe.Frame(wsframe.OpPong, payload) }
