package pubsub

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/embedwps/pubsub/internal/wsframe"
)

// outbox is one transport's outbound queue: the one path by which bytes
// reach its socket after the handshake, close frames included (gws's own
// close frames come here too, through the wire's net.Conn). Each frame is
// one or more byte slices (a reliable receiver's frame is a small
// per-connection prefix and the body shared by every recipient). A send
// never blocks: it appends and, if no write is under way, hands the outbox
// to the writers (writer.go), which write everything queued in one writev;
// a socket that cannot take it all is finished by a goroutine of its own
// (flush), so no sender waits for a slow client and an idle connection
// holds no goroutine.
//
// The queue is bounded by the bytes queued and not yet taken by a write
// (Config.OutboundBufferSize): bytes on their way into the socket do not
// count against it, so a client that reads as fast as the network allows is
// never cut. Queued bytes count against the service's budget
// (Config.MaxBufferedBytes), a message's shared encoding once for all the
// queues that hold it.
type outbox struct {
	w *wire

	mu         sync.Mutex
	ready      bool // the upgrade is done: frames may be written
	flushing   bool // a writer or a flush goroutine owns writing
	closing    bool // nothing more is queued; closeFrame goes last
	fullClose  bool // after closeFrame, close the socket (else half-close it and wait for the client)
	closed     bool // the socket is closed; everything is dropped
	frames     [][]byte
	queued     int            // frames in frames (a frame may be several slices)
	expires    []int64        // each slice's deadline (Unix nanoseconds, 0: none), or nil while none has one
	owners     []*sharedBytes // each slice's shared encoding, nil for bytes of its own; nil while none has one
	spare      [][]byte
	size       int // bytes in frames
	inflight   int // bytes a write under way has taken and not finished
	closeFrame []byte
	grace      *time.Timer
}

// closeGrace is how long a transport whose close frame was written waits
// for the client's close frame (or its FIN) before the socket is closed:
// closing first could reset the connection and lose the close frame.
const closeGrace = time.Second

// closeFrame is the WebSocket close frame of a disconnect.
func closeFrame(d Disconnect) []byte {
	p := make([]byte, 2, 2+len(d.Reason))
	p[0], p[1] = byte(d.Code>>8), byte(d.Code)
	reason := d.Reason
	if len(reason) > 123 { // a control frame's payload limit, cut between characters
		reason = reason[:123]
		for len(reason) > 0 && !utf8.RuneStart(d.Reason[len(reason)]) {
			reason = reason[:len(reason)-1]
		}
	}
	p = append(p, reason...)
	return wsframe.Frame(wsframe.OpClose, p)
}

// account changes the bytes the connection holds, queued (size) and in
// flight. Caller holds o.mu.
func (o *outbox) account(size, inflight int) {
	o.size += size
	o.inflight += inflight
}

// freeable is what dropping the queue gives back to the buffer budget: its
// own bytes, and its part of each shared encoding. Bytes a write took left
// the budget already (take).
func (o *outbox) freeable() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for i, b := range o.frames {
		if o.owners != nil && o.owners[i] != nil {
			n += o.owners[i].part()
		} else {
			n += len(b)
		}
	}
	return n
}

// kickLocked claims writing for the caller when the outbox has something
// to write and nobody is writing it; the caller then calls kick, unlocked.
func (o *outbox) kickLocked() *outbox {
	if !o.ready || o.flushing || o.closed || len(o.frames) == 0 && !o.closing {
		return nil
	}
	o.flushing = true
	return o
}

// kick starts writing o, whose flushing flag the caller claimed.
func (o *outbox) kick() { o.w.svc.writers.schedule(o) }

// start is called when the upgrade is done: what was queued meanwhile goes
// out.
func (o *outbox) start() {
	o.mu.Lock()
	o.ready = true
	k := o.kickLocked()
	o.mu.Unlock()
	if k != nil {
		k.kick()
	}
}

// enqueue queues one frame, made of parts, to be dropped if it is not
// written by deadline (Unix nanoseconds; 0: never). It reports whether the
// caller must kick o, and whether the queue overflowed bound: then nothing
// was queued, and the client is a slow client.
// It reports whether it queued the frame (and so took a reference to share,
// parts[at]'s shared encoding, when there is one), whether the caller must
// kick o, and whether the queue overflowed bound: then nothing was queued,
// and the client is a slow client.
func (o *outbox) enqueue(deadline int64, parts [][]byte, share *sharedBytes, at int, bound int) (queued bool, kick *outbox, overflow bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing || o.closed {
		return false, nil, false
	}
	n := byteLen(parts)
	if o.size > 0 && o.size+n > bound {
		return false, nil, true
	}
	o.appendLocked(deadline, parts, n, share, at)
	return true, o.kickLocked(), false
}

