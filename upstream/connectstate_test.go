package upstream_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/upstream"
)

// connectReplies answer a connect by its ce-userId, the case's name.
var connectReplies = map[string]func(r recorded, w http.ResponseWriter){
	// Answered 2xx: the application accepted these connects.
	"userId not a string": func(_ recorded, w http.ResponseWriter) { w.Write([]byte(`{"userId":5}`)) },
	"invalid JSON":        func(_ recorded, w http.ResponseWriter) { w.Write([]byte(`{not json`)) },
	"groups not strings":  func(_ recorded, w http.ResponseWriter) { w.Write([]byte(`{"groups":"g"}`)) },
	"reply over 16 MiB":   func(_ recorded, w http.ResponseWriter) { w.Write(bytes.Repeat([]byte(" "), 16<<20+1)) },
	"reply never ends": func(r recorded, w http.ResponseWriter) {
		w.Write([]byte(`{"userId":`))
		w.(http.Flusher).Flush()
		<-r.ctx.Done()
	},
	// Refused or failed: the application accepted nothing.
	"401": func(_ recorded, w http.ResponseWriter) { w.WriteHeader(401) },
	"403": func(_ recorded, w http.ResponseWriter) { w.WriteHeader(403) },
	"500": func(_ recorded, w http.ResponseWriter) { w.WriteHeader(500) },
	"307": func(_ recorded, w http.ResponseWriter) {
		w.Header().Set("Location", "/elsewhere")
		w.WriteHeader(307)
	},
	"no answer": func(r recorded, w http.ResponseWriter) { <-r.ctx.Done() },
}

func connectUpstream(t *testing.T) *fakeUpstream {
	return newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") == "connect" {
			w.Header().Set("ce-connectionState", "state-"+r.header.Get("ce-connectionId"))
			if f := connectReplies[r.header.Get("ce-userId")]; f != nil {
				f(r, w)
			}
		}
	})
}

// refuse sends n connects for each case and checks each is refused with 500
// or, for a 4xx, that status; it returns the connection ids.
func refuse(t *testing.T, h *upstream.Handler, n int, cases ...string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for _, c := range cases {
		want := http.StatusInternalServerError
		if s, err := strconv.Atoi(c); err == nil && s/100 == 4 {
			want = s
		}
		for i := range n {
			id := fmt.Sprintf("%s-%d", c, i)
			ids[id] = true
			resp, err := h.Connect(context.Background(), &pubsub.ConnectRequest{ConnectionContext: pubsub.ConnectionContext{Hub: "chat", ConnectionID: id, UserID: c}})
			if !isRefusal(err, want) {
				t.Errorf("%s: connect answered %v, %v; want a %d refusal", c, resp, err, want)
			}
		}
	}
	return ids
}

// A connect the application accepted (2xx) but the service refuses must
// leave no ce-id counter, and the application must be told it ended.
func TestConnectRefusedAfterTheUpstreamAcceptedSendsDisconnected(t *testing.T) {
	const n = 3
	up := connectUpstream(t)
	h := newHandler(t, all(up.srv.URL), upstream.Options{Timeout: 500 * time.Millisecond})
	ids := refuse(t, h, n, "userId not a string", "invalid JSON", "groups not strings", "reply over 16 MiB", "reply never ends")
	if got := upstream.Counters(h); got != 0 {
		t.Errorf("%d ce-id counters left after %d refused connects, want 0", got, len(ids))
	}
	shutdown(t, h) // every queued event is sent
	got := map[string]int{}
	for _, r := range up.posted("disconnected") {
		id := r.header.Get("ce-connectionId")
		got[id]++
		var body struct{ Reason string }
		json.Unmarshal(r.body, &body)
		if r.header.Get("ce-id") != "1" || body.Reason == "" || r.header.Get("ce-connectionState") != "state-"+id {
			t.Errorf("disconnected for %s: ce-id %s, state %q, body %s", id, r.header.Get("ce-id"), r.header.Get("ce-connectionState"), r.body)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		if got[id] != 1 {
			t.Errorf("%s: %d disconnected events, want 1", id, got[id])
		}
	}
}

// A connect the application refused, or never answered, leaves no counter
// and is followed by no disconnected event.
func TestConnectRefusedByTheUpstreamLeavesNoState(t *testing.T) {
	up := connectUpstream(t)
	h := newHandler(t, all(up.srv.URL), upstream.Options{Timeout: 500 * time.Millisecond})
	ids := refuse(t, h, 3, "401", "403", "500", "307", "no answer")
	if got := upstream.Counters(h); got != 0 {
		t.Errorf("%d ce-id counters left after %d refused connects, want 0", got, len(ids))
	}
	shutdown(t, h)
	if d := up.posted("disconnected"); len(d) != 0 {
		t.Errorf("%d disconnected events for connects the upstream refused", len(d))
	}
}

// The service calls Disconnected after every successful Connect, even when
// the connection never got as far as Connected (a failed upgrade).
func TestDisconnectedWithoutConnected(t *testing.T) {
	up := newUpstream(t, nil)
	h := newHandler(t, all(up.srv.URL), upstream.Options{})
	c := pubsub.ConnectionContext{Hub: "chat", ConnectionID: "c1", UserID: "u"}
	if _, err := h.Connect(context.Background(), &pubsub.ConnectRequest{ConnectionContext: c}); err != nil {
		t.Fatal(err)
	}
	h.Disconnected(context.Background(), c, "the upgrade failed")
	if got := upstream.Counters(h); got != 0 {
		t.Errorf("%d ce-id counters left, want 0", got)
	}
	shutdown(t, h)
	d := up.posted("disconnected")
	if len(d) != 1 || d[0].header.Get("ce-id") != "1" || string(d[0].body) != `{"reason":"the upgrade failed"}` {
		t.Fatalf("disconnected events %v, want one with ce-id 1", d)
	}
	if n := len(up.posted("connected")); n != 0 {
		t.Errorf("%d connected events", n)
	}
}

// A connected event answered 2xx was delivered, however its body ends: it
// is not sent again.
func TestNonBlockingEventAnswered2xxIsNotRetried(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") == "connected" {
			w.Write([]byte("ok, and more to come"))
			w.(http.Flusher).Flush()
			<-r.ctx.Done() // the body never ends
		}
	})
	h := newHandler(t, all(up.srv.URL), upstream.Options{Timeout: 300 * time.Millisecond})
	h.Connected(context.Background(), pubsub.ConnectionContext{Hub: "chat", ConnectionID: "c1"})
	shutdown(t, h)
	if n := len(up.posted("connected")); n != 1 {
		t.Fatalf("the connected event was sent %d times, want once", n)
	}
}
