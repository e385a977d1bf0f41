package pubsub

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

// wire is one transport of a connection: a WebSocket over one TCP (or TLS)
// connection, with its outbound queue and its read loop. A reliable
// connection may have several over its life, one at a time.
//
// gws parses the frames, but every byte it reads and writes passes through
// the wire (wireConn): inbound, so that an unfinished message is bounded in
// time and in the service's inbound budget; outbound, so that gws's own
// close frames join the outbox rather than being written between the
// writers' frames.
type wire struct {
	svc *Service
	c   *conn
	out outbox

	nc       net.Conn        // the hijacked connection; set once, under out.mu, before the upgrade
	raw      syscall.RawConn // nc's socket, for non-blocking writes and reads; nil for TLS
	socket   *gws.Conn
	upgraded atomic.Bool // the 101 is written: gws's writes go to the outbox

	previous <-chan struct{} // the replaced transport's readDone, if any
	readDone chan struct{}   // closed when the read loop has ended
	closeErr error           // what gws reported on close; read loop only
	in       inbound         // read loop only
}

func newWire(c *conn) *wire {
	w := &wire{svc: c.svc, c: c, readDone: make(chan struct{})}
	w.out.w = w
	return w
}

// clientClosed reports whether the client ended the transport with a close
// frame of its own (any code, or none): that ends a reliable session too.
// Read loop only, after it ended.
func (w *wire) clientClosed() bool {
	var ce *gws.CloseError
	return errors.As(w.closeErr, &ce)
}

// upgrade completes the WebSocket handshake on the hijacked connection nc,
// whose buffered reader br may hold bytes the client sent after its request.
// A transport aborted meanwhile (a later recovery took over) is not
// upgraded: its socket is closed.
func (w *wire) upgrade(u *gws.Upgrader, nc net.Conn, br *bufio.Reader, r *http.Request) error {
	if !w.out.setSocket(nc) {
		_ = nc.Close()
		return errTransportAborted
	}
	wc := &wireConn{Conn: nc, w: w}
	if w.raw != nil {
		wc.raw.init(w.raw)
	}
	if br != nil && br.Buffered() > 0 {
		wc.pre = br
	}
	socket, err := u.UpgradeFromConn(wc, bufio.NewReaderSize(wc, readBufferSize), r)
	if err != nil {
		return err
	}
	socket.Session().(*session).wire = w
	w.socket = socket
	w.upgraded.Store(true)
	w.c.attach(w) // open before "connected", with its reconnection token, goes out
	w.out.start()
	return nil
}

// errTransportAborted refuses the upgrade of a transport that was replaced
// before it began.
var errTransportAborted = errors.New("pubsub: the transport was replaced before its upgrade")

// readLoop reads the transport's messages and hands them to the
// connection, one at a time (transport.OnMessage), until the transport
// ends. An idle connection's goroutine waits in here: one small frame of
// ours above gws's loop, since a goroutine's stack doubles past 2 KiB.
func (w *wire) readLoop() {
	defer w.readEnded()
	w.socket.ReadLoop()
}

// readStarted is the read loop's start (transport.OnOpen): it waits for
// the read loop of the transport this one replaced to end, so that the
// connection's frames are never handled by two goroutines at once.
func (w *wire) readStarted() {
	if w.previous != nil {
		<-w.previous
	}
	// On a goroutine of its own, waited for: opening (events, groups,
	// observers) runs deep, and would double the stack an idle read loop
	// keeps for its connection's life (4 KiB more per idle connection). A
	// panic is raised again here, where the read loop recovers it.
	done := make(chan any, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- stackedPanic{r, debug.Stack()} // its stack, for the log
				return
			}
			done <- nil
		}()
		w.c.opened()
	}()
	if p := <-done; p != nil {
		panic(p)
	}
}

// stackedPanic is a panic recovered on another goroutine and raised again,
// with the stack where it happened.
type stackedPanic struct {
	value any
	stack []byte
}

// readEnded follows the read loop: a panic in it ends this transport
// alone, then the connection learns that its transport ended.
func (w *wire) readEnded() {
	if r := recover(); r != nil {
		w.panicked(r)
	}
	w.in.release(w.svc)
	w.c.transportEnded(w)
	close(w.readDone)
	w.svc.active.done()
}

