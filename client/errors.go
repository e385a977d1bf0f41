package client

import (
	"errors"
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
	// invocations across transports, so it is not retried.
	ErrConnectionLost = errors.New("client: connection lost before the response")
)

// The error names of the service's acks and invokeResponses, for
// errors.Is: errors.Is(err, client.ErrForbidden).
var (
	ErrForbidden           = errors.New(protocol.AckForbidden)
	ErrInternalServerError = errors.New(protocol.AckInternalServerError)
	ErrBadRequest          = errors.New(protocol.AckBadRequest)
	ErrTooManyRequests     = errors.New(protocol.AckTooManyRequests)
)

var namedErrors = map[string]error{
	protocol.AckForbidden:           ErrForbidden,
	protocol.AckInternalServerError: ErrInternalServerError,
	protocol.AckBadRequest:          ErrBadRequest,
	protocol.AckTooManyRequests:     ErrTooManyRequests,
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
