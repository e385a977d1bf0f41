// Package client is a Go client for Azure Web PubSub, in the shape of the
// official @azure/web-pubsub-client: it joins and leaves groups, sends to
// groups and events with acks, invokes events, writes and reads group
// streams, and receives group and server messages, over json.reliable.webpubsub.azure.v1 (the default),
// json.webpubsub.azure.v1 or their protobuf counterparts. It works against
// Azure's service and against this module's own server alike.
//
// On the reliable subprotocol a dropped transport is recovered within the
// service's recovery window: messages are acknowledged with sequenceAck
// (coalesced, at most every second or when 300 are pending), replays are
// dropped by sequence id, and requests waiting for their ack are sent again
// with the same ackId (a Duplicate ack is the first attempt's success), so
// the application sees every message once, in order. When recovery is
// refused (close 1008) or the subprotocol is not reliable, the client
// connects again as a new connection, through the credential function
// again, and rejoins the groups it had joined.
//
// Events are delivered in order by one goroutine per started client, so a
// handler may call the client (send, join, even wait for an ack) without
// holding up the socket; the client's own goroutines all end when Stop
// returns.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embedwps/pubsub/protocol"
)

// Options configure a Client; the zero value is the JS client's defaults.
type Options struct {
	// Protocol is the subprotocol; nil is JSONReliable.
	Protocol Protocol
	// DisableAutoReconnect stops the client when its connection ends for
	// good, instead of connecting again.
	DisableAutoReconnect bool
	// DisableAutoRejoinGroups keeps a new connection out of the groups the
	// client had joined.
	DisableAutoRejoinGroups bool
	// KeepAliveInterval is how often a ping request is sent (default 20 s,
	// negative: never); a transport from which nothing came for
	// KeepAliveTimeout (default 120 s) is taken for dead and dropped.
	KeepAliveInterval time.Duration
	KeepAliveTimeout  time.Duration
	// RecoveryTimeout is how long a reliable connection tries to recover
	// (default 30 s, the service's window); RetryDelay is the wait between
	// attempts to recover or reconnect (default 1 s).
	RecoveryTimeout time.Duration
	RetryDelay      time.Duration
	// SequenceAckInterval is how often received messages are acknowledged
	// on the reliable subprotocol (default 1 s).
	SequenceAckInterval time.Duration
	// HandshakeTimeout bounds each WebSocket upgrade (default 10 s).
	HandshakeTimeout time.Duration
	// TLSConfig is for wss:// URLs; nil is the system's defaults.
	TLSConfig *tls.Config
	// Dialer opens the TCP connections (nil: a zero net.Dialer); its
	// LocalAddr chooses the source address, as a load tool spreading
	// many clients over loopback addresses does.
	Dialer *net.Dialer
	// Logger gets the client's debug logs; nil logs nothing.
	Logger *slog.Logger

	// The handlers, all optional, called in order from one goroutine.
	OnConnected    func(ConnectedEvent)
	OnDisconnected func(DisconnectedEvent)
	// OnStopped is called once the client stopped: by Stop, or on its own
	// when it does not reconnect.
	OnStopped           func()
	OnServerMessage     func(Message)
	OnGroupMessage      func(Message)
	OnRejoinGroupFailed func(group string, err error)
	// OnGroupStream is handed each group stream received, at its first
	// fragment; its fragments are read with GroupStream.Next (they also
	// come to OnGroupMessage, with Message.Stream). A received stream from
	// which nothing came for StreamIdleTimeout (default 5 minutes) ends
	// with ErrIdleTimeout.
	OnGroupStream     func(*GroupStream)
	StreamIdleTimeout time.Duration
}

// ConnectedEvent is a new connection: at Start, and each reconnection.
// A recovery keeps the connection, and is not one.
type ConnectedEvent struct {
	ConnectionID string
	UserID       string // "" when anonymous
}

// DisconnectedEvent is the end of a connection (not of a transport that
// recovers): Message is the service's reason, when it gave one.
type DisconnectedEvent struct {
	ConnectionID string
	Message      string
}

