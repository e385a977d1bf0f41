package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/embedwps/pubsub/protocol"
)

// Group streams (spec §6.1, the JSON subprotocols only): a publisher opens
// a stream to a group and writes numbered fragments; the service
// acknowledges each (streamAck), refuses a gap (streamNack), and ends the
// stream with streamClosed. Receivers get the fragments as group messages
// carrying Message.Stream, the last one marked End.
//
// A GroupStreamWriter keeps every fragment until the service acknowledged
// it: on a recovered transport the unacknowledged ones are written again
// (the service acknowledges again what it already had), so a reliable
// connection's stream survives a drop. A new connection ends its streams,
// written and read, with ErrConnectionLost: the service ended them with the
// old session.

// streamWindow is how many fragments a writer may have unacknowledged:
// Write waits past it, so that a publisher faster than the service holds a
// bounded amount of memory.
const streamWindow = 256

// nackBackoff is the wait before a fragment the service could not publish
// is written again.
const nackBackoff = 20 * time.Millisecond

// StreamOptions are the options of OpenGroupStream.
type StreamOptions struct {
	// StreamID names the stream; "" is a random one. It must be unique
	// among the connection's open streams.
	StreamID string
	// IdleTimeout is how long the service keeps the stream open without a
	// fragment or keep-alive (0: its default, 5 minutes); it is sent in
	// whole milliseconds.
	IdleTimeout time.Duration
	// NoEcho keeps the stream's fragments from this client's connection.
	NoEcho bool
}

// GroupStreamWriter is a stream this client publishes to a group, opened by
// OpenGroupStream. Its methods are safe for concurrent use; fragments go
// out in the order Write was called.
type GroupStreamWriter struct {
	c     *Client
	id    string
	group string

	started chan struct{} // closed on the first streamAck
	done    chan struct{} // closed when the stream ended; err is then set
	opening func()        // cancels OpenGroupStream's wait for a transport
	// released is closed when the id is free again: at once when the
	// stream ends, after the service's streamClosed when given up.
	released chan struct{}
	// abandonedOn is the transport a given-up stream's end last went on
	// (guarded by mu), and abandonWhy its error message.
	abandonedOn *transport
	abandonWhy  string

	mu sync.Mutex
	// frames are the written fragments not yet acknowledged, the first
	// with sequence id base; sent counts how many of them went out on the
	// current transport (reset to 0 on a recovered one).
	frames   [][]byte
	base     uint64
	sent     int
	on       *transport    // the transport sent and endSent count on
	next     uint64        // the sequence id of the next Write
	changed  chan struct{} // closed and replaced when the window moves
	writing  bool          // a flush is writing
	again    bool          // a flush was asked for while one was writing
	end      []byte        // the streamEnd frame, once End or Abort was called
	endSent  bool          // end went out on transport on
	endTries int           // how many transports end went out on
	baseOn   uint64        // base when on became the transport
	stalls   int           // transports in a row that acknowledged nothing
	rewoundS uint64        // the sequence id a streamNack last rewound to
	rewinds  int           // how many times in a row it rewound to rewoundS
	paused   bool          // until a streamNack's rewind: nothing is written
	err      error         // why the stream ended (nil: ended normally)
	ended    bool
}

