package pubsub_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// observed records what an Observer is told, per user id.
type observed struct {
	mu     sync.Mutex
	closed map[string]chan pubsub.ConnectionEvent
	opened map[string]int
}

func newObserved() *observed {
	return &observed{closed: map[string]chan pubsub.ConnectionEvent{}, opened: map[string]int{}}
}

func (o *observed) ch(user string) chan pubsub.ConnectionEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed[user] == nil {
		o.closed[user] = make(chan pubsub.ConnectionEvent, 4)
	}
	return o.closed[user]
}

func (o *observed) ConnectionChanged(ev pubsub.ConnectionEvent) {
	switch ev.Kind {
	case pubsub.ConnectionOpened:
		o.mu.Lock()
		o.opened[ev.UserID]++
		o.mu.Unlock()
	case pubsub.ConnectionClosed:
		o.ch(ev.UserID) <- ev
	}
}
func (o *observed) MessageReceived(pubsub.MessageEvent) {}
func (o *observed) MessageSent(pubsub.MessageEvent)     {}

// closedAs waits for user's close and checks its label.
func (o *observed) closedAs(t *testing.T, user string, want pubsub.CloseReason) pubsub.ConnectionEvent {
	t.Helper()
	select {
	case ev := <-o.ch(user):
		if ev.CloseReason != want {
			t.Fatalf("%s closed as %q (%d %q), want %q", user, ev.CloseReason, ev.Code, ev.Reason, want)
		}
		o.mu.Lock()
		opened := o.opened[user]
		o.mu.Unlock()
		if opened != 1 || ev.Hub != "chat" || ev.Duration <= 0 {
			t.Fatalf("%s: opened %d times, closed %+v", user, opened, ev)
		}
		return ev
	case <-time.After(wstest.WaitFor):
		t.Fatalf("%s never closed", user)
	}
	return pubsub.ConnectionEvent{}
}

// Each way a connection ends reaches the observers with its label: a
// silent client, a slow one, a bad frame, a close through the Go API, the
// client's own close, and Shutdown.
func TestObserverCloseReasons(t *testing.T) {
	o := newObserved()
	e := newEnv(t, pubsub.Config{Observers: []pubsub.Observer{o}, KeepAliveInterval: 20 * time.Millisecond,
		IdleTimeout: 300 * time.Millisecond, OutboundBufferSize: 64 << 10, WriteTimeout: time.Minute})

	silent := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "silent"}))
	go silent.DiscardUntilClosed(wstest.WaitFor)
	o.closedAs(t, "silent", pubsub.CloseReasonPingTimeout)

	wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "slow", Groups: []string{"room"}})) // reads nothing
	payload := pubsub.TextMessage(strings.Repeat("x", 32<<10))
	for i := 0; i < 4096 && len(o.ch("slow")) == 0; i++ {
		must(t, e.hub.SendToGroup(t.Context(), "room", payload))
	}
	o.closedAs(t, "slow", pubsub.CloseReasonSlowClient)

	bad, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "bad"}))
	bad.SendBinary([]byte("not text"))
	o.closedAs(t, "bad", pubsub.CloseReasonInvalidMessage)

	_, byAPI := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "api"}))
	must(t, e.hub.CloseConnection(t.Context(), byAPI, ""))
	o.closedAs(t, "api", pubsub.CloseReasonAppServer)

	self, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "self"}))
	self.Conn.WriteClose(1000, nil)
	if ev := o.closedAs(t, "self", pubsub.CloseReasonNormal); ev.Code != 0 {
		t.Fatalf("a client's close has a service close code: %+v", ev)
	}

	_, _ = wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "last"}))
	must(t, e.svc.Shutdown(t.Context()))
	if ev := o.closedAs(t, "last", pubsub.CloseReasonServiceReload); ev.Code != pubsub.CloseGoingAway {
		t.Fatalf("shutdown close %+v", ev)
	}
}