// Message is a data message from a group or from the server.
type Message struct {
	Group      string // "" for a server message
	FromUserID string // "" from the server or an anonymous connection
	DataType   protocol.DataType
	Data       []byte
	Metadata   map[string]string
	// SequenceID is its id on the reliable subprotocol (0: none).
	SequenceID uint64
	// Stream is set on a group stream's fragment: its stream, sequence id,
	// and whether it is the last (End, with Error when it did not end
	// normally).
	Stream *protocol.StreamInfo
}

// maxResends is how many times a request is written again, each time on a
// new transport, when the one it went out on ended before its ack, as the
// JS client's default of 3 retries.
const maxResends = 3

// quickSequenceAck is how many unacknowledged messages make the client
// acknowledge at once rather than at the next tick, as the JS client does:
// the service closes a connection with 1000 unacknowledged ones.
const quickSequenceAck = 300

// Client is a Web PubSub client. Its methods are safe for concurrent use.
type Client struct {
	cred  func(context.Context) (string, error)
	opts  Options
	proto Protocol

	lastAckID     atomic.Uint64
	lastInvokeID  atomic.Uint64
	startStopLock sync.Mutex // serialises Start and Stop

	mu          sync.Mutex
	run         *run // nil when stopped
	groups      map[string]bool
	acks        map[uint64]chan protocol.ServerMessage
	invocations map[string]chan protocol.ServerMessage
	outStreams  map[string]*GroupStreamWriter
	inStreams   map[streamKey]*GroupStream
	leftGroups  map[string]bool // left by LeaveGroup, not joined since
}

// run is one Start's worth of state: its goroutines, its transport, its
// connection.
type run struct {
	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc
	done   chan struct{} // closed when every goroutine of the run ended
	events *queue
	wg     sync.WaitGroup // transport loops and rejoins

	// Guarded by Client.mu.
	t          *transport    // the open transport, nil between two
	up         chan struct{} // closed when t is set
	url        string        // the URL the connection was made with
	connID     string
	userID     string
	token      string
	lastSeq    uint64 // the highest sequence id received
	lastReason string // the last disconnected message
}

