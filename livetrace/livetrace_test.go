package livetrace

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/rest"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const key = "live-trace-test-access-key-0123456789"

// env is a service with a Trace, served as cmd/webpubsub serves them: the
// page on Path, everything else through Middleware.
type env struct {
	t     *testing.T
	svc   *pubsub.Service
	trace *Trace
	srv   *httptest.Server
	tr    *http.Transport
}

func newEnv(t *testing.T, opts Options, more ...pubsub.Observer) *env {
	t.Helper()
	opts.AccessKey = key
	trace, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	svc, err := pubsub.New(pubsub.Config{Endpoint: "http://" + srv.Listener.Addr().String(), AccessKey: key, Observers: append([]pubsub.Observer{trace}, more...), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, trace.Handler())
	srv.Config.Handler = trace.Middleware(rest.NewServiceHandler(svc, rest.Options{}, mux))
	srv.Start()
	e := &env{t: t, svc: svc, trace: trace, srv: srv, tr: &http.Transport{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		trace.Close()
		e.tr.CloseIdleConnections()
		srv.Close()
	})
	return e
}

func (e *env) token(ttl time.Duration) string {
	e.t.Helper()
	tok, err := e.trace.Token(ttl)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// get requests path with an Authorization header (none when auth is "").
func (e *env) get(path, auth string) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := (&http.Client{Transport: e.tr}).Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

// rest calls the REST API signed as the SDKs sign (aud: the request URL).
func (e *env) rest(method, path, body string) int {
	e.t.Helper()
	u := e.srv.URL + "/api/" + path + "?api-version=2024-12-01"
	tok := sign(e.t, key, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()})
	return e.restWith(method, u, body, "Bearer "+tok)
}

func (e *env) restWith(method, u, body, auth string) int {
	e.t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := (&http.Client{Transport: e.tr}).Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (e *env) clientURL(hub string, opts pubsub.TokenOptions) string {
	e.t.Helper()
	u, err := e.svc.ClientURL(hub, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return u
}

// wsURL is hub's client endpoint with token.
func (e *env) wsURL(hub, token string) string {
	return "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/client/hubs/" + hub + "?access_token=" + token
}

func sign(t *testing.T, key string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stream is an open event stream, read by a goroutine into events; raw
// keeps every byte read, to look for what must never be there.
type stream struct {
	t      *testing.T
	events chan event
	done   chan struct{}
	mu     sync.Mutex
	raw    bytes.Buffer
}

func (e *env) open(query string) *stream {
	e.t.Helper()
	resp := e.get(Path+"events"+query, "Bearer "+e.token(time.Hour))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e.t.Fatalf("stream: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := readStream(e.t, resp.Body)
	if ev := s.next(); ev.Kind != kindReady {
		e.t.Fatalf("first event %+v, want ready", ev)
	}
	return s
}

func readStream(t *testing.T, body io.ReadCloser) *stream {
	s := &stream{t: t, events: make(chan event, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer close(s.events)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			s.mu.Lock()
			s.raw.Write(sc.Bytes())
			s.raw.WriteByte('\n')
			s.mu.Unlock()
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev event
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Errorf("event %q: %v", data, err)
				return
			}
			s.events <- ev
		}
	}()
	t.Cleanup(func() { body.Close(); <-s.done })
	return s
}

func (s *stream) next() event {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			s.t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(wstest.WaitFor):
		s.t.Fatal("no event")
	}
	return event{}
}

// expect returns the next event of kind, skipping others.
func (s *stream) expect(kind string) event {
	s.t.Helper()
	for {
		if ev := s.next(); ev.Kind == kind {
			return ev
		}
	}
}

func (s *stream) rawText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.raw.String()
}

// TestStreamNeedsLiveTraceToken: the page is public, its stream is not:
// no token, a client's or the REST API's, one expired or signed with
// another key are refused with 401 and a reason the page shows; and a live
// trace token opens neither the client endpoint nor the REST API.
func TestStreamNeedsLiveTraceToken(t *testing.T) {
	e := newEnv(t, Options{})
	resp := e.get(Path, "")
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `<script src="app.js"`) ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("page: %d %q", resp.StatusCode, page)
	}

	clientTok, _ := e.svc.ClientToken("chat", pubsub.TokenOptions{UserID: "u"})
	restTok := sign(t, key, jwt.MapClaims{"aud": e.srv.URL + Path + "events", "exp": time.Now().Add(time.Hour).Unix()})
	expired := sign(t, key, jwt.MapClaims{"aud": audience, "exp": time.Now().Add(-time.Hour).Unix()})
	otherKey := sign(t, "another-key-0123456789abcdef0123456789", jwt.MapClaims{"aud": audience, "exp": time.Now().Add(time.Hour).Unix()})
	noExp := sign(t, key, jwt.MapClaims{"aud": audience})
	for _, c := range []struct{ name, auth, want string }{
		{"none", "", "needs an access token"},
		{"not bearer", "Basic " + e.token(time.Hour), "needs an access token"},
		{"client token", "Bearer " + clientTok, "not a live trace token"},
		{"REST token", "Bearer " + restTok, "not a live trace token"},
		{"expired", "Bearer " + expired, "expired"},
		{"other key", "Bearer " + otherKey, "invalid live trace token"},
		{"no exp", "Bearer " + noExp, "invalid live trace token"},
	} {
		resp := e.get(Path+"events", c.auth)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), c.want) || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d %q, want 401 %q", c.name, resp.StatusCode, body, c.want)
		}
	}

	tok := e.token(time.Hour)
	// Not a client token: the handshake is refused.
	if st := wstest.HandshakeStatus(t, e.wsURL("chat", tok), nil); st != http.StatusUnauthorized {
		t.Errorf("client endpoint with a live trace token: %d", st)
	}
	// Not a REST token.
	if st := e.restWith(http.MethodPost, e.srv.URL+"/api/hubs/chat/:send?api-version=2024-12-01", "x", "Bearer "+tok); st != http.StatusUnauthorized {
		t.Errorf("REST with a live trace token: %d", st)
	}

	if _, err := e.trace.Token(0); !errors.Is(err, ErrTokenLifetime) {
		t.Errorf("Token(0): %v", err)
	}
	if _, err := New(Options{}); !errors.Is(err, ErrNoAccessKey) {
		t.Errorf("New without a key: %v", err)
	}
	u, err := e.trace.URL(e.srv.URL+"/", time.Hour)
	if err != nil || !strings.HasPrefix(u, e.srv.URL+Path+"#access_token=ey") {
		t.Errorf("URL: %q %v", u, err)
	}
}

