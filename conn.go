package pubsub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

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

// conn is one logical client connection: its identity, permissions, groups,
// and outbound queue. Its inbound frames are handled one at a time, in order,
// by the gws read loop goroutine of its transport. A reliable connection
// outlives a dropped transport for the recovery window.
type conn struct {
	hub         *Hub
	id          string
	userID      string
	subprotocol string
	kind        clientKind
	perms       *permissions

	// ctx is cancelled when the connection ends, aborting its user events.
	ctx    context.Context
	cancel context.CancelFunc

	mu            sync.Mutex // guards groups, gone, state
	groups        map[string]struct{}
	gone          bool
	state         string
	initialGroups []string // joined at registration

	acks ackLog // touched by the read goroutine only

	outMu      sync.Mutex // guards out, rel, ended, released, disconnect
	out        *outbox    // the current transport's
	rel        *reliable  // nil unless the subprotocol is reliable
	ended      bool       // the service ended the logical connection
	released   bool       // it left the registry
	disconnect Disconnect // why the service ended it

	lastSeen  atomic.Int64 // unix nanoseconds of the last inbound frame
	closing   atomic.Bool  // set with ended: inbound frames are ignored
	connected atomic.Bool  // the connected event was raised
}

func (c *conn) context() ConnectionContext {
	c.mu.Lock()
	state := c.state
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
	c.state = *state
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

// handleFrame handles one inbound WebSocket message. This is where a client
// frame is parsed.
func (c *conn) handleFrame(binary bool, payload []byte) {
	if c.closing.Load() {
		return // the service already declined this client
	}
	var req protocol.Request
	var err error
	switch c.kind {
	case kindSimple:
		t := DataTypeText
		if binary {
			t = DataTypeBinary
		}
		resp, err := c.userEvent("message", t, bytes.Clone(payload))
		if err != nil {
			c.hub.svc.log.Warn("message event failed; closing the simple client",
				"hub", c.hub.name, "connectionId", c.id, "err", err)
			c.close(DisconnectEventFailed)
			return
		}
		if resp != nil && len(resp.Data) > 0 {
			c.send(simpleFrame(resp.DataType, resp.Data))
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
	c.handleRequest(req)
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
		if !c.hub.joinGroup(c, req.Group) {
			return protocol.AckInternalServerError, "The connection is closing."
		}
	case protocol.LeaveGroup:
		if !c.perms.allows(PermissionJoinLeaveGroup, req.Group) {
			return protocol.AckForbidden, fmt.Sprintf("The client does not have permission to leave group '%s'.", req.Group)
		}
		c.hub.leaveGroup(c, req.Group)
	case protocol.SendToGroup:
		if !c.perms.allows(PermissionSendToGroup, req.Group) {
			return protocol.AckForbidden, fmt.Sprintf("The client does not have permission to send to group '%s'.", req.Group)
		}
		cmd := &Command{
			Op:         OpSendToGroup,
			Hub:        c.hub.name,
			Target:     req.Group,
			Message:    Message{DataType: req.DataType, Data: req.Data},
			FromUserID: c.userID,
		}
		if req.NoEcho {
			cmd.Excluded = []string{c.id}
		}
		if err := c.hub.publish(c.ctx, cmd); err != nil {
			return protocol.AckInternalServerError, err.Error()
		}
	case protocol.Event:
		resp, err := c.userEvent(req.Event, req.DataType, req.Data)
		if err != nil {
			if errors.Is(err, ErrNoEventHandler) {
				return protocol.AckInternalServerError, fmt.Sprintf("No event handler for event '%s'.", req.Event)
			}
			return protocol.AckInternalServerError, err.Error()
		}
		if resp != nil && len(resp.Data) > 0 {
			// The reply reaches the client before the ack (spec §6.1), as a
			// message from the server (with a sequence id when reliable).
			reply := &Command{Op: OpSendToConnection, Message: Message{resp.DataType, resp.Data}}
			c.deliver(&delivery{cmd: reply}, 0)
		}
	}
	return "", ""
}

// userEvent calls the event handler and keeps the connection state it sets.
func (c *conn) userEvent(name string, t DataType, data []byte) (*UserEventResponse, error) {
	resp, err := c.hub.svc.handler.UserEvent(c.ctx, &UserEventRequest{
		ConnectionContext: c.context(),
		EventName:         name,
		DataType:          t,
		Data:              data,
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