// New makes a client. credential is the client access URL (a string) or a
// func(context.Context) (string, error) that fetches one, called at each
// Start and each new connection (a negotiation endpoint, typically).
func New(credential any, opts Options) (*Client, error) {
	var cred func(context.Context) (string, error)
	switch v := credential.(type) {
	case string:
		cred = func(context.Context) (string, error) { return v, nil }
	case func(context.Context) (string, error):
		cred = v
	default:
		return nil, fmt.Errorf("client: the credential is a URL string or a func(context.Context) (string, error), not %T", credential)
	}
	if opts.Protocol == nil {
		opts.Protocol = JSONReliable()
	}
	setDefault(&opts.KeepAliveInterval, 20*time.Second)
	setDefault(&opts.KeepAliveTimeout, 120*time.Second)
	setDefault(&opts.RecoveryTimeout, 30*time.Second)
	setDefault(&opts.RetryDelay, time.Second)
	setDefault(&opts.SequenceAckInterval, time.Second)
	setDefault(&opts.HandshakeTimeout, 10*time.Second)
	setDefault(&opts.StreamIdleTimeout, 300*time.Second)
	return &Client{
		cred: cred, opts: opts, proto: opts.Protocol,
		groups:      map[string]bool{},
		acks:        map[uint64]chan protocol.ServerMessage{},
		invocations: map[string]chan protocol.ServerMessage{},
		outStreams:  map[string]*GroupStreamWriter{},
		inStreams:   map[streamKey]*GroupStream{},
		leftGroups:  map[string]bool{},
	}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

func (c *Client) logf(format string, args ...any) {
	if c.opts.Logger != nil {
		c.opts.Logger.Debug(fmt.Sprintf(format, args...))
	}
}

// Start connects: it fetches a URL through the credential and returns once
// the service said "connected", or with the error that prevented it. ctx
// bounds this first connection only. Start after Stop starts again (and
// rejoins the groups joined before, unless DisableAutoRejoinGroups).
func (c *Client) Start(ctx context.Context) error {
	c.startStopLock.Lock()
	defer c.startStopLock.Unlock()
	c.mu.Lock()
	prev := c.run
	if prev != nil && prev.ctx.Err() == nil {
		c.mu.Unlock()
		return ErrStarted
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r := &run{ctx: runCtx, cancel: cancel, done: make(chan struct{}), events: newQueue(), up: make(chan struct{})}
	c.run = r
	c.mu.Unlock()

	t, err := c.connect(ctx, r)
	if err != nil {
		cancel()
		r.events.close()
		close(r.done)
		c.mu.Lock()
		c.run = nil
		c.mu.Unlock()
		return err
	}
	go func() {
		// A run that stopped on its own may still be delivering its last
		// events (OnStopped, perhaps calling Start): this run's come after.
		if prev != nil {
			<-prev.events.done
		}
		r.events.serve()
	}()
	go c.loop(r, t)
	return nil
}

// Stop closes the connection (normally: the service ends the session) and
// returns once every goroutine of the client ended, handlers included,
// after OnStopped. Do not call it from a handler, which it would wait for:
// call it in a goroutine there. Stopping a stopped client does nothing.
func (c *Client) Stop() {
	c.startStopLock.Lock()
	defer c.startStopLock.Unlock()
	c.mu.Lock()
	r := c.run
	c.mu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
}

// ConnectionID is the current connection's id ("" before the first).
func (c *Client) ConnectionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.run == nil {
		return ""
	}
	return c.run.connID
}

// connect makes a new connection through the credential.
func (c *Client) connect(ctx context.Context, r *run) (*transport, error) {
	u, err := c.cred(ctx)
	if err != nil {
		return nil, fmt.Errorf("client: credential: %w", err)
	}
	t, err := c.dial(ctx, r, u, true)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	r.url = u
	c.mu.Unlock()
	return t, nil
}

// loop runs a started client: it keeps a transport up, recovering or
// reconnecting when one ends, until Stop, or until the connection ends for
// good with DisableAutoReconnect.
func (c *Client) loop(r *run, t *transport) {
	defer func() {
		r.cancel() // when it ended on its own: what waits on the run ends
		r.wg.Wait()
		r.events.post(func() {
			if c.opts.OnStopped != nil {
				c.opts.OnStopped()
			}
		})
		r.events.close()
		<-r.events.done
		close(r.done)
	}()
	for {
		c.install(r, t)
		select {
		case <-t.done:
		case <-r.ctx.Done():
			_ = t.conn.WriteClose(1000, nil) // a normal close ends the session
			<-t.done
		}
		c.uninstall(r, t)
		if r.ctx.Err() != nil {
			c.endConnection(r)
			return
		}
		c.logf("transport closed with %d", t.code)
		var next *transport
		if c.proto.Reliable() && t.code != 1008 { // 1008: recovery refused
			next = c.recover(r)
		}
		if next == nil {
			c.endConnection(r)
			if r.ctx.Err() != nil || c.opts.DisableAutoReconnect {
				return
			}
			if next = c.reconnect(r); next == nil {
				return
			}
		}
		t = next
	}
}

// install makes t the transport requests go out on, and starts its
// keep-alive and sequenceAck loop; on a new connection it rejoins the
// groups and then raises OnConnected.
func (c *Client) install(r *run, t *transport) {
	c.mu.Lock()
	select {
	case <-t.done: // it ended already (closed under c.mu): the loop sees it
	default:
		r.t = t
		close(r.up)
	}
	connID, userID, isNew := r.connID, r.userID, t.isNew
	c.mu.Unlock()
	if !isNew {
		// The last sequenceAcks may have been lost with the old transport
		// (written is not received): acknowledge again at once, before the
		// service's buffer of unacknowledged messages (1000) fills with
		// the replay and what came since.
		select {
		case t.kick <- struct{}{}:
		default: // its read loop kicked already (300 pending): that does it
		}
		// And what the streams written had unacknowledged goes again.
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			c.resumeStreams(t)
		}()
	}
	r.wg.Add(1)
	go c.tend(r, t)
	if !isNew {
		return
	}
	groups := c.joinedGroups()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if !c.opts.DisableAutoRejoinGroups {
			c.rejoin(r, groups)
		}
		r.events.post(func() {
			if c.opts.OnConnected != nil {
				c.opts.OnConnected(ConnectedEvent{ConnectionID: connID, UserID: userID})
			}
		})
	}()
}