// TestStreamShowsTraffic: a page sees a client connect, join, send to a
// group and raise an event, the fan-out, REST requests and the close,
// with the fields the page shows, and never a message's data or a token.
func TestStreamShowsTraffic(t *testing.T) {
	e := newEnv(t, Options{})
	s := e.open("")

	const secret = "TOP-SECRET-PAYLOAD-7f3a9c"
	clientTok, _ := e.svc.ClientToken("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}})
	c, connID := wstest.DialJSON(t, e.wsURL("chat", clientTok))
	ev := s.expect("connection.opened")
	if ev.Hub != "chat" || ev.ConnectionID != connID || ev.UserID != "alice" || ev.Subprotocol != "json.webpubsub.azure.v1" {
		t.Fatalf("opened: %+v", ev)
	}

	c.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	c.ExpectAck(1, "")
	if ev := s.expect(kindReceived); ev.Type != "joinGroup" || ev.Group != "room" || ev.ConnectionID != connID || ev.Hub != "chat" {
		t.Fatalf("join: %+v", ev)
	}
	frame := `{"type":"sendToGroup","group":"room","dataType":"text","data":"` + secret + `","ackId":2}`
	c.Send(frame)
	if m := c.NextJSON(); m["type"] != "message" { // its own message, then the ack
		t.Fatalf("got %v", m)
	}
	c.ExpectAck(2, "")
	if ev := s.expect(kindReceived); ev.Type != "sendToGroup" || ev.Group != "room" || ev.Bytes != len(frame) {
		t.Fatalf("received: %+v (frame of %d bytes)", ev, len(frame))
	}
	if ev := s.expect(kindSent); ev.Type != "sendToGroup" || ev.Group != "room" || ev.Recipients != 1 || ev.Bytes != len(secret) {
		t.Fatalf("sent: %+v", ev)
	}
	c.Send(`{"type":"event","event":"ping","dataType":"text","data":"` + secret + `"}`)
	if ev := s.expect(kindReceived); ev.Type != "event" || ev.Event != "ping" {
		t.Fatalf("event: %+v", ev)
	}

	if st := e.rest(http.MethodPost, "hubs/Chat/groups/room/:send", secret); st != http.StatusAccepted {
		t.Fatalf("REST send: %d", st)
	}
	if ev := s.expect(kindSent); ev.Type != "sendToGroup" || ev.Recipients != 1 || ev.Bytes != len(secret) {
		t.Fatalf("REST fan-out: %+v", ev)
	}
	ev = s.expect(kindREST)
	if ev.Operation != "sendToGroup" || ev.Hub != "chat" || ev.Method != http.MethodPost || ev.Status != http.StatusAccepted ||
		ev.Path != "/api/hubs/Chat/groups/room/:send" || ev.DurationMS <= 0 {
		t.Fatalf("REST: %+v", ev)
	}
	if st := e.rest(http.MethodGet, "nowhere", ""); st != http.StatusNotFound {
		t.Fatalf("REST 404: %d", st)
	}
	if ev := s.expect(kindREST); ev.Operation != "" || ev.Status != http.StatusNotFound || ev.Path != "/api/nowhere" {
		t.Fatalf("REST 404: %+v", ev)
	}

	if st := e.rest(http.MethodDelete, "hubs/chat/connections/"+connID, ""); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("close: %d", st)
	}
	c.ExpectClose()
	ev = s.expect("connection.closed")
	if ev.ConnectionID != connID || ev.UserID != "alice" || ev.CloseReason != string(pubsub.CloseReasonAppServer) || ev.Code != 1000 || ev.DurationMS <= 0 {
		t.Fatalf("closed: %+v", ev)
	}

	raw := s.rawText()
	for _, never := range []string{secret, key, clientTok} {
		if strings.Contains(raw, never) {
			t.Fatalf("the stream holds %q:\n%s", never, raw)
		}
	}
}

