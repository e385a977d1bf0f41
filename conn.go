package pubsub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// clientKind is how a connection speaks: the subprotocol family it
// negotiated. Frames are encoded once per kind per message.
type clientKind uint8

const (
	// kindSimple is a client with no predefined subprotocol: raw frames in
	// both directions, each inbound frame a "message" user event.
	kindSimple           clientKind = iota
	kindJSON                        // json.webpubsub.azure.v1
	kindJSONReliable                // json.reliable.webpubsub.azure.v1
	kindProtobuf                    // protobuf.webpubsub.azure.v1
	kindProtobufReliable            // protobuf.reliable.webpubsub.azure.v1
	numKinds
)

func (k clientKind) reliable() bool { return k == kindJSONReliable || k == kindProtobufReliable }
func (k clientKind) protobuf() bool { return k == kindProtobuf || k == kindProtobufReliable }

// conn is one logical client connection: its identity, permissions,
// groups and lifecycle (lifecycle.go). Its inbound frames are handled one at
// a time, in order, by the read loop of its current transport (wire.go); a
// reliable connection outlives a dropped transport for the recovery window,
// and the next transport's read loop starts only when the previous one's
// has ended.
type conn struct {
	svc         *Service
	hub         *hubState
	id          string
	userID      string
	subprotocol string
	kind        clientKind
	perms       *permissions
	rawPublish  *rawPublish // a simple client's webpubsub_mode=sendToGroup (rawpub.go)

	// ctx is cancelled when the service ends the session (or it is
	// released), aborting its user events.
	ctx    context.Context
	cancel context.CancelFunc

	// stateMu orders c's group state changes and their updates
	// (groupstate.go); lock order in lifecycle.go.
	stateMu sync.Mutex

	mu         sync.Mutex // guards the fields below; lock order in lifecycle.go
	state      connState
	w          *wire           // the current transport; nil while detached or released
	lastRead   <-chan struct{} // closed when the last attached transport's read loop ends
	connected  bool            // the connected event was raised
	disconnect Disconnect      // why the service ended the session
	groups     map[string]struct{}
	connState  string    // the event handler's connection state
	rel        *reliable // nil unless the subprotocol is reliable
	// pres is its group presence events to hand over (presence.go); nil
	// until it has one, and always without a GroupPresenceHandler.
	pres *presenceQueue
	// Group state (groupstate.go): c's state per group, and its
	// subscriptions to groups' state.
	gstate       map[string]groupState
	gsubs        map[string]*stateSubscription
	stateVersion uint64 // the last of its group state changes

	initialGroups []string // joined at registration
	movedFrom     string   // the node that handed the connection over to this one

	// streams are the group streams this connection publishes (stream.go).
	streams streamSet

	// Touched by the read loop only (read loops of successive transports
	// run one after another).
	acks ackLog
	rate rateLimiter

	lastSeen atomic.Int64 // unix nanoseconds of the last inbound frame
	since    time.Time    // when it was registered on this node
}

func (c *conn) context() ConnectionContext {
	c.mu.Lock()
	state := c.connState
	c.mu.Unlock()
	return ConnectionContext{
		Hub:             c.hub.name,
		ConnectionID:    c.id,
		UserID:          c.userID,
		Subprotocol:     c.subprotocol,
		ConnectionState: state,
	}
}

func (c *conn) setState(state *string) {
	if state == nil {
		return
	}
	c.mu.Lock()
	c.connState = *state
	c.mu.Unlock()
}

func (c *conn) groupNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.groups))
	for g := range c.groups {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}

// testHookFrame, when set by a test, sees every inbound message first.
var testHookFrame atomic.Pointer[func(payload []byte)]

