package upstream_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// lines returns the logged lines that contain s.
func (b *logBuffer) lines(s string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

func newLog() (*logBuffer, *slog.Logger) {
	b := newLogBuffer()
	return b, slog.New(slog.NewTextHandler(b, nil))
}

// systemEvents sends connected and disconnected of every hub to url.
func systemEvents(url string) upstream.Config {
	return upstream.Config{Hubs: map[string]upstream.HubSettings{"*": {EventHandlers: []upstream.EventHandlerSettings{
		{URLTemplate: url + "/{hub}/{event}", SystemEvents: []string{"connected", "disconnected"}},
	}}}}
}

// An upstream that answers 503 to every event does not hold Shutdown for
// the retry delays: the event waiting for its retry is tried once more at
// once, the ones queued behind it once each, and one line counts them.
func TestShutdownDoesNotWaitOutRetriesOfADeadUpstream(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.method == http.MethodPost {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	logs, log := newLog()
	h := newHandler(t, systemEvents(up.srv.URL), upstream.Options{
		Workers: 1, RetryDelays: []time.Duration{time.Minute, time.Minute}, Logger: log,
	})
	const n = 5
	for i := range n {
		c := pubsub.ConnectionContext{Hub: "chat", ConnectionID: "conn-" + strconv.Itoa(i)}
		h.Disconnected(context.Background(), c, "secret-reason-"+strconv.Itoa(i))
	}
	first := up.next(t) // failed: conn-0 now waits a minute for its retry
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v: it waited out the retry delays", d)
	}
	posts := up.posted("disconnected")
	if len(posts) != n+1 {
		t.Fatalf("%d attempts, want %d: one more for the event waiting to retry, one for each queued", len(posts), n+1)
	}
	if id := posts[1].header.Get("ce-id"); posts[1].header.Get("ce-connectionId") != "conn-0" || id != first.header.Get("ce-id") {
		t.Fatalf("second attempt %s ce-id %s, want conn-0's retry with ce-id %s", posts[1].header.Get("ce-connectionId"), id, first.header.Get("ce-id"))
	}
	checkDropped(t, logs, n, "failed="+strconv.Itoa(n), "droppedPerHub.chat="+strconv.Itoa(n))
}

// When Shutdown's ctx ends with events in flight to an upstream that does
// not answer and others queued behind them, all are dropped, promptly, and
// one line counts them per hub.
func TestShutdownDeadlineDropsWhatIsPending(t *testing.T) {
	arrived := make(chan string, 16)
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.method == http.MethodPost {
			arrived <- r.header.Get("ce-hub")
			<-r.ctx.Done() // never answers
		}
	})
	logs, log := newLog()
	h := newHandler(t, systemEvents(up.srv.URL), upstream.Options{Workers: 1, Logger: log})
	perHub := map[string]int{"chat": 3, "room": 2}
	for hub, n := range perHub {
		for i := range n {
			c := pubsub.ConnectionContext{Hub: hub, ConnectionID: hub + "-conn-" + strconv.Itoa(i)}
			h.Disconnected(context.Background(), c, "secret-reason")
		}
	}
	for range perHub { // each hub's worker has its first event in flight
		select {
		case <-arrived:
		case <-time.After(wstest.WaitFor):
			t.Fatal("no event reached the upstream")
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := h.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the deadline", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if n := len(up.posted("disconnected")); n != len(perHub) {
		t.Fatalf("%d events sent, want only the %d in flight", n, len(perHub))
	}
	checkDropped(t, logs, 5, "cancelled=5", "droppedPerHub.chat=3", "droppedPerHub.room=2")
}

// A healthy upstream still gets every queued event at Shutdown, the one
// waiting for its retry included (at once, with its ce-id), in order per
// connection, and nothing is reported dropped.
func TestShutdownDeliversEveryQueuedEvent(t *testing.T) {
	var mu sync.Mutex
	failFirst := true
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		mu.Lock()
		defer mu.Unlock()
		if r.method == http.MethodPost && failFirst {
			failFirst = false
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	logs, log := newLog()
	h := newHandler(t, systemEvents(up.srv.URL), upstream.Options{
		Workers: 2, RetryDelays: []time.Duration{time.Minute}, Logger: log,
	})
	c0 := pubsub.ConnectionContext{Hub: "chat", ConnectionID: "conn-0"}
	h.Connected(context.Background(), c0)
	up.next(t) // answered 503: conn-0's connected waits a minute for its retry
	const n = 20
	h.Disconnected(context.Background(), c0, "bye")
	for i := 1; i < n; i++ {
		c := pubsub.ConnectionContext{Hub: "chat", ConnectionID: "conn-" + strconv.Itoa(i)}
		h.Connected(context.Background(), c)
		h.Disconnected(context.Background(), c, "bye")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v: it waited out the retry delay", d)
	}
	// Every connection's events, in order: connected (ce-id 0), then
	// disconnected (1); conn-0's connected twice, the retry with its ce-id.
	got := map[string][]string{}
	up.mu.Lock()
	for _, r := range up.requests {
		if r.method == http.MethodPost {
			id := r.header.Get("ce-connectionId")
			got[id] = append(got[id], r.header.Get("ce-eventName")+"/"+r.header.Get("ce-id"))
		}
	}
	up.mu.Unlock()
	if want := "connected/0 connected/0 disconnected/1"; strings.Join(got["conn-0"], " ") != want {
		t.Fatalf("conn-0's events %v, want %s", got["conn-0"], want)
	}
	for i := 1; i < n; i++ {
		id := "conn-" + strconv.Itoa(i)
		if want := "connected/0 disconnected/1"; strings.Join(got[id], " ") != want {
			t.Fatalf("%s's events %v, want %s", id, got[id], want)
		}
	}
	if l := logs.lines("dropped"); len(l) != 0 {
		t.Fatalf("reported dropped: %v", l)
	}
}

// checkDropped wants exactly one WARN line counting n dropped events with
// attrs, and nothing of the events themselves in the log.
func checkDropped(t *testing.T, logs *logBuffer, n int, attrs ...string) {
	t.Helper()
	lines := logs.lines("dropped=")
	if len(lines) != 1 {
		t.Fatalf("want one line counting the dropped events, got %d:\n%s", len(lines), logs)
	}
	for _, a := range append([]string{"level=WARN", "dropped=" + strconv.Itoa(n)}, attrs...) {
		if !strings.Contains(lines[0], a) {
			t.Errorf("the line lacks %s: %s", a, lines[0])
		}
	}
	for _, secret := range []string{"secret-reason", "conn-", primaryKey, secondaryKey} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log shows %q:\n%s", secret, logs)
		}
	}
}