// panicked closes the connection after a panic on this transport's read
// path, if the transport is still the connection's.
func (w *wire) panicked(r any) {
	w.svc.panicked("read", r)
	w.c.closeFrom(w, DisconnectInternalError)
}

// handle hands one message to the connection. A panic closes the
// connection; the read loop goes on until its close is done.
func (w *wire) handle(m *gws.Message) {
	defer w.handled(m)
	w.c.lastSeen.Store(time.Now().UnixNano())
	w.c.handleFrame(m.Opcode == gws.OpcodeBinary, m.Bytes())
}

func (w *wire) handled(m *gws.Message) {
	w.in.fresh = true // the next message's time starts now, not while this one was handled
	m.Close()
	if r := recover(); r != nil {
		w.panicked(r)
	}
}

// wireConn is the net.Conn gws reads and writes: the hijacked connection,
// seen through the wire.
type wireConn struct {
	net.Conn
	w   *wire
	pre *bufio.Reader // what the HTTP server read past the request
	raw rawReader     // the socket's, where it has one (not TLS)
	n   int           // what the last read returned, for follow
	err error
}

// Read reads for gws and follows the frames it returns, so that an
// unfinished message is bounded (inbound.scan). An idle connection waits in
// here: its frame is kept small (what a read returned is passed on in
// fields, not arguments, whose spill room would be in this frame).
func (wc *wireConn) Read(p []byte) (int, error) {
	if wc.pre != nil || wc.w.in.armed {
		return wc.readBounded(p)
	}
	if wc.raw.rc != nil {
		wc.raw.read(p)
		wc.n, wc.err = wc.raw.n, wc.raw.result()
	} else {
		wc.n, wc.err = wc.Conn.Read(p)
	}
	return wc.follow(p)
}

// readBounded reads the bytes the HTTP server read past the request, or
// under the deadline of an unfinished message, which a new message starts
// afresh.
func (wc *wireConn) readBounded(p []byte) (int, error) {
	w := wc.w
	if w.in.armed && w.in.fresh {
		w.in.arm(wc.Conn, w.svc.cfg.MessageTimeout)
	}
	var n int
	var err error
	if wc.pre != nil {
		n, err = wc.pre.Read(p)
		if wc.pre.Buffered() == 0 {
			wc.pre = nil
		}
	} else {
		n, err = wc.Conn.Read(p)
	}
	wc.n, wc.err = n, err
	return wc.follow(p)
}

// follow scans what a read returned (n, err), or acts on its error: a
// passed message deadline closes the client.
func (wc *wireConn) follow(p []byte) (int, error) {
	w, n, err := wc.w, wc.n, wc.err
	wc.err = nil
	if err != nil {
		if w.in.armed && errors.Is(err, os.ErrDeadlineExceeded) {
			if w.c.closeFrom(w, DisconnectMessageTimeout) {
				w.svc.messageTimeouts.Add(1)
			}
		}
		return n, err
	}
	if !w.upgraded.Load() {
		return n, nil // the handshake's own bytes, if any
	}
	if serr := w.in.scan(p[:n], w.svc); serr != nil {
		if w.c.closeFrom(w, DisconnectInboundBudget) {
			w.svc.inboundBudgetDisconnects.Add(1)
		}
		return 0, serr
	}
	w.in.deadline(wc.Conn, w.svc.cfg.MessageTimeout)
	return n, nil
}

// Write takes gws's writes: the 101 before the upgrade, then only close
// frames, which go to the outbox.
func (wc *wireConn) Write(p []byte) (int, error) {
	if !wc.w.upgraded.Load() {
		return wc.Conn.Write(p)
	}
	wc.w.out.gwsWrite(p)
	return len(p), nil
}

// Close is gws closing the connection: after the upgrade, once the outbox
// has written its close frame.
func (wc *wireConn) Close() error {
	if !wc.w.upgraded.Load() {
		return wc.Conn.Close()
	}
	wc.w.out.gwsClose()
	return nil
}