// TestStreamHubFilter: ?hub= keeps one hub's events (case-insensitive).
func TestStreamHubFilter(t *testing.T) {
	e := newEnv(t, Options{})
	s := e.open("?hub=Other")
	_, chatID := wstest.DialJSON(t, e.clientURL("chat", pubsub.TokenOptions{}))
	_, otherID := wstest.DialJSON(t, e.clientURL("other", pubsub.TokenOptions{}))
	if ev := s.next(); ev.Kind != "connection.opened" || ev.Hub != "other" || ev.ConnectionID != otherID {
		t.Fatalf("first event %+v, want other's %s (not chat's %s)", ev, otherID, chatID)
	}
}

// discard is a client that reads and forgets every message, so that the
// service never finds it slow.
type discard struct{ gws.BuiltinEventHandler }

func (discard) OnMessage(_ *gws.Conn, m *gws.Message) { m.Close() }

// openedObserver signals connections opened.
type openedObserver struct{ opened chan struct{} }

func (o *openedObserver) ConnectionChanged(ev pubsub.ConnectionEvent) {
	if ev.Kind == pubsub.ConnectionOpened {
		o.opened <- struct{}{}
	}
}
func (o *openedObserver) MessageReceived(pubsub.MessageEvent) {}
func (o *openedObserver) MessageSent(pubsub.MessageEvent)     {}