// handleFrame handles one inbound WebSocket message, on the read loop. This
// is where a client frame is parsed.
func (c *conn) handleFrame(binary bool, payload []byte) {
	if hook := testHookFrame.Load(); hook != nil {
		(*hook)(payload)
	}
	if c.ending() {
		return // the service already ended this session
	}
	var req protocol.Request
	var err error
	switch c.kind {
	case kindSimple:
		if !c.rate.allow() {
			c.rateLimited()
			c.close(DisconnectRateLimited) // a simple client has no ack to refuse with
			return
		}
		if c.rawPublish != nil {
			c.messageReceived("sendToGroup", c.rawPublish.group, "", len(payload))
			c.publishRaw(binary, payload)
			return
		}
		c.messageReceived("event", "", "message", len(payload))
		t := DataTypeText
		if binary {
			t = DataTypeBinary
		}
		resp, err := c.userEvent("message", t, bytes.Clone(payload), nil)
		if err != nil {
			c.svc.log.Warn("message event failed; closing the simple client",
				"hub", c.hub.name, "connectionId", c.id, "err", err)
			c.close(DisconnectEventFailed)
			return
		}
		if resp != nil && len(resp.Data) > 0 {
			c.send(simpleFrame(resp.DataType, resp.Data))
			c.svc.messageSent(&command{Op: opSendToConnection, Hub: c.hub.name, Target: c.id, Data: resp.Data}, 1)
		}
		return
	case kindJSON, kindJSONReliable:
		if binary {
			c.close(DisconnectBinaryOnJSON)
			return
		}
		req, err = protocol.DecodeJSONRequest(payload)
	case kindProtobuf, kindProtobufReliable:
		if !binary {
			c.close(DisconnectTextOnProtobuf)
			return
		}
		req, err = protocol.DecodeProtobufRequest(payload)
	}
	if err != nil {
		c.close(Disconnect{CloseInvalidPayload, err.Error()})
		return
	}
	if req.Type != protocol.Ping && req.Type != protocol.SequenceAck { // the protocol's own, not messages
		c.messageReceived(req.Type.String(), req.Group, req.Event, len(payload))
	}
	c.handleRequest(req)
}

// ending reports whether the service ended the session: inbound frames are
// then ignored.
func (c *conn) ending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state >= stateClosing
}

// handleRequest answers one PubSub request, with an ack when it has an ackId.
func (c *conn) handleRequest(req protocol.Request) {
	switch req.Type {
	case protocol.Ping:
		c.send(c.encodePong())
		return
	case protocol.SequenceAck:
		c.ackSequence(req.SequenceID) // a no-op unless the subprotocol is reliable
		return
	case protocol.StreamStart, protocol.StreamData, protocol.StreamEnd:
		c.handleStream(req) // answered by stream frames; rate-limited there
		return
	case protocol.CancelInvocation:
		// An invoke is answered on the read loop before the next frame is
		// read, as events are: by the time a cancel is read, its invocation
		// was answered and nothing waits to be stopped.
		return
	}
	if !c.rate.allow() {
		c.rateLimited()
		if req.Type == protocol.Invoke {
			c.sendInvokeError(req.InvocationID, protocol.AckTooManyRequests, fmt.Sprintf("The client sends more than %d messages per second.", c.svc.cfg.MaxMessagesPerSecond))
			return
		}
		if !req.HasAckID {
			c.close(DisconnectRateLimited)
			return
		}
		c.sendAck(req.AckID, protocol.AckTooManyRequests, fmt.Sprintf("The client sends more than %d messages per second.", c.svc.cfg.MaxMessagesPerSecond))
		return
	}
	if req.Type == protocol.Invoke {
		c.invoke(req) // answered by its invokeResponse; an ackId is ignored
		return
	}
	if req.Type == protocol.Unsupported {
		c.unsupported(req)
		return
	}
	if isGroupStateRequest(req.Type) {
		c.groupStateRequest(req) // its ack, then a subscription's snapshot
		return
	}
	if req.HasAckID && c.acks.done(req.AckID) {
		c.sendAck(req.AckID, protocol.AckDuplicate, fmt.Sprintf("Message with ack-id: %d has been processed", req.AckID))
		return
	}
	errName, errMessage := c.do(req)
	if !req.HasAckID {
		return
	}
	if errName == "" {
		c.acks.add(req.AckID)
	}
	c.sendAck(req.AckID, errName, errMessage)
}

