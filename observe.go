package pubsub

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/lxzan/gws"
)

// An Observer is told what a Service does, for metrics, logs and a live
// trace; the prometheus and livetrace packages are Observers, and the
// service's own logs are written where it tells them (Config.Logger). Its
// methods are called synchronously, where the thing happened, with no lock
// of the service held: they must be quick, must not block, and must not
// call back into the Service. MessageSent is on the fan-out's hot path and
// is called once per message, not once per recipient.
type Observer interface {
	ConnectionChanged(ConnectionEvent)
	MessageReceived(MessageEvent)
	MessageSent(MessageEvent)
}

// ConnectionEventKind is what happened to a connection.
type ConnectionEventKind uint8

// The connection events. A connection is Opened once, on the node where
// its connected event is raised, and Closed once, where its disconnected
// event is; a reliable connection may be Detached (its transport dropped:
// its recovery window runs) and Recovered (a new transport resumed it, on
// this node or, after a handover, another) in between. A connection that
// moves to another node is Recovered there and neither Closed nor Opened.
const (
	ConnectionOpened ConnectionEventKind = iota + 1
	ConnectionClosed
	ConnectionDetached
	ConnectionRecovered
)

func (k ConnectionEventKind) String() string {
	switch k {
	case ConnectionOpened:
		return "opened"
	case ConnectionClosed:
		return "closed"
	case ConnectionDetached:
		return "detached"
	case ConnectionRecovered:
		return "recovered"
	}
	return "unknown"
}

// CloseReason is a closed connection's reason as a short label, fit for a
// metric; Azure Monitor's words where it has one.
type CloseReason string

// The close reasons.
const (
	CloseReasonNormal          CloseReason = "normal"          // the client closed with 1000 or 1001
	CloseReasonClientError     CloseReason = "clientError"     // the client closed with another code
	CloseReasonConnectionLost  CloseReason = "connectionLost"  // the transport failed, no close frame
	CloseReasonAppServer       CloseReason = "appServer"       // a close through the Go API or REST
	CloseReasonServiceReload   CloseReason = "serviceReload"   // Shutdown
	CloseReasonSlowClient      CloseReason = "slowClient"      // an outbound buffer or budget overflowed
	CloseReasonPingTimeout     CloseReason = "pingTimeout"     // silent for the idle timeout
	CloseReasonRecoveryExpired CloseReason = "recoveryExpired" // a detached reliable connection was not recovered in time
	CloseReasonPolicy          CloseReason = "policy"          // rate limit, message timeout, revoked permission, refused recovery
	CloseReasonInvalidMessage  CloseReason = "invalidMessage"  // a malformed or wrongly typed frame
	CloseReasonInternalError   CloseReason = "internalError"   // a failed message event, a recovered panic
	CloseReasonTryAgainLater   CloseReason = "tryAgainLater"   // the inbound budget was exhausted
)

// ConnectionEvent is a change of one connection.
type ConnectionEvent struct {
	Kind         ConnectionEventKind
	Hub          string
	ConnectionID string
	UserID       string
	Subprotocol  string
	// Closed only: the close code and reason the client was sent (none
	// when the client closed, Code 0), the reason's label, and how long
	// the connection was on this node.
	Code        uint16
	Reason      string
	CloseReason CloseReason
	Duration    time.Duration
}

// MessageEvent is one message: received from a client (Type is its request:
// joinGroup, sendToGroup, event, ...; a simple client's message is an
// event named "message"), or fanned out by this node to
// Recipients of its connections (Type is the send: sendToAll, sendToGroup,
// sendToUser, sendToConnection). Bytes is the message's size: the frame as
// received, or the data sent to each recipient.
type MessageEvent struct {
	Hub          string
	ConnectionID string // received only
	Type         string
	Group        string // a group's message
	Event        string // a user event's name
	Bytes        int
	Recipients   int // sent only
}

// closeReasonOf labels a disconnect the service initiated.
func closeReasonOf(d Disconnect) CloseReason {
	switch d {
	case DisconnectServiceShutdown:
		return CloseReasonServiceReload
	case DisconnectSlowClient, DisconnectBufferBudget, DisconnectReliableBufferFull:
		return CloseReasonSlowClient
	case DisconnectPingTimeout:
		return CloseReasonPingTimeout
	case DisconnectBinaryOnJSON, DisconnectTextOnProtobuf:
		return CloseReasonInvalidMessage
	case DisconnectInboundBudget:
		return CloseReasonTryAgainLater
	}
	switch d.Code {
	case CloseNormal, CloseGoingAway:
		return CloseReasonAppServer
	case CloseInvalidPayload, CloseUnsupportedData, CloseMessageTooBig:
		return CloseReasonInvalidMessage
	case CloseInternalError:
		return CloseReasonInternalError
	case CloseTryAgainLater:
		return CloseReasonTryAgainLater
	}
	return CloseReasonPolicy
}