// TestSlowViewerLosesEventsNotTime: a page that reads nothing does not
// slow sends down; it loses events, and is told how many: what it gets and
// what it lost add up to what happened.
func TestSlowViewerLosesEventsNotTime(t *testing.T) {
	opened := &openedObserver{opened: make(chan struct{}, 1)}
	e := newEnv(t, Options{Buffer: 8, KeepAlive: 20 * time.Millisecond}, opened)

	// The recipient, connected before the viewer comes: the viewer is to
	// see fan-outs only.
	cl, _, err := gws.NewClient(discard{}, &gws.ClientOption{Addr: e.clientURL("chat", pubsub.TokenOptions{})})
	if err != nil {
		t.Fatal(err)
	}
	go cl.ReadLoop()
	defer cl.WriteClose(1000, nil)
	select {
	case <-opened.opened:
	case <-time.After(wstest.WaitFor):
		t.Fatal("the client did not connect")
	}

	// A viewer on a raw connection with a small receive buffer, which it
	// leaves unread while the sends run.
	conn, err := wstest.DialTCP(e.srv.Listener.Addr().String(), 4<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET "+Path+"events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+e.token(time.Hour)+"\r\n\r\n")
	waitUntil(t, "the viewer is registered", e.trace.watched)

	// Send until the viewer has lost some (its socket's buffers, however
	// large, full), then 1,000 more: none of them waits for it.
	v := (*e.trace.viewers.Load())[0]
	hub, _ := e.svc.Hub("chat")
	sent := make(chan error, 1)
	var n uint64
	go func() {
		for more := 1000; more > 0; n++ {
			if err := hub.SendToAll(context.Background(), pubsub.TextMessage("x")); err != nil {
				sent <- err
				return
			}
			if v.dropped.Load() > 0 {
				more--
			}
		}
		sent <- nil
	}()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wstest.WaitFor):
		t.Fatal("sends are held up by a viewer that does not read")
	}

	// Now read: each fan-out is either shown or counted as dropped.
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v %v", resp, err)
	}
	s := readStream(t, resp.Body)
	var shown, dropped uint64
	for shown+dropped < n {
		switch ev := s.next(); ev.Kind {
		case kindSent:
			shown++
		case kindDropped:
			dropped += ev.Dropped
		}
	}
	if shown+dropped != n || dropped == 0 {
		t.Fatalf("shown %d + dropped %d, want %d with some dropped", shown, dropped, n)
	}
	t.Logf("shown %d, dropped %d", shown, dropped)
}

// TestStreamEnds: a stream ends when its page goes, when its token
// expires, and when the Trace is closed (which refuses new ones).
func TestStreamEnds(t *testing.T) {
	e := newEnv(t, Options{ClockSkew: time.Millisecond})

	resp := e.get(Path+"events", "Bearer "+e.token(time.Hour))
	s := readStream(t, resp.Body)
	s.expect(kindReady)
	resp.Body.Close()
	waitUntil(t, "the viewer is gone", func() bool { return !e.trace.watched() })

	s = readStream(t, e.get(Path+"events", "Bearer "+e.token(time.Second)).Body)
	s.expect(kindReady)
	s.expect(kindExpired)
	<-s.done

	s = e.open("")
	e.trace.Close()
	s.expect(kindClosed)
	<-s.done
	resp = e.get(Path+"events", "Bearer "+e.token(time.Hour))
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Close: %d", resp.StatusCode)
	}
}

// TestPageFiles: the page's files, and nothing else, by GET or HEAD only.
func TestPageFiles(t *testing.T) {
	e := newEnv(t, Options{})
	for path, want := range map[string]int{Path: 200, Path + "index.html": 200, Path + "app.js": 200, Path + "style.css": 200, Path + "nope": 404} {
		resp := e.get(path, "")
		resp.Body.Close()
		if resp.StatusCode != want || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, err := (&http.Client{Transport: e.tr}).Post(e.srv.URL+Path+"events", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("POST with a body: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodDelete, e.srv.URL+Path, nil)
	resp, err = (&http.Client{Transport: e.tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d", resp.StatusCode)
	}
}

// TestUnwatchedCostsNothing: with no page open an event allocates nothing.
func TestUnwatchedCostsNothing(t *testing.T) {
	trace, _ := New(Options{AccessKey: key})
	ev := pubsub.MessageEvent{Hub: "chat", Type: "sendToAll", Bytes: 10, Recipients: 3}
	if n := testing.AllocsPerRun(1000, func() { trace.MessageSent(ev); trace.MessageReceived(ev) }); n != 0 {
		t.Fatalf("%v allocations per event", n)
	}
}

// waitUntil polls cond until it holds, failing the test past WaitFor.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wstest.WaitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond) // polling an observable condition
	}
}