// appendLocked queues one frame of n bytes; parts[at] is share's (none
// when share is nil), whose reference the caller took.
func (o *outbox) appendLocked(deadline int64, parts [][]byte, n int, share *sharedBytes, at int) {
	if deadline != 0 && o.expires == nil {
		o.expires = make([]int64, len(o.frames), cap(o.frames))
	}
	if share != nil && o.owners == nil {
		o.owners = make([]*sharedBytes, len(o.frames), cap(o.frames))
	}
	o.frames = append(o.frames, parts...)
	o.queued++
	if o.expires != nil {
		for range parts {
			o.expires = append(o.expires, deadline)
		}
	}
	own := n
	if o.owners != nil {
		for i := range parts {
			if i == at && share != nil {
				o.owners = append(o.owners, share)
				own -= len(parts[i])
			} else {
				o.owners = append(o.owners, nil)
			}
		}
	}
	o.account(n, 0)
	o.w.svc.buffered(own)
}

// releaseQueuedLocked lets go of what the queued frames hold of the
// service's budget, as they leave the queue (taken by a write, or dropped).
func (o *outbox) releaseQueuedLocked() {
	own := 0
	for i, b := range o.frames {
		if o.owners != nil && o.owners[i] != nil {
			o.owners[i].release(1)
			continue
		}
		own += len(b)
	}
	o.w.svc.buffered(-own)
	if cap(o.owners) > maxSpareSlices {
		o.owners = nil
	} else if o.owners != nil {
		clear(o.owners)
		o.owners = o.owners[:0]
	}
}

// dropQueuedLocked drops the frames not yet taken by a write.
func (o *outbox) dropQueuedLocked() {
	o.releaseQueuedLocked()
	clear(o.frames)
	o.frames, o.expires, o.queued = o.frames[:0], nil, 0
	o.account(-o.size, 0)
}

// close queues msg (if any) and then the close frame cf; nothing is queued
// after them. drop first discards what is queued and not yet being written
// (a slow client's backlog). Once cf is written the socket is half-closed
// and waits for the client's close.
func (o *outbox) close(msg, cf []byte, drop bool) (kick *outbox) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing || o.closed {
		return nil
	}
	if drop {
		o.dropQueuedLocked()
	}
	if msg != nil {
		o.appendLocked(0, [][]byte{msg}, len(msg), nil, -1)
	}
	o.closing, o.closeFrame = true, cf
	return o.kickLocked()
}

// gwsWrite takes a frame gws writes itself: only close frames (answering a
// client's close, or on a protocol error), since every other frame is ours.
// It goes last, after what is queued, unless a close is already on its way.
func (o *outbox) gwsWrite(frame []byte) {
	o.mu.Lock()
	if o.closing || o.closed {
		o.mu.Unlock()
		return
	}
	o.closing, o.fullClose, o.closeFrame = true, true, append([]byte(nil), frame...)
	k := o.kickLocked()
	o.mu.Unlock()
	if k != nil {
		k.kick()
	}
}

// gwsClose is gws closing the connection, right after its close frame, or
// because it has read the client's answer to ours: the socket closes once
// that close frame is written.
func (o *outbox) gwsClose() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.fullClose = true
	pending := o.flushing || o.closeFrame != nil && o.ready
	o.mu.Unlock()
	if !pending {
		o.closeSocket()
	}
}

// finish is the transport's end as its read loop sees it: nothing more is
// read, so what is queued is dropped, unless a close is under way (the
// service's, or gws's answer to the client's), which is written first; the
// socket closes when that is done.
func (o *outbox) finish() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	if !o.closing { // a close under way still delivers what came before it
		o.dropQueuedLocked()
	}
	o.closing, o.fullClose = true, true
	if o.flushing || (o.closeFrame != nil || len(o.frames) > 0) && o.ready {
		k := o.kickLocked()
		o.mu.Unlock()
		if k != nil {
			k.kick()
		}
		return // the writer closes the socket when it is done
	}
	o.mu.Unlock()
	o.closeSocket()
}

// abort closes the socket now, without a close frame: a write failed or
// panicked, a recovery took the connection over, or Shutdown ran out of
// time.
func (o *outbox) abort() { o.closeSocket() }

// setSocket gives the transport its hijacked connection, unless it was
// aborted before: then it reports false and the caller closes nc.
func (o *outbox) setSocket(nc net.Conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.w.nc, o.w.raw = nc, rawConn(nc)
	return true
}

// closeSocket closes the socket, once, and drops what is queued. A
// transport not hijacked yet is marked closed, so that it never is.
func (o *outbox) closeSocket() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.closed, o.closing = true, true
	o.dropQueuedLocked()
	o.closeFrame = nil
	if o.grace != nil {
		o.grace.Stop()
	}
	nc := o.w.nc
	o.mu.Unlock()
	if tc, ok := nc.(*tls.Conn); ok {
		// tls.Conn.Close first writes close_notify, waiting up to 5 s on a
		// full socket; a graceful close sent it already (CloseWrite).
		nc = tc.NetConn()
	}
	if nc != nil {
		_ = nc.Close()
	}
}

// closeWritten follows the close frame: the socket closes at once when gws
// is done with it, or else is half-closed while the read loop waits for the
// client's close frame, for closeGrace at most.
func (o *outbox) closeWritten() {
	o.mu.Lock()
	o.flushing = false // nothing is left to write
	full := o.fullClose || o.closed
	o.mu.Unlock()
	if cw, ok := o.w.nc.(interface{ CloseWrite() error }); !full && ok && cw.CloseWrite() == nil {
		o.mu.Lock()
		if !o.closed {
			o.grace = time.AfterFunc(closeGrace, o.closeSocket)
		}
		o.mu.Unlock()
		return
	}
	o.closeSocket()
}