// do performs a request; a non-empty errName is the ack error.
func (c *conn) do(req protocol.Request) (errName, errMessage string) {
	switch req.Type {
	case protocol.JoinGroup:
		if !c.perms.allows(PermissionJoinLeaveGroup, req.Group) {
			return protocol.AckForbidden, fmt.Sprintf("The client does not have permission to join group '%s'.", req.Group)
		}
		switch err := c.joinGroup(req.Group); {
		case errors.Is(err, ErrTooManyGroups):
			return protocol.AckBadRequest, fmt.Sprintf("The connection is in %d groups, the most it may join.", c.svc.cfg.MaxGroupsPerConnection)
		case err != nil:
			return protocol.AckInternalServerError, "The connection is closing."
		}
		if c.svc.cluster != nil {
			c.svc.cluster.sync(c.ctx) // the ack promises the group's messages from now on
		}
	case protocol.LeaveGroup:
		if !c.perms.allows(PermissionJoinLeaveGroup, req.Group) {
			return protocol.AckForbidden, fmt.Sprintf("The client does not have permission to leave group '%s'.", req.Group)
		}
		c.leaveGroup(req.Group)
	case protocol.SendToGroup:
		if !c.perms.allows(PermissionSendToGroup, req.Group) {
			return protocol.AckForbidden, fmt.Sprintf("The client does not have permission to send to group '%s'.", req.Group)
		}
		if req.TTLSeconds > maxTTLSeconds {
			return protocol.AckBadRequest, fmt.Sprintf("ttlSeconds must be between 0 and %d.", maxTTLSeconds)
		}
		cmd := &command{
			Op:         opSendToGroup,
			Hub:        c.hub.name,
			Target:     req.Group,
			DataType:   req.DataType,
			Data:       req.Data,
			FromUserID: c.userID,
			Metadata:   req.Metadata,
		}
		if req.TTLSeconds > 0 {
			cmd.ExpiresAt = time.Now().Add(time.Duration(req.TTLSeconds) * time.Second).UnixNano()
		}
		if req.NoEcho {
			cmd.Excluded = []string{c.id}
		}
		if err := c.svc.publishFromClient(cmd); err != nil {
			return protocol.AckInternalServerError, err.Error()
		}
	case protocol.Event:
		resp, err := c.userEvent(req.Event, req.DataType, req.Data, req.Metadata)
		if err != nil {
			if errors.Is(err, ErrNoEventHandler) {
				return protocol.AckInternalServerError, fmt.Sprintf("No event handler for event '%s'.", req.Event)
			}
			return protocol.AckInternalServerError, err.Error()
		}
		if resp != nil && len(resp.Data) > 0 {
			// The reply reaches the client before the ack (spec §6.1), as a
			// message from the server (with a sequence id when reliable).
			reply := &delivery{svc: c.svc, cmd: &command{Op: opSendToConnection, Hub: c.hub.name, Target: c.id, DataType: resp.DataType, Data: resp.Data}}
			c.deliver(reply)
			reply.settle()
			c.svc.messageSent(reply.cmd, 1)
		}
	}
	return "", ""
}

// maxTTLSeconds bounds a client's ttlSeconds (spec §6.1).
const maxTTLSeconds = 300

// unsupported answers a well-formed request of a type this service does not
// implement, and keeps the connection: a JSON group streaming frame is
// answered by streamClosed (BadRequest for a stream start, StreamNotFound
// for data or end, no stream being open), a request with an ackId by an ack
// BadRequest (not remembered: a retry is refused again, not a Duplicate),
// and anything else, which the protocol gives no way to answer, is dropped.
func (c *conn) unsupported(req protocol.Request) {
	msg := fmt.Sprintf("The request type '%s' is not supported.", req.Unsupported)
	answered := req.HasAckID
	if req.StreamID != "" && !c.kind.protobuf() {
		name := protocol.StreamNotFound
		streamMsg := fmt.Sprintf("The stream '%s' is not open: group streaming is not supported.", req.StreamID)
		if strings.EqualFold(req.Unsupported, "sendToGroup") {
			name, streamMsg = protocol.AckBadRequest, "Group streaming is not supported."
		}
		c.send(jsonFrame(protocol.AppendStreamClosed(wsframe.Begin(96+len(req.StreamID)+len(streamMsg)), req.StreamID, name, streamMsg)))
		answered = true
	}
	if req.HasAckID {
		c.sendAck(req.AckID, protocol.AckBadRequest, msg)
	}
	if !answered {
		c.svc.log.Debug("unsupported request dropped", "hub", c.hub.name, "connectionId", c.id, "type", req.Unsupported)
	}
}

