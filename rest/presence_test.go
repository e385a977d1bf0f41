package rest_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/rest"
)

// Each REST membership operation raises the group presence events of the
// changes it made, and only those.
func TestRESTGroupPresence(t *testing.T) {
	var mu sync.Mutex
	var log []string
	done := make(chan struct{})
	e := newEnvWith(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnGroupJoined: func(_ context.Context, ev pubsub.GroupPresenceEvent) {
			mu.Lock()
			log = append(log, "joined "+ev.UserID+" "+ev.Group)
			mu.Unlock()
		},
		OnGroupLeft: func(_ context.Context, ev pubsub.GroupPresenceEvent) {
			mu.Lock()
			log = append(log, "left "+ev.UserID+" "+ev.Group)
			mu.Unlock()
		},
		OnDisconnected: func(context.Context, pubsub.ConnectionContext, string) { close(done) },
	}}, rest.Options{})
	c, id := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice"}))

	e.expect(200, e.do("PUT", "hubs/chat/groups/a/connections/"+id, nil, "", ""))
	e.expect(200, e.do("PUT", "hubs/chat/groups/a/connections/"+id, nil, "", "")) // in it already
	e.expect(200, e.do("PUT", "hubs/chat/users/alice/groups/b", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/groups/a/connections/"+id, nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/groups/a/connections/"+id, nil, "", "")) // not in it
	e.expect(204, e.do("DELETE", "hubs/chat/users/alice/groups/b", nil, "", ""))
	e.expect(200, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":["x","y"],"filter":"userId eq 'alice'"}`))
	e.expect(200, e.do("POST", "hubs/chat/:removeFromGroups", nil, "application/json", `{"groups":["x"]}`))
	e.expect(204, e.do("DELETE", "hubs/chat/connections/"+id+"/groups", nil, "", ""))
	e.expect(200, e.do("PUT", "hubs/chat/users/alice/groups/z", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/users/alice/groups", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/connections/"+id, nil, "", ""))
	c.ExpectClose()
	select {
	case <-done:
	case <-time.After(wstest.WaitFor):
		t.Fatal("no disconnected event")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"joined alice a", "joined alice b", "left alice a", "left alice b",
		"joined alice x", "joined alice y", "left alice x", "left alice y", "joined alice z", "left alice z"}
	if !slices.Equal(log, want) {
		t.Fatalf("events\n got %q\nwant %q", log, want)
	}
}
