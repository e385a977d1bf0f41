package pubsub_test

import (
	"context"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A client whose socket goes away without a close frame (its process was
// killed, its network dropped: the kernel sends a FIN) lost its
// connection: CloseReasonConnectionLost says "the transport failed, no
// close frame". It is not a normal close.
func TestObserverSocketClosedWithoutCloseFrameIsConnectionLost(t *testing.T) {
	o := newObserved()
	e := newEnv(t, pubsub.Config{Observers: []pubsub.Observer{o}})
	gone := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "gone"}))
	must(t, gone.Close()) // no close frame
	o.closedAs(t, "gone", pubsub.CloseReasonConnectionLost)
}

// sentCounter adds up the recipients of the fan-outs it is told of.
type sentCounter struct {
	mu   sync.Mutex
	sent int
}

func (o *sentCounter) ConnectionChanged(pubsub.ConnectionEvent) {}
func (o *sentCounter) MessageReceived(pubsub.MessageEvent)      {}
func (o *sentCounter) MessageSent(ev pubsub.MessageEvent) {
	o.mu.Lock()
	o.sent += ev.Recipients
	o.mu.Unlock()
}

// An event handler's reply to a user event is a message the service sends
// to the connection (the client gets it as a server message, before the
// ack): outbound_messages_total must count it as Azure's outbound traffic
// does. The observers are never told of it: only fanOut reports sends.
func TestObserverCountsAUserEventReplySent(t *testing.T) {
	o := &sentCounter{}
	e := newEnv(t, pubsub.Config{Observers: []pubsub.Observer{o}, EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: []byte("pong")}, nil
		},
	}})
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "u"}))
	c.Send(`{"type":"event","event":"ping","ackId":1,"dataType":"text","data":"x"}`)
	if m := c.NextJSON(); m["type"] != "message" || m["data"] != "pong" {
		t.Fatalf("got %v, want the reply", m)
	}
	c.ExpectAck(1, "")
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.sent != 1 {
		t.Fatalf("the observers were told of %d messages sent, want 1 (the reply)", o.sent)
	}
}
