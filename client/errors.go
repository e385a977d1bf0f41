package client

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/embedwps/pubsub/protocol"
)

var (
	// ErrStopped is returned by an operation on a client that is not
	// started, or that stopped while the operation waited.
	ErrStopped = errors.New("client: stopped")
	// ErrStarted is returned by Start on a client already started.
	ErrStarted = errors.New("client: already started")
	// ErrConnectionLost is returned by InvokeEvent when the transport
	// dropped before the invokeResponse came: the service does not keep
	// invocations across transports, so it is not retried. It also ends
	// the group streams, written and received, of a connection that ended
	// (the service ended them with it), and a request, or a written
	// stream, whose transport ended four times without an ack (one the
	// service closes the connection over, as too big, would go on
	// forever).
	ErrConnectionLost = errors.New("client: connection lost")
	// ErrLeftGroup ends the streams of a group being received when the
	// client leaves the group.
	ErrLeftGroup = errors.New("client: left the group")
	// ErrStreamEnded is returned by a GroupStreamWriter's Write, End or
	// Abort after End or Abort.
	ErrStreamEnded = errors.New("client: the stream was ended")
)

// The error names of the service's acks and invokeResponses, for
// errors.Is: errors.Is(err, client.ErrForbidden).
var (
	ErrForbidden           = errors.New(protocol.AckForbidden)
	ErrInternalServerError = errors.New(protocol.AckInternalServerError)
	ErrBadRequest          = errors.New(protocol.AckBadRequest)
	ErrTooManyRequests     = errors.New(protocol.AckTooManyRequests)
	// The names of a stream's end (StreamError): not open at the service,
	// idle too long, ended for the publisher's session or a bad frame,
	// aborted by its publisher.
	ErrStreamNotFound = errors.New(protocol.StreamNotFound)
	ErrIdleTimeout    = errors.New(protocol.StreamIdleTimeout)
	ErrCancelled      = errors.New(protocol.StreamCancelled)
	ErrUserError      = errors.New(protocol.StreamUserError)
)

var namedErrors = map[string]error{
	protocol.AckForbidden:           ErrForbidden,
	protocol.AckInternalServerError: ErrInternalServerError,
	protocol.AckBadRequest:          ErrBadRequest,
	protocol.AckTooManyRequests:     ErrTooManyRequests,
	protocol.StreamNotFound:         ErrStreamNotFound,
	protocol.StreamIdleTimeout:      ErrIdleTimeout,
	protocol.StreamCancelled:        ErrCancelled,
	protocol.StreamUserError:        ErrUserError,
}

// AckError is a request the service refused: an ack or invokeResponse
// with success false. It unwraps to ErrForbidden and the like when the
// name is one of theirs (clients must tolerate new names: Name is as sent).
type AckError struct {
	AckID        uint64 // 0 for an invocation
	InvocationID string // "" for an ack
	Name         string
	Message      string
}

func (e *AckError) Error() string {
	id := "ack " + strconv.FormatUint(e.AckID, 10)
	if e.InvocationID != "" {
		id = "invocation " + e.InvocationID
	}
	return "client: " + id + " failed: " + e.Name + ": " + e.Message
}

func (e *AckError) Unwrap() error { return namedErrors[e.Name] }

// StreamError is why a group stream ended abnormally: the service's
// streamClosed to its publisher, or the error its receivers got with the
// terminal fragment (a publisher's Abort is named UserError there). It
// unwraps to ErrForbidden, ErrIdleTimeout and the like.
type StreamError struct {
	StreamID      string
	Name          string
	Message       string
	UserErrorCode string // a publisher's Abort only
}

func (e *StreamError) Error() string {
	s := "client: stream " + strconv.Quote(e.StreamID) + " ended: " + e.Name + ": " + e.Message
	if e.UserErrorCode != "" {
		s += " (" + e.UserErrorCode + ")"
	}
	return s
}

func (e *StreamError) Unwrap() error { return namedErrors[e.Name] }

// lostError is a request or stream given up after its transports ended
// without an ack; it unwraps to ErrConnectionLost.
type lostError struct {
	what       string
	transports int
	code       uint16 // the last transport's close code
}

func (e *lostError) Error() string {
	return fmt.Sprintf("client: %s: no ack on %d transports, the last closed with %d", e.what, e.transports, e.code)
}

func (e *lostError) Unwrap() error { return ErrConnectionLost }
