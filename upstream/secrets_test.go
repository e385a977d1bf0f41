package upstream_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// logBuffer collects log output written from several goroutines, and
// tells a waiting test each time it grows.
type logBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{wrote: make(chan struct{}, 1)} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits until the log contains s.
func (l *logBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(wstest.WaitFor)
	for !strings.Contains(l.String(), s) {
		select {
		case <-l.wrote:
		case <-timeout:
			t.Fatalf("never logged %q:\n%s", s, l.String())
		}
	}
}

// TestURLSecretsStayHidden: a urlTemplate may carry a key (Azure Functions
// take theirs in ?code=, as https://<app>.azurewebsites.net/runtime/
// webhooks/webpubsub?code=<key>). Failures are logged and answered
// without it: net/http's errors quote the whole URL, and a user event's
// error reaches the client in its ack.
func TestURLSecretsStayHidden(t *testing.T) {
	const secret = "SECRET-function-key"
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") == "broken" {
			c, _, _ := w.(http.Hijacker).Hijack() // no answer at all
			c.Close()
		}
	})
	dead := newUpstream(t, nil)
	dead.srv.Close()
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{
		"chat": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: up.srv.URL + "/{event}?code=" + secret, UserEventPattern: "*"}}},
		"dead": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: dead.srv.URL + "/{event}?code=" + secret, SystemEvents: []string{"connect"}}}},
		"slow": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: "http://user:" + secret + "@" + dead.srv.Listener.Addr().String() + "/{event}", SystemEvents: []string{"connected"}}}},
	}}
	logs := newLogBuffer()
	e := newEnv(t, cfg, upstream.Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), RetryDelays: []time.Duration{}})

	c, _ := wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{}))
	c.Send(`{"type":"event","event":"broken","ackId":1,"dataType":"text","data":"x"}`)
	ack := c.ExpectAck(1, "InternalServerError")
	if msg := ack["error"].(map[string]any)["message"].(string); strings.Contains(msg, secret) || !strings.Contains(msg, "code=***") {
		t.Fatalf("the ack says %q", msg)
	}
	if got := wstest.HandshakeStatus(t, e.url(t, "dead", pubsub.TokenOptions{}), nil); got != 500 {
		t.Fatalf("unreachable upstream: %d", got)
	}
	wstest.DialJSON(t, e.url(t, "slow", pubsub.TokenOptions{})) // connected goes nowhere
	for _, want := range []string{"user event failed", "hub=dead", "hub=slow", "connected event failed"} {
		logs.waitFor(t, want)
	}
	if out := logs.String(); strings.Contains(out, secret) || !strings.Contains(out, "code=***") || !strings.Contains(out, "//***@") {
		t.Fatalf("logs:\n%s", out)
	}
}
