package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
)

// EventHandler is the event handler seam of Azure Web PubSub: the service
// calls it for the connect, connected and disconnected system events and for
// user events. An in-process Go handler is the fast path; the CloudEvents HTTP
// upstream is another implementation of the same interface.
//
// Connect and UserEvent are blocking: a connection's handshake waits for
// Connect, and its next frame waits for UserEvent, so one connection's events
// arrive in order. Connected and Disconnected are called once per connection
// from that connection's goroutine; a handler that needs to do slow work there
// should hand it off.
type EventHandler interface {
	// Connect may refuse the connection with a *ConnectError (see
	// RejectConnect), or return overrides. ErrNoEventHandler, or a nil
	// response, accepts the connection with the token's defaults.
	Connect(ctx context.Context, req *ConnectRequest) (*ConnectResponse, error)
	// Connected is called after the connection is registered and a PubSub
	// client was sent its "connected" message.
	Connected(ctx context.Context, conn ConnectionContext)
	// Disconnected is called once when a connection whose Connect succeeded
	// ends, with the reason.
	Disconnected(ctx context.Context, conn ConnectionContext, reason string)
	// UserEvent handles a user event: "message" for every frame of a simple
	// client, or the event name of a PubSub client's "event" request. A
	// response with data is sent back to that connection only. Returning
	// ErrNoEventHandler means nobody handles the event: a simple client is
	// closed (1011) and a PubSub client gets an InternalServerError ack.
	UserEvent(ctx context.Context, req *UserEventRequest) (*UserEventResponse, error)
}

// GroupPresenceHandler is implemented by an EventHandler that wants the
// group presence events (Azure's preview "joined" and "left"): a
// connection joined or left a group, by any path (its own request, the Go
// API or REST, its token's or connect response's groups, its end). Only a
// change that happened is an event: joining a group the connection is in,
// or leaving one it is not in, is none. A reliable connection that
// recovers, here or on another node, keeps its groups: no event.
//
// They are notifications, like Connected and Disconnected, made with no
// lock held. The service calls them from a few goroutines of its own, not
// where the membership changed (a client's read loop, a Go API or REST
// call, the broker's goroutine in a cluster), so a slow handler delays
// only the presence events and may call the Go API; when a connection
// ends, its last ones are called where Disconnected is, just before it.
// One connection's events come one at a time, in the order its membership
// changed, after its Connected (its token's groups included) and before
// its Disconnected. A connection with 4,096 events waiting (or twice
// Config.MaxGroupsPerConnection, if more) drops the next ones, logged.
type GroupPresenceHandler interface {
	GroupJoined(ctx context.Context, ev GroupPresenceEvent)
	GroupLeft(ctx context.Context, ev GroupPresenceEvent)
}

// GroupPresenceEvent is a connection that joined or left Group.
type GroupPresenceEvent struct {
	ConnectionContext
	Group string
}

// AnonymousPolicy is implemented by an EventHandler that decides per hub
// whether clients may connect without a token (Azure's
// anonymousConnectPolicy "allow"); the handler's connect event then decides.
type AnonymousPolicy interface {
	AllowAnonymous(hub string) bool
}

// ErrNoEventHandler is returned by an EventHandler for an event it does not
// handle.
var ErrNoEventHandler = errors.New("pubsub: no event handler for this event")

// ConnectionContext describes the connection an event is about.
type ConnectionContext struct {
	Hub          string
	ConnectionID string
	UserID       string
	Subprotocol  string
	// ConnectionState is the opaque state the handler set in an earlier
	// blocking response (ce-connectionState); empty when none.
	ConnectionState string
	// Signature of a CloudEvents upstream is computed there, not here.
}

// ClientCertificate is a TLS client certificate offered by the client.
type ClientCertificate struct {
	Thumbprint string `json:"thumbprint"`
	Content    string `json:"content,omitempty"`
}

// ConnectRequest is the connect event: who is connecting and with what.
type ConnectRequest struct {
	ConnectionContext
	// Claims are the token's claims, every value as strings.
	Claims map[string][]string
	// Query is the request's query, without access_token.
	Query map[string][]string
	// Headers are the request headers, without Authorization.
	Headers            map[string][]string
	Subprotocols       []string
	ClientCertificates []ClientCertificate
	// Roles and Groups are what the token grants, for convenience.
	Roles  []string
	Groups []string
}

// ConnectResponse overrides what the token said. Nil fields keep the token's
// values.
type ConnectResponse struct {
	// UserID, when not nil, replaces the token's sub (an empty string makes the
	// connection anonymous).
	UserID *string
	// Groups, when not nil, replace the token's groups.
	Groups []string
	// Roles, when not nil, replace the token's roles.
	Roles []string
	// Subprotocol selects one of the offered subprotocols; empty selects the
	// first predefined one the client offered, if any.
	Subprotocol string
	// ConnectionState, when not nil, sets the connection state.
	ConnectionState *string
}

// ConnectError refuses a connection: the WebSocket handshake fails with the
// HTTP status, and Reason is logged and written in the response body.
type ConnectError struct {
	Status int
	Reason string
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("pubsub: connect refused (%d): %s", e.Status, e.Reason)
}

// RejectConnect returns a ConnectError. Statuses outside 400–599 become 500.
func RejectConnect(status int, reason string) error {
	if status < 400 || status > 599 {
		status = http.StatusInternalServerError
	}
	return &ConnectError{Status: status, Reason: reason}
}