// uninstall takes t out as the transport requests go out on, once: when
// its socket ends (so that no request is written again on a transport
// known dead), and after, when the loop sees it.
func (c *Client) uninstall(r *run, t *transport) {
	c.mu.Lock()
	c.uninstallLocked(r, t)
	c.mu.Unlock()
}

func (c *Client) uninstallLocked(r *run, t *transport) {
	if r.t == t {
		r.t = nil
		r.up = make(chan struct{})
	}
}

func (c *Client) joinedGroups() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	gs := make([]string, 0, len(c.groups))
	for g := range c.groups {
		gs = append(gs, g)
	}
	return gs
}

// rejoin joins groups again, at once, on a new connection.
func (c *Client) rejoin(r *run, groups []string) {
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.sendWithAck(r.ctx, r, protocol.Request{Type: protocol.JoinGroup, Group: g})
			if err != nil && r.ctx.Err() == nil {
				r.events.post(func() {
					if c.opts.OnRejoinGroupFailed != nil {
						c.opts.OnRejoinGroupFailed(g, err)
					}
				})
			}
		}()
	}
	wg.Wait()
}

// endConnection raises OnDisconnected for the connection that ended for
// good, and forgets it.
func (c *Client) endConnection(r *run) {
	c.mu.Lock()
	id, reason := r.connID, r.lastReason
	r.connID, r.token, r.lastReason = "", "", ""
	c.mu.Unlock()
	if r.ctx.Err() != nil {
		c.endStreams(ErrStopped)
	} else {
		c.endStreams(ErrConnectionLost)
	}
	if id == "" {
		return
	}
	r.events.post(func() {
		if c.opts.OnDisconnected != nil {
			c.opts.OnDisconnected(DisconnectedEvent{ConnectionID: id, Message: reason})
		}
	})
}

// recover tries to resume the connection on a new transport for
// RecoveryTimeout; nil when it cannot (1008, no token, Stop, time out).
func (c *Client) recover(r *run) *transport {
	c.mu.Lock()
	base, connID, token := r.url, r.connID, r.token
	c.mu.Unlock()
	if token == "" || connID == "" {
		return nil
	}
	u, err := recoveryURL(base, connID, token)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.ctx, c.opts.RecoveryTimeout)
	defer cancel()
	for {
		t, err := c.dial(ctx, r, u, false)
		if err == nil {
			c.logf("recovered %s", connID)
			return t
		}
		c.logf("recovery of %s failed: %v", connID, err)
		if !sleep(ctx, c.opts.RetryDelay) {
			return nil
		}
	}
}