// OpenGroupStream opens a stream to group and returns once the service
// accepted it. It fails at once on the protobuf subprotocols, with an error
// wrapping protocol.ErrNotInProtobuf. The id of a stream the client gave up
// is free again once the service closed that stream: until then,
// OpenGroupStream with it waits.
func (c *Client) OpenGroupStream(ctx context.Context, group string, opts StreamOptions) (*GroupStreamWriter, error) {
	id := opts.StreamID
	if id == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	req := protocol.Request{Type: protocol.StreamStart, Group: group, StreamID: id, NoEcho: opts.NoEcho}
	if opts.IdleTimeout > 0 {
		req.Stream.IdleTimeoutMs = uint64(max(opts.IdleTimeout/time.Millisecond, 1))
	}
	start, err := c.proto.AppendRequest(nil, req)
	if err != nil {
		return nil, fmt.Errorf("client: open stream on %s: %w", c.proto.Name(), err)
	}
	// Waiting for a transport ends when the stream does (close cancels
	// wctx): its connection ended (a new one is not the stream's), or the
	// service refused it.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &GroupStreamWriter{c: c, id: id, group: group, base: 1, next: 1, opening: cancel,
		started: make(chan struct{}), done: make(chan struct{}), released: make(chan struct{}), changed: make(chan struct{})}
	for {
		c.mu.Lock()
		if c.run == nil {
			c.mu.Unlock()
			return nil, ErrStopped
		}
		old := c.outStreams[id]
		if old == nil {
			c.outStreams[id] = s
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		select {
		case <-old.done:
		default:
			return nil, fmt.Errorf("client: the stream %q is open already", id)
		}
		// Given up, and not yet closed by the service: its id is free
		// once the service's answers to it have come.
		select {
		case <-old.released:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for attempt := 1; ; attempt++ {
		r, t, err := c.transport(wctx)
		select {
		case <-s.done:
			return nil, s.openErr()
		default:
		}
		if err != nil {
			s.close(err)
			return nil, err
		}
		if attempt > maxResends+1 {
			s.giveUp(&lostError{what: "stream " + strconv.Quote(id) + " start", transports: attempt - 1}, t, "the publisher gave up opening the stream")
			return nil, s.openErr()
		}
		// A start sent again, on a recovered transport, is answered as the
		// first was.
		if err := t.write(start); err != nil {
			c.logf("write of stream start %s failed: %v", id, err)
		}
		select {
		case <-s.started:
			return s, nil
		case <-s.done:
			return nil, s.openErr()
		case <-t.done:
		case <-r.ctx.Done():
			s.close(ErrStopped)
			return nil, ErrStopped
		case <-ctx.Done():
			// Given up: a start the service took is ended, so that it
			// does not hold the group's streams until its idle timeout.
			s.giveUp(ctx.Err(), t, "the publisher gave up opening the stream")
			return nil, ctx.Err()
		}
	}
}

// openErr is why a stream ended before it opened.
func (s *GroupStreamWriter) openErr() error {
	if err := s.Err(); err != nil {
		return err
	}
	return ErrStreamEnded
}

// ID is the stream's id.
func (s *GroupStreamWriter) ID() string { return s.id }

// Done is closed when the stream ended: by End or Abort, by the service
// (an idle timeout, a lost permission), or with the connection.
func (s *GroupStreamWriter) Done() <-chan struct{} { return s.done }

// Err is why the stream ended, once Done is closed: nil when End ended it,
// a *StreamError when the service closed it, ErrConnectionLost or
// ErrStopped with the connection.
func (s *GroupStreamWriter) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Write sends a fragment of dataType (protocol.Text, JSON, Binary). It
// returns once the fragment is queued to go out: at once unless 256 are
// unacknowledged, and then when the service acknowledged enough of them, or
// ctx ends. A stream that ended fails it, with Err.
func (s *GroupStreamWriter) Write(ctx context.Context, dataType protocol.DataType, data []byte) error {
	s.mu.Lock()
	seq := s.next
	s.mu.Unlock()
	// Encoded before the sequence id is taken, so that a refused payload
	// leaves no hole; the id is fixed again below if another Write won.
	frame, err := s.c.proto.AppendRequest(nil, protocol.Request{Type: protocol.StreamData, StreamID: s.id,
		DataType: dataType, Data: data, Stream: protocol.StreamRequest{SequenceID: seq}})
	if err != nil {
		return err
	}
	for {
		s.mu.Lock()
		switch {
		case s.ended:
			err := s.err
			s.mu.Unlock()
			if err == nil {
				err = ErrStreamEnded
			}
			return err
		case s.end != nil:
			s.mu.Unlock()
			return ErrStreamEnded
		case len(s.frames) >= streamWindow:
			changed := s.changed
			s.mu.Unlock()
			select {
			case <-changed:
			case <-s.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if s.next != seq {
			seq = s.next
			frame, _ = s.c.proto.AppendRequest(frame[:0], protocol.Request{Type: protocol.StreamData, StreamID: s.id,
				DataType: dataType, Data: data, Stream: protocol.StreamRequest{SequenceID: seq}})
		}
		s.frames = append(s.frames, frame)
		s.next++
		s.mu.Unlock()
		s.flush()
		return nil
	}
}

// KeepAlive tells the service the stream is not idle, without data.
func (s *GroupStreamWriter) KeepAlive(ctx context.Context) error {
	frame, err := s.c.proto.AppendRequest(nil, protocol.Request{Type: protocol.StreamData, StreamID: s.id, Stream: protocol.StreamRequest{KeepAlive: true}})
	if err != nil {
		return err
	}
	_, t, err := s.c.transport(ctx)
	if err != nil {
		return err
	}
	return t.write(frame)
}

// End ends the stream after the fragments written, and waits until the
// service acknowledged them all and closed it (receivers then get the
// terminal fragment). The streamEnd goes once every fragment is
// acknowledged, so that one the service refused is written again before
// it. It returns nil then, or why the stream ended
// otherwise.
func (s *GroupStreamWriter) End(ctx context.Context) error {
	return s.finish(ctx, nil)
}

// Abort ends the stream with an error: receivers see it as a *StreamError
// named UserError, with message and userErrorCode. It waits as End does,
// and returns nil once the service closed the stream.
func (s *GroupStreamWriter) Abort(ctx context.Context, message, userErrorCode string) error {
	return s.finish(ctx, &protocol.StreamError{Message: message, UserErrorCode: userErrorCode})
}

func (s *GroupStreamWriter) finish(ctx context.Context, e *protocol.StreamError) error {
	frame, err := s.c.proto.AppendRequest(nil, protocol.Request{Type: protocol.StreamEnd, StreamID: s.id, Stream: protocol.StreamRequest{Error: e}})
	if err != nil {
		return err
	}
	s.mu.Lock()
	switch {
	case s.ended:
		err := s.err
		s.mu.Unlock()
		return err
	case s.end != nil:
		s.mu.Unlock()
		return ErrStreamEnded
	}
	s.end = frame
	s.mu.Unlock()
	s.flush()
	select {
	case <-s.done:
		return s.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush writes, in order, what has not gone out on the current transport:
// the fragments, then the end; on a transport other than the last one, all
// that is unacknowledged (a recovered transport: the service acknowledges
// again what it had). One caller writes at a time: a flush asked for
// meanwhile is done by it. It holds no lock while writing.
func (s *GroupStreamWriter) flush() {
	s.mu.Lock()
	if s.writing {
		s.again = true
		s.mu.Unlock()
		return
	}
	s.writing = true
	for {
		s.again = false
		s.mu.Unlock()
		t := s.c.currentTransport()
		s.mu.Lock()
		if t != nil && !s.ended && !s.paused {
			if s.on != t {
				// A stream the service acknowledged nothing of on the last
				// transports is given up, as a request is (sendWithAck).
				if s.on != nil && s.base == s.baseOn && (len(s.frames) > 0 || s.endSent) {
					s.stalls++
				} else {
					s.stalls = 0
				}
				if s.stalls > maxResends {
					code := s.on.code
					s.writing = false
					s.mu.Unlock()
					s.giveUp(&lostError{what: "stream " + strconv.Quote(s.id), transports: s.stalls, code: code},
						t, "the publisher gave the stream up: no ack on "+strconv.Itoa(maxResends+1)+" transports")
					return
				}
				s.on, s.sent, s.endSent, s.baseOn = t, 0, false, s.base
			}
			// A copy: an ack clears the window's entries while they are
			// written.
			frames := append([][]byte(nil), s.frames[s.sent:]...)
			s.sent = len(s.frames)
			// The end waits for every fragment's ack: a fragment the
			// service refuses is written again, and must come before it.
			if s.end != nil && !s.endSent && len(s.frames) == 0 {
				frames = append(frames, s.end)
				s.endSent = true
				s.endTries++
			}
			if len(frames) > 0 {
				s.mu.Unlock()
				for _, f := range frames {
					if err := t.write(f); err != nil {
						// The socket is going: the next transport
						// writes them again.
						s.c.logf("stream %s: write failed: %v", s.id, err)
						break
					}
				}
				s.mu.Lock()
				continue
			}
		}
		if !s.again {
			break
		}
	}
	s.writing = false
	s.mu.Unlock()
}

// ack takes a streamAck or streamNack: every fragment below expected
// arrived. A streamNack other than for a gap (a fragment the service could
// not publish) rewinds to expected; a gap rewinds once per expected id, as
// the fragments after a refused one are refused as gaps too. It reports
// whether something is to be written: the rewound fragments, or the end
// that waited for the last ack.
func (s *GroupStreamWriter) ack(expected uint64, nack bool, name string) (flush, giveUp bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false, false
	}
	select {
	case <-s.started:
	default:
		close(s.started)
	}
	if expected < s.base || expected > s.next {
		return false, false // stale, or not ours to believe
	}
	if n := int(expected - s.base); n > 0 {
		clear(s.frames[:n])
		s.frames = s.frames[n:]
		s.sent = max(s.sent-n, 0)
		s.base = expected
		close(s.changed)
		s.changed = make(chan struct{})
	}
	if !nack || name == protocol.StreamInvalidSequenceID && s.rewoundS == expected {
		return len(s.frames) == 0 && s.end != nil && !s.endSent, false
	}
	// A fragment refused again and again is given up, as a request is.
	if s.rewoundS == expected {
		s.rewinds++
	} else {
		s.rewinds = 1
	}
	if s.rewinds > maxResends {
		return false, true
	}
	s.rewoundS = expected
	s.paused = true    // what would go out now would be refused as a gap
	return true, false // rewound by rewind, after a pause
}

// rewind writes again, from the oldest unacknowledged fragment, what
// a streamNack refused.
func (s *GroupStreamWriter) rewind() {
	s.mu.Lock()
	s.sent, s.endSent, s.paused = 0, false, false
	s.mu.Unlock()
	s.flush()
}

// giveUp ends a stream the client gives up, with err, and ends it at the
// service on t (abandon). Its id stays taken until the service's
// streamClosed for it frees it (its end is written again on a recovered
// transport) or the connection ends, so that the service's answers to it
// never reach a stream opened again with that id.
func (s *GroupStreamWriter) giveUp(err error, t *transport, why string) {
	s.markEnded(err)
	s.abandon(t, why)
}

// abandon ends at the service, on t, a stream the client gave up, so that
// its receivers are told and its slots freed at once rather than at its
// idle timeout.
// It goes on the current transport when there is one (t may have ended
// meanwhile, and its answer with it), once per transport; a recovered
// transport writes it again (resumeStreams) until the service answers.
func (s *GroupStreamWriter) abandon(t *transport, why string) {
	if cur := s.c.currentTransport(); cur != nil {
		t = cur
	}
	s.mu.Lock()
	if s.abandonedOn == t {
		s.mu.Unlock()
		return
	}
	s.abandonedOn, s.abandonWhy = t, why
	s.mu.Unlock()
	_ = s.c.writeRequest(t, protocol.Request{Type: protocol.StreamEnd, StreamID: s.id,
		Stream: protocol.StreamRequest{Error: &protocol.StreamError{Message: why}}})
}

// closed takes the service's streamClosed: the stream ended, with why.
func (s *GroupStreamWriter) closed(m protocol.ServerMessage) {
	var err error
	if m.ErrorName != "" {
		s.mu.Lock()
		// The end written again on a recovered transport finds the stream
		// gone when the first end arrived: the service ended it then, with
		// every fragment, as the end came after them.
		already := m.ErrorName == protocol.StreamNotFound && s.endTries > 1 && len(s.frames) == 0
		s.mu.Unlock()
		if !already {
			err = &StreamError{StreamID: s.id, Name: m.ErrorName, Message: m.ErrorMessage}
		}
	}
	s.close(err)
}

// close ends the stream with err (nil: normally), once, and frees its id.
func (s *GroupStreamWriter) close(err error) {
	s.markEnded(err)
	s.release()
}

// release frees the stream's id for a new stream.
func (s *GroupStreamWriter) release() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.c.outStreams[s.id] == s {
		delete(s.c.outStreams, s.id)
		close(s.released)
	}
}

// markEnded ends the stream with err (nil: normally), once.
func (s *GroupStreamWriter) markEnded(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended, s.err = true, err
	s.frames = nil
	close(s.done)
	s.opening()
}

// GroupStream is a stream received from a group, handed to
// Options.OnGroupStream when its first fragment came. Its fragments are
// kept for Next, in order, without a bound: read them.
type GroupStream struct {
	Group    string
	StreamID string

	c      *Client
	key    streamKey
	mu     sync.Mutex
	buf    []Message
	err    error         // io.EOF, or why it ended; nil while open
	notify chan struct{} // closed and replaced when buf or err changes
	timer  *time.Timer
}

type streamKey struct{ group, id string }

// Next returns the stream's next fragment; at the end, io.EOF when it
// ended normally, or a *StreamError (a publisher's Abort is named
// UserError), ErrLeftGroup, ErrConnectionLost or ErrStopped.
func (s *GroupStream) Next(ctx context.Context) (Message, error) {
	for {
		s.mu.Lock()
		if len(s.buf) > 0 {
			m := s.buf[0]
			s.buf[0] = Message{}
			s.buf = s.buf[1:]
			s.mu.Unlock()
			return m, nil
		}
		err, notify := s.err, s.notify
		s.mu.Unlock()
		if err != nil {
			return Message{}, err
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return Message{}, ctx.Err()
		}
	}
}

func (s *GroupStream) push(m *Message, end bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if m != nil {
		s.buf = append(s.buf, *m)
	}
	if end {
		s.err = err
		s.timer.Stop()
	}
	close(s.notify)
	s.notify = make(chan struct{})
}

// received routes a group message that is a stream's fragment to its
// GroupStream, making one on its first fragment. It runs on the read
// goroutine, before the message's OnGroupMessage is posted.
func (c *Client) received(r *run, m Message) {
	key := streamKey{m.Group, m.Stream.ID}
	c.mu.Lock()
	s := c.inStreams[key]
	isNew := s == nil
	if isNew && c.leftGroups[m.Group] {
		c.mu.Unlock()
		return // a late fragment of a group left
	}
	if isNew {
		s = &GroupStream{Group: m.Group, StreamID: m.Stream.ID, c: c, key: key, notify: make(chan struct{})}
		s.timer = time.AfterFunc(c.opts.StreamIdleTimeout, func() { c.streamIdle(s) })
		c.inStreams[key] = s
	} else {
		s.timer.Reset(c.opts.StreamIdleTimeout)
	}
	if m.Stream.End {
		delete(c.inStreams, key)
	}
	c.mu.Unlock()
	if isNew {
		r.events.post(func() { c.opts.OnGroupStream(s) })
	}
	if !m.Stream.End {
		s.push(&m, false, nil)
		return
	}
	// The terminal fragment carries data only when its publisher gave it.
	var last *Message
	if len(m.Data) > 0 {
		last = &m
	}
	var err error = io.EOF
	if e := m.Stream.Error; e != nil {
		err = &StreamError{StreamID: s.StreamID, Name: e.Name, Message: e.Message, UserErrorCode: e.UserErrorCode}
	}
	s.push(last, true, err)
}

// streamIdle ends a received stream from which nothing came for
// StreamIdleTimeout: its end was lost, or its publisher went quiet.
func (c *Client) streamIdle(s *GroupStream) {
	c.mu.Lock()
	mine := c.inStreams[s.key] == s
	if mine {
		delete(c.inStreams, s.key)
	}
	c.mu.Unlock()
	if mine {
		s.push(nil, true, &StreamError{StreamID: s.StreamID, Name: protocol.StreamIdleTimeout,
			Message: fmt.Sprintf("no fragment came for %v", c.opts.StreamIdleTimeout)})
	}
}

// endStreams ends every stream, written and received, with err: the
// connection they belonged to ended.
func (c *Client) endStreams(err error) {
	c.mu.Lock()
	out := make([]*GroupStreamWriter, 0, len(c.outStreams))
	for _, s := range c.outStreams {
		out = append(out, s)
	}
	in := make([]*GroupStream, 0, len(c.inStreams))
	for _, s := range c.inStreams {
		in = append(in, s)
	}
	clear(c.inStreams)
	c.mu.Unlock()
	for _, s := range out {
		s.close(err)
	}
	for _, s := range in {
		s.push(nil, true, err)
	}
}

// endReceivedStreams ends the streams of group being received with err.
func (c *Client) endReceivedStreams(group string, err error) {
	var in []*GroupStream
	c.mu.Lock()
	for k, s := range c.inStreams {
		if k.group == group {
			in = append(in, s)
			delete(c.inStreams, k)
		}
	}
	c.mu.Unlock()
	for _, s := range in {
		s.push(nil, true, err)
	}
}

// resumeStreams writes again, on the recovered transport t, what the
// streams written had unacknowledged, and the end of the streams given up
// and not yet closed by the service (the first may not have arrived, and
// its answer went with the old transport).
func (c *Client) resumeStreams(t *transport) {
	c.mu.Lock()
	out := make([]*GroupStreamWriter, 0, len(c.outStreams))
	for _, s := range c.outStreams {
		out = append(out, s)
	}
	c.mu.Unlock()
	for _, s := range out {
		select {
		case <-s.done: // given up: only those keep their id after their end
			s.mu.Lock()
			why := s.abandonWhy
			s.mu.Unlock()
			s.abandon(t, why)
		default:
			s.flush()
		}
	}
}

// handleStream takes a publisher's streamAck, streamNack or streamClosed,
// on the read goroutine. A rewind is written by another goroutine: the read
// goroutine never writes.
func (c *Client) handleStream(r *run, t *transport, m protocol.ServerMessage) {
	c.mu.Lock()
	s := c.outStreams[m.StreamID]
	c.mu.Unlock()
	if s == nil {
		return
	}
	switch m.Type {
	case protocol.StreamAck, protocol.StreamNack:
		flush, giveUp := s.ack(m.ExpectedSequenceID, m.Type == protocol.StreamNack, m.ErrorName)
		switch {
		case giveUp:
			s.markEnded(&StreamError{StreamID: s.id, Name: m.ErrorName, Message: m.ErrorMessage})
			r.wg.Add(1)
			go func() { // see giveUp
				defer r.wg.Done()
				s.abandon(t, fmt.Sprintf("the publisher gave the stream up: fragment %d was refused %d times", m.ExpectedSequenceID, maxResends+1))
			}()
		case flush:
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				// A fragment the service could not publish: not at once
				// again (its broker may be catching up), as the JS client
				// backs off its sends.
				if m.Type == protocol.StreamNack {
					if sleep(r.ctx, nackBackoff) {
						s.rewind()
					}
					return
				}
				s.flush()
			}()
		}
	case protocol.StreamClosed:
		s.closed(m)
	}
}

// currentTransport is the open transport, or nil between two.
func (c *Client) currentTransport() *transport {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.run == nil {
		return nil
	}
	return c.run.t
}