// invoke performs an invoke request: the user event of that name, whose
// reply becomes the invokeResponse. A failure fails this invocation only.
// The response is not a message: it carries no sequence id on a reliable
// connection and is not replayed after a recovery (the client fails its
// pending invocations when the transport drops).
func (c *conn) invoke(req protocol.Request) {
	if !strings.EqualFold(req.Target, "event") {
		c.sendInvokeError(req.InvocationID, protocol.AckBadRequest, fmt.Sprintf("Unsupported invocation target '%s'.", req.Target))
		return
	}
	resp, err := c.userEvent(req.Event, req.DataType, req.Data, nil)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, ErrNoEventHandler) {
			msg = fmt.Sprintf("No event handler for event '%s'.", req.Event)
		}
		c.sendInvokeError(req.InvocationID, protocol.AckInternalServerError, msg)
		return
	}
	var t DataType
	var data []byte
	if resp != nil && len(resp.Data) > 0 {
		t, data = resp.DataType, resp.Data
	}
	c.send(jsonFrame(protocol.AppendInvokeResponse(wsframe.Begin(96+len(req.InvocationID)+len(data)*2), req.InvocationID, t, data)))
}

func (c *conn) sendInvokeError(invocationID, errName, errMessage string) {
	c.send(jsonFrame(protocol.AppendInvokeError(wsframe.Begin(96+len(invocationID)+len(errMessage)), invocationID, errName, errMessage)))
}

// userEvent calls the event handler and keeps the connection state it sets.
func (c *conn) userEvent(name string, t DataType, data []byte, metadata map[string]string) (*UserEventResponse, error) {
	resp, err := c.svc.handler.UserEvent(c.ctx, &UserEventRequest{
		ConnectionContext: c.context(),
		EventName:         name,
		DataType:          t,
		Data:              data,
		Metadata:          metadata,
	})
	if err != nil {
		return nil, err
	}
	if resp != nil {
		c.setState(resp.ConnectionState)
		if len(resp.Data) > 0 {
			if err := (Message{resp.DataType, resp.Data}).validate(); err != nil {
				return nil, fmt.Errorf("event handler response: %w", err)
			}
			// The reply is one frame to the client, under the same limit as
			// the client's own messages: a larger one fails this event, not
			// the connection.
			if len(resp.Data) > c.svc.cfg.MaxMessageSize {
				return nil, fmt.Errorf("the event handler's response of %d bytes is larger than the %d bytes a message may have", len(resp.Data), c.svc.cfg.MaxMessageSize)
			}
		}
	}
	return resp, nil
}

func (c *conn) sendAck(ackID uint64, errName, errMessage string) {
	if c.kind.protobuf() {
		c.send(protobufFrame(protocol.AppendProtobufAck(wsframe.Begin(32), ackID, errName, errMessage)))
		return
	}
	c.send(jsonFrame(protocol.AppendAck(wsframe.Begin(64), ackID, errName, errMessage)))
}

func (c *conn) encodePong() []byte {
	if c.kind.protobuf() {
		return protobufPong
	}
	return jsonPong
}

func (c *conn) encodeConnected(reconnectionToken string) []byte {
	if c.kind.protobuf() {
		return protobufFrame(protocol.AppendProtobufConnected(wsframe.Begin(64), c.userID, c.id, reconnectionToken))
	}
	return jsonFrame(protocol.AppendConnected(wsframe.Begin(96), c.userID, c.id, reconnectionToken))
}

func (c *conn) encodeDisconnected(reason string) []byte {
	if c.kind.protobuf() {
		return protobufFrame(protocol.AppendProtobufDisconnected(wsframe.Begin(64), reason))
	}
	return jsonFrame(protocol.AppendDisconnected(wsframe.Begin(64), reason))
}

// jsonFrame and protobufFrame finish a frame begun with wsframe.Begin.
func jsonFrame(buf []byte) []byte     { return wsframe.Finish(buf, wsframe.OpText) }
func protobufFrame(buf []byte) []byte { return wsframe.Finish(buf, wsframe.OpBinary) }

