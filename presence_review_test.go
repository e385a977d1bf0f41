package pubsub_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// Review (rv-presence): a client whose events pile up behind a slow
// handler fills its queue (4,096); what comes after is dropped, including
// the left events of its end, so the handler is told of joins it never
// hears the end of: it keeps a closed connection in its groups for good.
func TestGroupPresenceOverflowKeepsJoinsBalanced(t *testing.T) {
	p := newPresenceLog()
	h := p.handler()
	entered, release := make(chan struct{}), make(chan struct{})
	joined := h.OnGroupJoined
	h.OnGroupJoined = func(ctx context.Context, ev pubsub.GroupPresenceEvent) {
		if ev.Group == "gate" {
			close(entered)
			<-release
		}
		joined(ctx, ev)
	}
	e := newEnv(t, pubsub.Config{EventHandler: h, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
	c.Send(`{"type":"joinGroup","group":"gate","ackId":1}`)
	c.ExpectAck(1, "")
	<-entered
	// 4,095 events: join a, then (leave a, join a) 2,047 times; then join b,
	// the 4,096th. The queue is full; the connection is in gate, a and b.
	c.Send(`{"type":"joinGroup","group":"a"}`)
	for range 2047 {
		c.Send(`{"type":"leaveGroup","group":"a"}`)
		c.Send(`{"type":"joinGroup","group":"a"}`)
	}
	c.Send(`{"type":"joinGroup","group":"b","ackId":2}`)
	c.ExpectAck(2, "")
	c.Conn.WriteClose(1000, nil)
	<-c.Done()
	// Its end is recorded (the registry lets it go after) while the
	// handler is still held up.
	eventually(t, "the connection's release", func() bool {
		ok, err := e.hub.ConnectionExists(context.Background(), id)
		return err == nil && !ok
	})
	unblock()
	events := p.of(t, id)
	balance := map[string]int{}
	for _, ev := range events {
		kind, group, _ := strings.Cut(ev, " ")
		switch kind {
		case "joined":
			balance[group]++
		case "left":
			balance[group]--
		}
	}
	for g, n := range balance {
		if n != 0 {
			t.Errorf("group %s: %d more joined than left events at disconnected (last events %q)", g, n, events[max(0, len(events)-4):])
		}
	}
}