// inbound follows the frames of a transport's inbound byte stream (client
// frames are masked: a 2-byte head, 0, 2 or 8 bytes of length, a 4-byte
// mask), to know when a message is unfinished and how many bytes gws holds
// for it.
type inbound struct {
	head     [14]byte
	headLen  int   // bytes of head read
	headNeed int   // the head's length once known; 0 between frames
	left     int64 // payload bytes of the current frame not yet read
	inFrame  bool  // a frame is under way
	data     bool  // the current frame is a data frame
	fin      bool  // the current frame ends its message
	frag     bool  // a fragmented message is under way
	reserved int64 // bytes of the service's inbound budget this message holds
	armed    bool  // a read deadline bounds the unfinished message
	fresh    bool  // the read loop asked for a new message: its time starts at the next read
}

// errInboundBudget ends a transport whose message would pass the service's
// inbound budget.
var errInboundBudget = errors.New("pubsub: the service's inbound budget is exhausted")

// scan follows p, the next bytes of the stream. It reserves the payload of
// data frames that gws must hold whole (large frames, and the fragments of
// a message) from the service's inbound budget, and releases it when the
// message is complete.
func (in *inbound) scan(p []byte, s *Service) error {
	for len(p) > 0 {
		if in.left > 0 {
			k := min(int64(len(p)), in.left)
			in.left -= k
			p = p[k:]
			if in.left == 0 {
				in.frameDone(s)
			}
			continue
		}
		// A frame head.
		in.inFrame = true
		in.head[in.headLen] = p[0]
		in.headLen++
		p = p[1:]
		if in.headLen == 2 {
			in.headNeed = 2
			switch in.head[1] & 0x7f {
			case 126:
				in.headNeed += 2
			case 127:
				in.headNeed += 8
			}
			if in.head[1]&0x80 != 0 {
				in.headNeed += 4
			}
		}
		if in.headLen < 2 || in.headLen < in.headNeed {
			continue
		}
		if err := in.headDone(s); err != nil {
			return err
		}
	}
	return nil
}

// headDone starts the payload of the frame whose head was read.
func (in *inbound) headDone(s *Service) error {
	var size uint64
	switch l := in.head[1] & 0x7f; l {
	case 126:
		size = uint64(in.head[2])<<8 | uint64(in.head[3])
	case 127:
		for _, b := range in.head[2:10] {
			size = size<<8 | uint64(b)
		}
	default:
		size = uint64(l)
	}
	in.headLen, in.headNeed = 0, 0
	opcode := in.head[0] & 0x0f
	in.data, in.fin = opcode < 8, in.head[0]&0x80 != 0
	if in.data {
		if opcode != 0 && !in.fin {
			in.frag = true
		}
		// gws refuses a frame over MaxMessageSize before reading it, so
		// only what it will hold counts.
		if size <= uint64(s.cfg.MaxMessageSize) && (in.frag || size > readBufferSize) {
			if !s.reserveInbound(int64(size)) {
				return errInboundBudget
			}
			in.reserved += int64(size)
		}
	}
	in.left = int64(min(size, 1<<62))
	if in.left == 0 {
		in.frameDone(s)
	}
	return nil
}

// frameDone ends a frame; the final frame of a message ends the message.
func (in *inbound) frameDone(s *Service) {
	in.inFrame = false
	if in.data && in.fin {
		in.frag = false
		in.release(s)
	}
}

// release gives the message's reservation back.
func (in *inbound) release(s *Service) {
	if in.reserved != 0 {
		s.reserveInbound(-in.reserved)
		in.reserved = 0
	}
}

// deadline bounds an unfinished message: from the read loop's request for
// it to its last byte, MessageTimeout at most, whatever else (pings)
// arrives meanwhile; the time the read loop spends handling the previous
// message does not count. A message read whole costs no clock and no
// deadline.
func (in *inbound) deadline(nc net.Conn, timeout time.Duration) {
	unfinished := in.inFrame || in.frag
	switch {
	case unfinished && !in.armed:
		in.arm(nc, timeout)
	case !unfinished && in.armed:
		in.armed = false
		_ = nc.SetReadDeadline(time.Time{})
	}
}

func (in *inbound) arm(nc net.Conn, timeout time.Duration) {
	in.armed, in.fresh = true, false
	_ = nc.SetReadDeadline(time.Now().Add(timeout))
}