// reconnect makes a new connection, retrying every RetryDelay until Stop.
func (c *Client) reconnect(r *run) *transport {
	for {
		t, err := c.connect(r.ctx, r)
		if err == nil {
			return t
		}
		c.logf("reconnection failed: %v", err)
		if !sleep(r.ctx, c.opts.RetryDelay) {
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// tend keeps a transport: a ping every KeepAliveInterval, the transport
// dropped after KeepAliveTimeout of silence, and on the reliable
// subprotocol a sequenceAck every SequenceAckInterval when messages came,
// or at once when many did.
func (c *Client) tend(r *run, t *transport) {
	defer r.wg.Done()
	var ping <-chan time.Time
	if c.opts.KeepAliveInterval > 0 {
		tk := time.NewTicker(c.opts.KeepAliveInterval)
		defer tk.Stop()
		ping = tk.C
	}
	var ack <-chan time.Time
	if c.proto.Reliable() {
		tk := time.NewTicker(c.opts.SequenceAckInterval)
		defer tk.Stop()
		ack = tk.C
	}
	for {
		select {
		case <-t.done:
			return
		case <-r.ctx.Done():
			return
		case <-ping:
			if time.Since(time.Unix(0, t.lastRecv.Load())) > c.opts.KeepAliveTimeout {
				c.logf("nothing received for %v: dropping the transport", c.opts.KeepAliveTimeout)
				t.abort()
				continue
			}
			c.writeRequest(t, protocol.Request{Type: protocol.Ping})
		case <-ack:
			c.sequenceAck(r, t)
		case <-t.kick:
			c.sequenceAck(r, t)
		}
	}
}

func (c *Client) sequenceAck(r *run, t *transport) {
	c.mu.Lock()
	seq := r.lastSeq
	due := seq > t.ackedSeq
	c.mu.Unlock()
	if !due {
		return
	}
	if c.writeRequest(t, protocol.Request{Type: protocol.SequenceAck, SequenceID: seq}) == nil {
		c.mu.Lock()
		t.ackedSeq = max(t.ackedSeq, seq)
		c.mu.Unlock()
	}
}

func (c *Client) writeRequest(t *transport, req protocol.Request) error {
	frame, err := c.proto.AppendRequest(nil, req)
	if err != nil {
		return err
	}
	return t.write(frame)
}

// handle takes one decoded frame, on its transport's read goroutine.
func (c *Client) handle(t *transport, m protocol.ServerMessage) {
	r := t.r
	switch m.Type {
	case protocol.Connected:
		c.mu.Lock()
		if m.ConnectionID != r.connID {
			// A new connection numbers its messages from 1 again.
			t.isNew = true
			r.lastSeq = 0
		}
		r.connID, r.userID = m.ConnectionID, m.UserID
		if m.ReconnectionToken != "" {
			r.token = m.ReconnectionToken
		}
		c.mu.Unlock()
		select {
		case <-t.ready:
		default:
			close(t.ready)
		}
	case protocol.Disconnected:
		c.mu.Lock()
		r.lastReason = m.Message
		c.mu.Unlock()
	case protocol.Ack:
		c.mu.Lock()
		ch := c.acks[m.AckID]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default: // an answer to an attempt already answered
			}
		}
	case protocol.StreamAck, protocol.StreamNack, protocol.StreamClosed:
		c.handleStream(r, t, m)
	case protocol.InvokeResponse:
		c.mu.Lock()
		ch := c.invocations[m.InvocationID]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	case protocol.GroupMessage, protocol.ServerDataMessage:
		if m.SequenceID != 0 {
			c.mu.Lock()
			if m.SequenceID <= r.lastSeq {
				c.mu.Unlock()
				return // a replay of what came before the drop
			}
			r.lastSeq = m.SequenceID
			pending := r.lastSeq - t.ackedSeq
			c.mu.Unlock()
			if pending >= quickSequenceAck {
				select {
				case t.kick <- struct{}{}:
				default:
				}
			}
		}
		msg := Message{Group: m.Group, FromUserID: m.FromUserID, DataType: m.DataType, Data: m.Data, Metadata: m.Metadata, SequenceID: m.SequenceID, Stream: m.Stream}
		if m.Stream != nil && m.Type == protocol.GroupMessage && c.opts.OnGroupStream != nil {
			c.received(r, msg)
		}
		if m.Type == protocol.GroupMessage {
			r.events.post(func() {
				if c.opts.OnGroupMessage != nil {
					c.opts.OnGroupMessage(msg)
				}
			})
		} else {
			r.events.post(func() {
				if c.opts.OnServerMessage != nil {
					c.opts.OnServerMessage(msg)
				}
			})
		}
	}
}

// transport waits for an open transport of the current run.
func (c *Client) transport(ctx context.Context) (*run, *transport, error) {
	for {
		c.mu.Lock()
		r := c.run
		if r == nil {
			c.mu.Unlock()
			return nil, nil, ErrStopped
		}
		t, up := r.t, r.up
		c.mu.Unlock()
		if t != nil {
			return r, t, nil
		}
		select {
		case <-up:
		case <-r.ctx.Done():
			return nil, nil, ErrStopped
		case <-r.done:
			return nil, nil, ErrStopped
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// sendWithAck sends req with a new ackId and waits for its ack, sending it
// again with the same ackId on each new transport until one answers; a
// Duplicate ack means an earlier attempt was taken. r, when not nil, pins
// the run (a rejoin belongs to its run).
func (c *Client) sendWithAck(ctx context.Context, pin *run, req protocol.Request) error {
	req.AckID, req.HasAckID = c.lastAckID.Add(1), true
	frame, err := c.proto.AppendRequest(nil, req)
	if err != nil {
		return err
	}
	ch := make(chan protocol.ServerMessage, 1)
	c.mu.Lock()
	c.acks[req.AckID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.acks, req.AckID)
		c.mu.Unlock()
	}()
	for attempt := 1; ; attempt++ {
		r, t, err := c.transport(ctx)
		if err != nil {
			return err
		}
		if pin != nil && r != pin {
			return ErrStopped
		}
		if err := t.write(frame); err != nil {
			// A write fails when the socket is going: wait for its end.
			c.logf("write of ack %d failed: %v", req.AckID, err)
		}
		select {
		case m := <-ch:
			return ackResult(m)
		case <-t.done:
			select {
			case m := <-ch: // it came before the transport ended
				return ackResult(m)
			default:
			}
			if attempt > maxResends {
				// A request the service closes the connection over (too
				// big: 1009) would otherwise go again on each new one.
				return &lostError{what: "ack " + strconv.FormatUint(req.AckID, 10), transports: attempt, code: t.code}
			}
		case <-r.ctx.Done():
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func ackResult(m protocol.ServerMessage) error {
	if m.Success || m.ErrorName == protocol.AckDuplicate {
		return nil
	}
	return &AckError{AckID: m.AckID, Name: m.ErrorName, Message: m.ErrorMessage}
}

// sendOnce sends req without an ackId on the next open transport.
func (c *Client) sendOnce(ctx context.Context, req protocol.Request) error {
	frame, err := c.proto.AppendRequest(nil, req)
	if err != nil {
		return err
	}
	_, t, err := c.transport(ctx)
	if err != nil {
		return err
	}
	return t.write(frame)
}

// SendOption is an option of SendToGroup and SendEvent.
type SendOption func(*protocol.Request, *bool)

// NoEcho keeps a group message from this client's own connection.
func NoEcho() SendOption { return func(r *protocol.Request, _ *bool) { r.NoEcho = true } }

// FireAndForget sends without an ackId: the call returns once the request
// is written, and the service reports no error.
func FireAndForget() SendOption { return func(_ *protocol.Request, ff *bool) { *ff = true } }

// WithMetadata sends metadata with the message or event (spec §6.1).
func WithMetadata(md map[string]string) SendOption {
	return func(r *protocol.Request, _ *bool) { r.Metadata = md }
}

func (c *Client) send(ctx context.Context, req protocol.Request, opts []SendOption) error {
	ff := false
	for _, o := range opts {
		o(&req, &ff)
	}
	if ff {
		return c.sendOnce(ctx, req)
	}
	return c.sendWithAck(ctx, nil, req)
}

// JoinGroup joins group and waits for the ack; a new connection rejoins it.
func (c *Client) JoinGroup(ctx context.Context, group string) error {
	if err := c.sendWithAck(ctx, nil, protocol.Request{Type: protocol.JoinGroup, Group: group}); err != nil {
		return err
	}
	c.mu.Lock()
	c.groups[group] = true
	delete(c.leftGroups, group)
	c.mu.Unlock()
	return nil
}

// LeaveGroup leaves group and waits for the ack; the group's streams being
// received then end with ErrLeftGroup (no more of them will come).
func (c *Client) LeaveGroup(ctx context.Context, group string) error {
	c.mu.Lock()
	delete(c.groups, group)
	c.mu.Unlock()
	if err := c.sendWithAck(ctx, nil, protocol.Request{Type: protocol.LeaveGroup, Group: group}); err != nil {
		return err
	}
	c.mu.Lock()
	// A fragment fanned out before the leave may still come: it must not
	// start a stream of the group left, which nothing would end.
	if len(c.leftGroups) >= maxLeftGroups {
		clear(c.leftGroups)
	}
	c.leftGroups[group] = true
	c.mu.Unlock()
	c.endReceivedStreams(group, ErrLeftGroup)
	return nil
}

// maxLeftGroups bounds the groups remembered as left (see LeaveGroup).
const maxLeftGroups = 1024

// SendToGroup publishes data of dataType (protocol.Text, JSON, Binary) to
// group, and waits for the ack unless FireAndForget.
func (c *Client) SendToGroup(ctx context.Context, group string, dataType protocol.DataType, data []byte, opts ...SendOption) error {
	return c.send(ctx, protocol.Request{Type: protocol.SendToGroup, Group: group, DataType: dataType, Data: data}, opts)
}

// SendEvent sends a user event to the event handler, and waits for the ack
// unless FireAndForget. The handler's reply, if any, comes as a server
// message before the ack.
func (c *Client) SendEvent(ctx context.Context, event string, dataType protocol.DataType, data []byte, opts ...SendOption) error {
	return c.send(ctx, protocol.Request{Type: protocol.Event, Event: event, DataType: dataType, Data: data}, opts)
}

// InvokeEvent invokes event on the event handler and returns its reply
// (data nil when it replied nothing). If ctx ends first, the invocation is
// cancelled. It is not retried on another transport (ErrConnectionLost).
// The protobuf subprotocols have no invocations: there it fails at once,
// with an error wrapping protocol.ErrNotInProtobuf.
func (c *Client) InvokeEvent(ctx context.Context, event string, dataType protocol.DataType, data []byte) (protocol.DataType, []byte, error) {
	id := strconv.FormatUint(c.lastInvokeID.Add(1), 10)
	req := protocol.Request{Type: protocol.Invoke, InvocationID: id, Event: event, DataType: dataType, Data: data}
	frame, err := c.proto.AppendRequest(nil, req)
	if err != nil {
		return 0, nil, fmt.Errorf("client: invoke on %s: %w", c.proto.Name(), err)
	}
	r, t, err := c.transport(ctx)
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan protocol.ServerMessage, 1)
	c.mu.Lock()
	c.invocations[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.invocations, id)
		c.mu.Unlock()
	}()
	if err := t.write(frame); err != nil {
		return 0, nil, errors.Join(ErrConnectionLost, err)
	}
	select {
	case m := <-ch:
		return invokeResult(m)
	case <-t.done:
		select {
		case m := <-ch:
			return invokeResult(m)
		default:
			return 0, nil, ErrConnectionLost
		}
	case <-r.ctx.Done():
		return 0, nil, ErrStopped
	case <-ctx.Done():
		_ = c.writeRequest(t, protocol.Request{Type: protocol.CancelInvocation, InvocationID: id})
		return 0, nil, ctx.Err()
	}
}

func invokeResult(m protocol.ServerMessage) (protocol.DataType, []byte, error) {
	if !m.Success {
		return 0, nil, &AckError{InvocationID: m.InvocationID, Name: m.ErrorName, Message: m.ErrorMessage}
	}
	return m.DataType, m.Data, nil
}

// queue delivers events in order on one goroutine, unbounded so that the
// socket is never held up by a handler (a handler waiting for an ack needs
// the socket read).
type queue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []func()
	closed bool
	done   chan struct{}
}

func newQueue() *queue {
	q := &queue{done: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue) post(f func()) {
	q.mu.Lock()
	if !q.closed {
		q.items = append(q.items, f)
		q.cond.Signal()
	}
	q.mu.Unlock()
}

// close lets serve return once what was posted is delivered.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Signal()
	q.mu.Unlock()
}

// serve takes what was posted a batch at a time (one lock for all that
// came while the last batch ran), and runs it in order.
func (q *queue) serve() {
	defer close(q.done)
	var batch []func()
	for {
		q.mu.Lock()
		for len(q.items) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.items) == 0 {
			q.mu.Unlock()
			return
		}
		batch, q.items = q.items, batch[:0]
		q.mu.Unlock()
		for i, f := range batch {
			batch[i] = nil
			f()
		}
	}
}