var (
	jsonPong     = jsonFrame(protocol.AppendPong(wsframe.Begin(16)))
	protobufPong = protobufFrame(protocol.AppendProtobufPong(wsframe.Begin(16)))
)

// simpleFrame is how a simple client receives a payload: text or binary, raw.
func simpleFrame(t DataType, data []byte) []byte {
	op := wsframe.OpText
	if t.IsBinary() {
		op = wsframe.OpBinary
	}
	return wsframe.Frame(op, data)
}

// pingFrame is the keep-alive ping, shared by every connection.
var pingFrame = wsframe.Frame(wsframe.OpPing, nil)

// ackLog remembers the ackIds of requests that succeeded, so that a repeat is
// answered Duplicate and not performed again. It keeps the most recent
// ackLogSize ids.
type ackLog struct {
	seen map[uint64]struct{}
	ring []uint64
	next int
}

const ackLogSize = 1024

func (l *ackLog) done(id uint64) bool {
	_, ok := l.seen[id]
	return ok
}

func (l *ackLog) add(id uint64) {
	if l.seen == nil {
		l.seen = make(map[uint64]struct{})
	}
	if len(l.ring) < ackLogSize {
		l.ring = append(l.ring, id)
	} else {
		delete(l.seen, l.ring[l.next])
		l.ring[l.next] = id
		l.next = (l.next + 1) % ackLogSize
	}
	l.seen[id] = struct{}{}
}

// send queues one frame for c on its current transport.
func (c *conn) send(frame []byte) { c.enqueue(0, frame) }

// enqueue queues one frame, made of parts, to be dropped if it is not
// written by deadline (Unix nanoseconds; 0: never).
func (c *conn) enqueue(deadline int64, parts ...[]byte) {
	c.mu.Lock()
	after, _ := c.enqueueLocked(deadline, parts, nil, -1)
	c.mu.Unlock()
	after.run(c)
}

// enqueueShared queues one frame that is a message's shared encoding, and
// reports whether it did (taking a reference to share).
func (c *conn) enqueueShared(deadline int64, frame []byte, share *sharedBytes) bool {
	c.mu.Lock()
	after, queued := c.enqueueLocked(deadline, [][]byte{frame}, share, 0)
	c.mu.Unlock()
	after.run(c)
	return queued
}

// enqueueLocked queues parts on the current transport, under c.mu; parts[at]
// is share's, if share is not nil. Nothing is queued for a connection
// between transports (a reliable connection's data messages wait in its
// replay buffer) or one the service is closing. A client whose queue would
// pass the outbound bound is a slow client: its queue is dropped and it is
// closed, and no sender waits for it.
func (c *conn) enqueueLocked(deadline int64, parts [][]byte, share *sharedBytes, at int) (after afterUnlock, queued bool) {
	if c.w == nil || c.state >= stateClosing {
		return after, false
	}
	queued, kick, overflow := c.w.out.enqueue(deadline, parts, share, at, c.svc.cfg.OutboundBufferSize)
	if overflow {
		c.svc.slowClients.Add(1)
		c.svc.log.Warn("closing a slow client", "hub", c.hub.name, "connectionId", c.id)
		return c.closeLocked(DisconnectSlowClient, true), false
	}
	after.kick = kick
	return after, queued
}

// abort drops c's transport at once, without a close frame (Shutdown out
// of time).
func (c *conn) abort() {
	c.cancel()
	c.mu.Lock()
	w := c.w
	c.mu.Unlock()
	if w != nil {
		w.out.abort()
	}
}

// freeableBytes estimates what closing c gives back to the service's
// buffer budget: its own bytes, queued or kept for replay, and its part of
// each shared encoding it holds. Counting a shared encoding in full, as c
// sees it, would make a fan-out's receivers look like the hogs while
// closing one frees almost nothing.
func (c *conn) freeableBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	if c.rel != nil {
		for i := range c.rel.unacked {
			m := &c.rel.unacked[i]
			n += m.own() + m.share.part()
		}
	}
	if c.w != nil {
		n += c.w.out.freeable()
	}
	return n
}
