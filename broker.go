package pubsub

import (
	"context"
	"fmt"

	"github.com/embedwps/pubsub/filter"
)

// Op is a hub operation that a Broker carries to every process of a service.
type Op uint8

// The operations a Broker carries. Sends and closes address connections that
// may live in any process; operations that answer "not found" stay local.
const (
	OpSendToAll Op = iota + 1
	OpSendToGroup
	OpSendToUser
	OpSendToConnection
	OpCloseAll
	OpCloseGroup
	OpCloseUser
	OpCloseConnection
)

// Command is one hub operation, serialisable so that a Broker can carry it
// between processes.
type Command struct {
	Op  Op     `json:"op"`
	Hub string `json:"hub"`
	// Target is the group, user or connection the operation addresses.
	Target   string   `json:"target,omitempty"`
	Excluded []string `json:"excluded,omitempty"`
	// Message is the content of a send.
	Message Message `json:"message"`
	// FromUserID is the publisher of a client's sendToGroup.
	FromUserID string `json:"fromUserId,omitempty"`
	// Reason is the reason of a close.
	Reason string `json:"reason,omitempty"`
	// Filter is an OData filter (rest-api.md §6) that recipients must match.
	Filter string `json:"filter,omitempty"`
	// ExpiresAt, in Unix nanoseconds, drops the message for any connection
	// that has not been written it by then (messageTtlSeconds). 0: never.
	ExpiresAt int64 `json:"expiresAt,omitempty"`

	filter *filter.Filter // Filter, compiled once per process
}

// compile parses the command's filter unless it already was.
func (cmd *Command) compile() error {
	if cmd.Filter == "" || cmd.filter != nil {
		return nil
	}
	f, err := filter.Parse(cmd.Filter)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidFilter, err)
	}
	cmd.filter = f
	return nil
}

// Broker sits between the Go API and local delivery. The default delivers in
// process; a broker for several processes (NATS, say) publishes each command
// to all of them, and each applies it to the connections it holds.
type Broker interface {
	// Start is called once by New with the function that applies a command
	// to this process's connections.
	Start(apply func(*Command)) error
	// Publish hands cmd to every process of the service, this one included.
	Publish(ctx context.Context, cmd *Command) error
	// Close is called by Shutdown.
	Close() error
}

// localBroker applies every command in the calling goroutine.
type localBroker struct{ apply func(*Command) }

func (b *localBroker) Start(apply func(*Command)) error { b.apply = apply; return nil }

func (b *localBroker) Publish(_ context.Context, cmd *Command) error {
	b.apply(cmd)
	return nil
}

func (b *localBroker) Close() error { return nil }