// take hands a writer what is queued, and the close frame once nothing
// else is left. With nothing to write, writing is over (done); closeNow
// says the socket is then to be closed (the transport has ended).
func (o *outbox) take() (batch [][]byte, expires []int64, frames int, isClose, done, closeNow bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.closed:
	case len(o.frames) > 0:
		o.releaseQueuedLocked()
		batch, expires, frames = o.frames, o.expires, o.queued
		o.frames, o.expires, o.spare, o.queued = o.spare[:0], nil, nil, 0
		n := byteLen(batch)
		o.account(-n, n)
		return batch, expires, frames, false, false, false
	case o.closing && o.closeFrame != nil:
		batch = [][]byte{o.closeFrame}
		o.closeFrame = nil
		o.account(0, len(batch[0]))
		return batch, nil, 1, true, false, false
	case o.closing && o.fullClose:
		closeNow = true
	}
	o.flushing = false
	return nil, nil, 0, false, true, closeNow
}

// landed accounts for n bytes that left the outbox: written, dropped as
// expired, or lost with a failed write.
func (o *outbox) landed(n int) {
	if n == 0 {
		return
	}
	o.mu.Lock()
	o.account(0, -n)
	o.mu.Unlock()
}

// flush writes o, waiting for the socket as long as the write timeout
// allows for each chunk, until the queue is empty, then the close frame if
// one is due. It starts with rest, what a non-blocking write left over. It
// runs on a goroutine of its own, which owns writing o until it returns.
func (o *outbox) flush(rest [][]byte) {
	defer o.w.svc.active.done()
	defer o.recoverWrite()
	batch, isClose := rest, false
	for {
		if len(batch) > 0 {
			n := byteLen(batch)
			err := o.w.writeBlocking(batch)
			o.landed(n)
			if err != nil {
				o.abort()
				return
			}
			if isClose {
				o.closeWritten()
				return
			}
		}
		var expires []int64
		var done, closeNow bool
		batch, expires, _, isClose, done, closeNow = o.take()
		if done {
			// The write deadline stays: the writers' raw writes ignore it,
			// and every blocking write sets its own.
			if closeNow {
				o.closeSocket()
			}
			return
		}
		if expires != nil {
			var dropped int
			batch, dropped = dropExpired(batch, expires)
			o.landed(dropped)
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

// writeChunk bounds one blocking write: a socket that does not take this
// much within the write timeout belongs to a slow client, while a client
// that reads steadily never hits the timeout however large the backlog.
const writeChunk = 256 << 10

// writeBlocking writes batch to the socket in chunks, each within the write
// timeout. TLS connections are written here too: after a timed-out write a
// tls.Conn is unusable, so a chunk is the most one timeout can cost.
func (w *wire) writeBlocking(batch [][]byte) error {
	for len(batch) > 0 {
		var chunk [][]byte
		chunk, batch = splitChunk(batch, writeChunk)
		callWriteHook(chunk)
		_ = w.nc.SetWriteDeadline(time.Now().Add(w.svc.cfg.WriteTimeout))
		bufs := net.Buffers(chunk)
		if _, err := bufs.WriteTo(w.nc); err != nil {
			return err
		}
	}
	return nil
}

// splitChunk returns the first limit bytes of batch (whole slices, and a
// part of the one that crosses the limit) and the rest.
func splitChunk(batch [][]byte, limit int) (chunk, rest [][]byte) {
	n := 0
	for i, b := range batch {
		if n+len(b) > limit && n > 0 || n+len(b) > limit && i == 0 {
			k := limit - n
			if k <= 0 {
				return batch[:i:i], batch[i:]
			}
			chunk = append(batch[:i:i], b[:k])
			rest = append([][]byte{b[k:]}, batch[i+1:]...)
			return chunk, rest
		}
		n += len(b)
	}
	return batch, nil
}

// recoverWrite turns a panic on o's write path into the end of that
// transport alone, counted.
func (o *outbox) recoverWrite() {
	if r := recover(); r != nil {
		o.w.svc.panicked("write", r)
		o.w.c.closeFrom(o.w, DisconnectInternalError)
		o.abort()
		// The panicking writer owned o's writing: what it had taken is gone.
		o.mu.Lock()
		o.account(0, -o.inflight)
		o.mu.Unlock()
	}
}

// testHookWrite, when set by a test, sees every slice before it is written.
var testHookWrite atomic.Pointer[func([]byte)]

// callWriteHook shows a test's hook what is about to be written.
func callWriteHook(batch [][]byte) {
	if hook := testHookWrite.Load(); hook != nil {
		for _, b := range batch {
			(*hook)(b)
		}
	}
}

// pongFrame answers a WebSocket ping with the same payload.
func pongFrame(payload []byte) []byte { return wsframe.Frame(wsframe.OpPong, payload) }
