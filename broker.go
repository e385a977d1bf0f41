package pubsub

import (
	"context"
	"errors"
)

// Broker connects the nodes (processes) of one service, so that they answer
// as one. Without one, a Service is a single node and every operation is
// applied in the calling goroutine; with one, every hub operation travels
// through it (cluster.go) and is applied, in the order the broker delivers
// it, by each node that holds connections it addresses.
//
// The seam is subjects with interest, publish, request/reply and a flush:
//
//   - A node subscribes to a subject while it holds something the subject
//     names: a hub's connections, a group's members, a user's connections.
//     A send crosses to the nodes that subscribe to its target's subject
//     only; a connection's subject is its node's, which the connection id
//     names.
//   - Every message for a node is passed to receive one at a time, in the
//     order the broker received them across all of the node's subjects:
//     sends from one publisher reach every node in the order they were
//     made.
//   - Flush is an ordering barrier: whatever any node publishes after Flush
//     returned is delivered after what this node published, and after its
//     subscriptions took effect, before the call. (NATS keeps this with
//     the nodes on one server; see docs/scale-out.md.)
//
// Subjects are tokens of [A-Za-z0-9_-] separated by dots; the last token of
// a subscription may be "*", which matches any one token (a node's own
// connection ids). A broker may add a prefix of its own. The natsbroker package is the implementation on NATS.
// Redis pub/sub would need: SUBSCRIBE and UNSUBSCRIBE on one connection
// read by one goroutine (it delivers in order on that connection), PUBLISH
// on another (it is synchronous, so Flush has nothing left to wait for, but
// a subscription change must be confirmed by its reply before Flush
// returns), and Request as a PUBLISH carrying a reply channel that the
// requester subscribes to, with ErrNoResponders when PUBLISH reports zero
// receivers.
type Broker interface {
	// NodeID names this node, uniquely in the cluster: 1 to 32 of
	// [A-Za-z0-9-]. It is part of every connection id the node gives out.
	NodeID() string
	// Start is called once, by New, before the methods below, with the
	// function that receives what is published to the node's subjects.
	// reply is nil unless the message is a Request; it may be called from
	// any goroutine, once.
	Start(receive func(subject string, data []byte, reply func([]byte))) error
	// Subscribe and Unsubscribe start and stop this node's interest in a
	// subject. They must not wait on the network: Flush does.
	Subscribe(subject string) error
	Unsubscribe(subject string) error
	// Publish sends data to every node that subscribes to subject, this one
	// included.
	Publish(subject string, data []byte) error
	// Request publishes data to subject with a reply address, in order with
	// Publish, and returns; each reply is passed to onReply, from any
	// goroutine, until stop is called. When no node subscribes to subject,
	// onReply gets ErrNoResponders.
	Request(subject string, data []byte, onReply func(reply []byte, err error)) (stop func(), err error)
	// Flush returns once what this node published and the subscription
	// changes it made before the call have reached the broker.
	Flush(ctx context.Context) error
	// Close is called by Shutdown, after the last connection is gone.
	Close() error
}

// ErrNoResponders is returned by a Broker's Request when no node subscribes
// to the subject.
var ErrNoResponders = errors.New("pubsub: no node subscribes to the subject")