// clientCloseLabel labels a transport's end the service did not initiate.
func clientCloseLabel(err error) CloseReason {
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		if ce.Code == CloseNormal || ce.Code == CloseGoingAway || ce.Code == 0 {
			return CloseReasonNormal
		}
		return CloseReasonClientError
	case err == nil:
		return CloseReasonNormal
	}
	return CloseReasonConnectionLost // io.EOF too: the socket ended without a close frame
}

// connectionChanged logs a change of c and tells the observers. Called
// with no lock of c held.
func (s *Service) connectionChanged(c *conn, kind ConnectionEventKind, d Disconnect, why CloseReason) {
	ev := ConnectionEvent{Kind: kind, Hub: c.hub.name, ConnectionID: c.id, UserID: c.userID, Subprotocol: c.subprotocol}
	if kind == ConnectionClosed {
		ev.Code, ev.Reason, ev.CloseReason = d.Code, d.Reason, why
		ev.Duration = time.Since(c.since)
	}
	s.observeConnection(ev)
}

// observeConnection logs ev and tells the observers.
func (s *Service) observeConnection(ev ConnectionEvent) {
	kind, why := ev.Kind, ev.CloseReason
	d := Disconnect{ev.Code, ev.Reason}
	if s.log.Enabled(context.Background(), slog.LevelInfo) {
		attrs := []slog.Attr{
			slog.String("hub", ev.Hub), slog.String("connectionId", ev.ConnectionID),
			slog.String("userId", ev.UserID), slog.String("subprotocol", ev.Subprotocol),
		}
		if kind == ConnectionClosed {
			attrs = append(attrs, slog.Duration("duration", ev.Duration), slog.String("closeReason", string(why)))
			if d.Code != 0 {
				attrs = append(attrs, slog.Int("code", int(d.Code)), slog.String("reason", d.Reason))
			}
		}
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "connection "+kind.String(), attrs...)
	}
	for _, o := range s.cfg.Observers {
		o.ConnectionChanged(ev)
	}
}

// messageReceived tells the observers (and the debug log) of one inbound
// message.
func (c *conn) messageReceived(typ, group, event string, n int) {
	s := c.svc
	debug := s.log.Enabled(context.Background(), slog.LevelDebug)
	if len(s.cfg.Observers) == 0 && !debug {
		return
	}
	ev := MessageEvent{Hub: c.hub.name, ConnectionID: c.id, Type: typ, Group: group, Event: event, Bytes: n}
	if debug {
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "message received",
			slog.String("hub", ev.Hub), slog.String("connectionId", ev.ConnectionID), slog.String("type", typ),
			slog.String("group", group), slog.String("event", event), slog.Int("bytes", n))
	}
	for _, o := range s.cfg.Observers {
		o.MessageReceived(ev)
	}
}

// messageSent tells the observers (and the debug log) of one fan-out.
func (s *Service) messageSent(cmd *command, recipients int) {
	if recipients == 0 {
		return
	}
	debug := s.log.Enabled(context.Background(), slog.LevelDebug)
	if len(s.cfg.Observers) == 0 && !debug {
		return
	}
	ev := MessageEvent{Hub: cmd.Hub, Type: cmd.Op.String(), Bytes: len(cmd.Data), Recipients: recipients}
	if cmd.Op == opSendToGroup {
		ev.Group = cmd.Target
	}
	if debug {
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "message sent",
			slog.String("hub", ev.Hub), slog.String("type", ev.Type), slog.String("group", ev.Group),
			slog.Int("bytes", ev.Bytes), slog.Int("recipients", recipients))
	}
	for _, o := range s.cfg.Observers {
		o.MessageSent(ev)
	}
}

// HubConnections returns the number of connections of each hub on this
// node (detached reliable ones included), for a gauge.
func (s *Service) HubConnections() map[string]int {
	out := make(map[string]int)
	s.hubs.Range(func(name string, h *hubState) bool {
		if n := h.conns.Size(); n > 0 {
			out[name] = n
		}
		return true
	})
	return out
}
