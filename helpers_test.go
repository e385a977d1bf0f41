package pubsub_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait in these tests: a failure, never a sync point.
const waitFor = wstest.WaitFor

// testEnv is a service mounted in an httptest server, the way an application
// embeds it.
type testEnv struct {
	t   *testing.T
	svc *pubsub.Service
	srv *httptest.Server
	hub *pubsub.Hub
}

func newEnv(t *testing.T, cfg pubsub.Config) *testEnv {
	t.Helper()
	return newEnvOn(t, cfg, httptest.NewServer)
}

// newEnvOn is newEnv on a server that newServer starts, such as
// httptest.NewTLSServer.
func newEnvOn(t *testing.T, cfg pubsub.Config, newServer func(http.Handler) *httptest.Server) *testEnv {
	t.Helper()
	mux := http.NewServeMux()
	srv := newServer(mux)
	if cfg.AccessKey == "" {
		cfg.AccessKey = "primary-access-key-0123456789abcdef"
	}
	cfg.Endpoint = srv.URL
	svc, err := pubsub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/client/", svc.ClientHandler())
	hub, err := svc.Hub("chat")
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, svc: svc, srv: srv, hub: hub}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return e
}

// url returns a client URL for hub "chat" with a token of opts.
func (e *testEnv) url(opts pubsub.TokenOptions) string {
	e.t.Helper()
	u, err := e.svc.ClientURL("chat", opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return u
}

func (e *testEnv) token(opts pubsub.TokenOptions) string {
	e.t.Helper()
	tok, err := e.svc.ClientToken("chat", opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// wsURL is the server's ws:// base.
func (e *testEnv) wsURL() string { return "ws" + strings.TrimPrefix(e.srv.URL, "http") }

// barrier proves a client has received everything sent to it before: the
// marker sent through the Go API now must be the next frame it reads.
func (e *testEnv) barrier(c *wstest.Client, connID string) {
	e.t.Helper()
	if err := e.hub.SendToConnection(context.Background(), connID, pubsub.TextMessage("barrier")); err != nil {
		e.t.Fatal(err)
	}
	f := c.Next()
	if !strings.Contains(string(f.Data), "barrier") {
		e.t.Fatalf("expected nothing before the barrier, got %q", f.Data)
	}
}

// eventually polls cond, bounded: there is no event for what these tests
// wait on (a counter back to zero, a drop noticed): a failure past waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func timeAfter() <-chan time.Time { return time.After(waitFor) }

func itoa(i int) string { return strconv.Itoa(i) }

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