// UserEventRequest is a user event.
type UserEventRequest struct {
	ConnectionContext
	EventName string
	DataType  DataType
	Data      []byte
	// Metadata is the metadata the client sent with its event (nil when
	// none); the CloudEvents upstream forwards it as
	// x-webpubsub-metadata-{key} headers.
	Metadata map[string]string
}

// UserEventResponse is the reply to a user event. Empty Data sends nothing.
type UserEventResponse struct {
	DataType DataType
	Data     []byte
	// ConnectionState, when not nil, sets the connection state.
	ConnectionState *string
}

// Shutdowner is implemented by an EventHandler that holds resources, such as
// the CloudEvents upstream: Service.Shutdown calls Shutdown after the last
// disconnected event was handled, with Shutdown's context.
type Shutdowner interface {
	Shutdown(ctx context.Context) error
}

// EventHandlerFuncs is an EventHandler, and a GroupPresenceHandler, made of
// optional functions; a nil function handles nothing (ErrNoEventHandler
// for Connect and UserEvent).
type EventHandlerFuncs struct {
	OnConnect      func(ctx context.Context, req *ConnectRequest) (*ConnectResponse, error)
	OnConnected    func(ctx context.Context, conn ConnectionContext)
	OnDisconnected func(ctx context.Context, conn ConnectionContext, reason string)
	OnUserEvent    func(ctx context.Context, req *UserEventRequest) (*UserEventResponse, error)
	OnGroupJoined  func(ctx context.Context, ev GroupPresenceEvent)
	OnGroupLeft    func(ctx context.Context, ev GroupPresenceEvent)
}

// Connect implements EventHandler.
func (f EventHandlerFuncs) Connect(ctx context.Context, req *ConnectRequest) (*ConnectResponse, error) {
	if f.OnConnect == nil {
		return nil, ErrNoEventHandler
	}
	return f.OnConnect(ctx, req)
}

// Connected implements EventHandler.
func (f EventHandlerFuncs) Connected(ctx context.Context, conn ConnectionContext) {
	if f.OnConnected != nil {
		f.OnConnected(ctx, conn)
	}
}

// Disconnected implements EventHandler.
func (f EventHandlerFuncs) Disconnected(ctx context.Context, conn ConnectionContext, reason string) {
	if f.OnDisconnected != nil {
		f.OnDisconnected(ctx, conn, reason)
	}
}

// UserEvent implements EventHandler.
func (f EventHandlerFuncs) UserEvent(ctx context.Context, req *UserEventRequest) (*UserEventResponse, error) {
	if f.OnUserEvent == nil {
		return nil, ErrNoEventHandler
	}
	return f.OnUserEvent(ctx, req)
}

// GroupJoined implements GroupPresenceHandler.
func (f EventHandlerFuncs) GroupJoined(ctx context.Context, ev GroupPresenceEvent) {
	if f.OnGroupJoined != nil {
		f.OnGroupJoined(ctx, ev)
	}
}

// GroupLeft implements GroupPresenceHandler.
func (f EventHandlerFuncs) GroupLeft(ctx context.Context, ev GroupPresenceEvent) {
	if f.OnGroupLeft != nil {
		f.OnGroupLeft(ctx, ev)
	}
}

// presenceHandler returns h's GroupPresenceHandler, nil when it has none
// (or is EventHandlerFuncs without presence functions): then no connection
// records presence events at all.
func presenceHandler(h EventHandler) GroupPresenceHandler {
	if f, ok := h.(*EventHandlerFuncs); ok && f != nil {
		h = *f
	}
	if f, ok := h.(EventHandlerFuncs); ok && f.OnGroupJoined == nil && f.OnGroupLeft == nil {
		return nil
	}
	p, _ := h.(GroupPresenceHandler)
	return p
}

// guardedHandler turns a panic in the application's event handler into an
// error for the one connection concerned, so that it never takes the process
// down.
type guardedHandler struct {
	h   EventHandler
	p   GroupPresenceHandler // h's, or nil
	log *slog.Logger
}

func (g guardedHandler) recover(event string, err *error) {
	if r := recover(); r != nil {
		g.log.Error("event handler panicked", "event", event, "panic", r, "stack", string(debug.Stack()))
		if err != nil {
			*err = fmt.Errorf("pubsub: the %s event handler panicked: %v", event, r)
		}
	}
}

func (g guardedHandler) Connect(ctx context.Context, req *ConnectRequest) (resp *ConnectResponse, err error) {
	defer g.recover("connect", &err)
	return g.h.Connect(ctx, req)
}

func (g guardedHandler) Connected(ctx context.Context, conn ConnectionContext) {
	defer g.recover("connected", nil)
	g.h.Connected(ctx, conn)
}

func (g guardedHandler) Disconnected(ctx context.Context, conn ConnectionContext, reason string) {
	defer g.recover("disconnected", nil)
	g.h.Disconnected(ctx, conn, reason)
}

func (g guardedHandler) UserEvent(ctx context.Context, req *UserEventRequest) (resp *UserEventResponse, err error) {
	defer g.recover("user", &err)
	return g.h.UserEvent(ctx, req)
}

func (g guardedHandler) GroupJoined(ctx context.Context, ev GroupPresenceEvent) {
	defer g.recover("joined", nil)
	g.p.GroupJoined(ctx, ev)
}

func (g guardedHandler) GroupLeft(ctx context.Context, ev GroupPresenceEvent) {
	defer g.recover("left", nil)
	g.p.GroupLeft(ctx, ev)
}
