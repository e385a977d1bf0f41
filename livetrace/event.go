package livetrace

import "time"

// The kinds of events a stream carries. The page groups them: connection.*
// are connectivity logs, message.* messaging logs, rest.request the REST
// request logs; the others are about the stream itself.
const (
	kindReceived = "message.received"
	kindSent     = "message.sent"
	kindREST     = "rest.request"
	kindReady    = "ready"   // the first event: the stream is registered
	kindDropped  = "dropped" // Dropped events were lost: the page was slow
	kindExpired  = "expired" // the last event: the token expired
	kindClosed   = "closed"  // the last event: the Trace was closed
)

// event is one line of the trace, as JSON in a Server-Sent Event. It holds
// what Observer events hold (sizes, names, ids) and never a message's data.
type event struct {
	Time         time.Time `json:"time"`
	Kind         string    `json:"kind"`
	Hub          string    `json:"hub,omitempty"`
	ConnectionID string    `json:"connectionId,omitempty"`
	UserID       string    `json:"userId,omitempty"`
	Subprotocol  string    `json:"subprotocol,omitempty"`
	// connection.closed
	CloseReason string `json:"closeReason,omitempty"`
	Code        uint16 `json:"code,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// connection.closed and rest.request, in milliseconds
	DurationMS float64 `json:"durationMs,omitempty"`
	// message.*
	Type       string `json:"type,omitempty"`
	Group      string `json:"group,omitempty"`
	Event      string `json:"event,omitempty"`
	Bytes      int    `json:"bytes,omitempty"`
	Recipients int    `json:"recipients,omitempty"`
	// rest.request
	Operation string `json:"operation,omitempty"`
	Method    string `json:"method,omitempty"`
	Path      string `json:"path,omitempty"`
	Status    int    `json:"status,omitempty"`
	// dropped
	Dropped uint64 `json:"dropped,omitempty"`
	// ready
	Buffer  int        `json:"buffer,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}
