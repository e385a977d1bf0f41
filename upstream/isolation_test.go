package upstream_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// hangingUpstream answers every request whose path is in hang only once
// release is closed (or the caller gives up), telling arrived first.
func hangingUpstream(t *testing.T, hang ...string) (up *fakeUpstream, arrived chan string, release chan struct{}) {
	arrived, release = make(chan string, 16), make(chan struct{})
	up = newUpstream(t, func(r recorded, w http.ResponseWriter) {
		for _, p := range hang {
			if r.path == p {
				arrived <- r.path
				select {
				case <-release:
				case <-r.ctx.Done():
				}
			}
		}
	})
	return up, arrived, release
}

func awaitArrivals(t *testing.T, arrived chan string, n int) {
	t.Helper()
	for range n {
		select {
		case <-arrived:
		case <-time.After(wstest.WaitFor):
			t.Fatal("the hanging calls did not reach the upstream")
		}
	}
}

// connectsPromptly checks a connect to hub is answered, and accepted, within
// half of WaitFor: shorter than the 10 s a preflight may take and than the
// handler's Timeout in these tests, so that waiting out another call fails.
func connectsPromptly(t *testing.T, h *upstream.Handler, hub string) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := h.Connect(context.Background(), &pubsub.ConnectRequest{ConnectionContext: pubsub.ConnectionContext{Hub: hub, ConnectionID: "c-" + hub}})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("connect to hub %s: %v (after %v)", hub, err, time.Since(start))
		}
	case <-time.After(wstest.WaitFor / 2):
		t.Fatalf("connect to hub %s still waiting after %v: stalled by another handler on its host", hub, wstest.WaitFor/2)
	}
}

// One handler that hangs, with more calls than MaxConcurrent waiting on it,
// must not delay a handler of another hub, or another handler of its own
// hub, on the same host.
func TestHungHandlerStallsNoOtherHandlerOnItsHost(t *testing.T) {
	const maxConcurrent = 2
	up, arrived, release := hangingUpstream(t, "/a/slow/hang")
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{
		"a": {EventHandlers: []upstream.EventHandlerSettings{
			{URLTemplate: up.srv.URL + "/a/slow/{event}", UserEventPattern: "hang"},
			{URLTemplate: up.srv.URL + "/a/other/{event}", SystemEvents: []string{"connect"}},
		}},
		"b": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: up.srv.URL + "/b/{event}", SystemEvents: []string{"connect"}}}},
	}}
	h := newHandler(t, cfg, upstream.Options{MaxConcurrent: maxConcurrent, Timeout: 3 * wstest.WaitFor})

	// MaxConcurrent calls in flight and one more waiting for a slot.
	errs := make(chan error, maxConcurrent+1)
	for i := range maxConcurrent + 1 {
		go func() {
			_, err := h.UserEvent(context.Background(), &pubsub.UserEventRequest{
				ConnectionContext: pubsub.ConnectionContext{Hub: "a", ConnectionID: "hang" + strconv.Itoa(i)},
				EventName:         "hang", DataType: pubsub.DataTypeText, Data: []byte("x"),
			})
			errs <- err
		}()
	}
	t.Cleanup(func() { // before the handler's shutdown and the server's close
		close(release)
		for range maxConcurrent + 1 {
			<-errs
		}
	})
	awaitArrivals(t, arrived, maxConcurrent)

	t.Run("another hub", func(t *testing.T) { connectsPromptly(t, h, "b") })
	t.Run("another handler of the same hub", func(t *testing.T) { connectsPromptly(t, h, "a") })
}

// The abuse-protection check holds its handler's lock during the preflight;
// a hung one must not delay another hub on the same host.
func TestHungValidationStallsNoOtherHub(t *testing.T) {
	up, arrived, release := hangingUpstream(t, "/v/validate")
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{
		"v": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: up.srv.URL + "/v/{event}", SystemEvents: []string{"connect"}}}},
		"b": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: up.srv.URL + "/b/{event}", SystemEvents: []string{"connect"}}}},
	}}
	h := newHandler(t, cfg, upstream.Options{MaxConcurrent: 1, Timeout: 3 * wstest.WaitFor})
	errs := make(chan error, 1)
	go func() {
		_, err := h.Connect(context.Background(), &pubsub.ConnectRequest{ConnectionContext: pubsub.ConnectionContext{Hub: "v", ConnectionID: "v1"}})
		errs <- err
	}()
	t.Cleanup(func() { close(release); <-errs })
	awaitArrivals(t, arrived, 1)
	connectsPromptly(t, h, "b")
}
