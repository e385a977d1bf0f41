package tracing_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/rest"
	"github.com/embedwps/pubsub/tracing"
	"github.com/embedwps/pubsub/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const accessKey = "tracing-access-key-0123456789abcdef"

// A trace of the caller's, sent as traceparent.
const (
	callerTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan   = "00f067aa0ba902b7"
	callerParent = "00-" + callerTrace + "-" + callerSpan + "-01"
)

// recorder is a tracer provider whose ended spans the test reads.
func recorder(t *testing.T) (*tracetest.SpanRecorder, trace.TracerProvider) {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return sr, tp
}

// waitSpan waits for an ended span named name (the connect span ends just
// after the client sees its 101).
func waitSpan(t *testing.T, sr *tracetest.SpanRecorder, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(wstest.WaitFor)
	for time.Now().Before(deadline) {
		for _, s := range sr.Ended() {
			if s.Name() == name {
				return s
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no span %q; ended: %v", name, names(sr))
	return nil
}

func names(sr *tracetest.SpanRecorder) []string {
	var out []string
	for _, s := range sr.Ended() {
		out = append(out, s.Name())
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t *testing.T, s sdktrace.ReadOnlySpan, key attribute.Key, want any) {
	t.Helper()
	v, ok := attr(s, key)
	if !ok {
		t.Fatalf("span %q has no %s; attributes %v", s.Name(), key, s.Attributes())
	}
	if got := v.AsInterface(); got != want {
		t.Fatalf("span %q: %s = %v (%T), want %v (%T)", s.Name(), key, got, got, want, want)
	}
}

// posted is one POST the application's event handler received.
type posted struct {
	event  string
	header http.Header
}

// env is a service behind Middleware, with an upstream whose client goes
// through Transport to a fake application server.
type env struct {
	svc   *pubsub.Service
	srv   *httptest.Server
	app   *httptest.Server
	posts chan posted
}

func newEnv(t *testing.T, opts tracing.Options) *env {
	t.Helper()
	e := &env{posts: make(chan posted, 64)}
	e.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set("WebHook-Allowed-Origin", "*")
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		e.posts <- posted{r.Header.Get("ce-eventName"), r.Header.Clone()}
		if r.Header.Get("ce-eventName") == "fail" {
			http.Error(w, "the application failed", http.StatusInternalServerError)
		}
	}))
	tr := &http.Transport{}
	up, err := upstream.New(upstream.Config{Hubs: map[string]upstream.HubSettings{"*": {EventHandlers: []upstream.EventHandlerSettings{{
		URLTemplate: e.app.URL + "/eventhandler/{event}", UserEventPattern: "*", SystemEvents: []string{"connect", "connected", "disconnected"},
	}}}}}, upstream.Options{
		AccessKeys:  []string{accessKey},
		Origin:      "127.0.0.1",
		RetryDelays: []time.Duration{},
		Client:      &http.Client{Transport: tracing.Transport(tr, opts)},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(nil)
	e.svc, err = pubsub.New(pubsub.Config{Endpoint: "http://" + e.srv.Listener.Addr().String(), AccessKey: accessKey, EventHandler: up})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Config.Handler = tracing.Middleware(rest.NewServiceHandler(e.svc, rest.Options{}, nil), opts)
	e.srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
		defer cancel()
		if err := e.svc.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := up.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		e.srv.Close()
		e.app.Close()
		tr.CloseIdleConnections()
	})
	return e
}

// next returns the next POST the application received for event.
func (e *env) next(t *testing.T, event string) posted {
	t.Helper()
	timeout := time.After(wstest.WaitFor)
	for {
		select {
		case p := <-e.posts:
			if p.event == event {
				return p
			}
		case <-timeout:
			t.Fatalf("the application received no %s event", event)
		}
	}
}

func (e *env) clientURL(t *testing.T) string {
	t.Helper()
	u, err := e.svc.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup"}})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// dial connects a JSON client, sending header, and returns it with its
// connection id.
func (e *env) dial(t *testing.T, header http.Header) (*wstest.Client, string) {
	t.Helper()
	c := wstest.Dial(t, e.clientURL(t), header, "json.webpubsub.azure.v1")
	m := c.NextJSON()
	if m["type"] != "system" || m["event"] != "connected" {
		t.Fatalf("first message is not connected: %v", m)
	}
	return c, m["connectionId"].(string)
}

// rest calls the REST API as a server SDK does, with a token signed for
// the URL (a wrong one when badToken), and the extra headers.
func (e *env) rest(t *testing.T, method, path, body string, badToken bool, header http.Header) int {
	t.Helper()
	u := e.srv.URL + "/api/" + path + "?api-version=2024-12-01"
	key := accessKey
	if badToken {
		key = "another-key-0123456789abcdef-0123456789"
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != "" {
		req.Header.Set("Content-Type", "text/plain")
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// traceparent reads the W3C trace context a request carried.
func traceparent(h http.Header) trace.SpanContext {
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(h)))
}

func TestConnectSpanParentsTheConnectEvent(t *testing.T) {
	sr, tp := recorder(t)
	e := newEnv(t, tracing.Options{TracerProvider: tp})

	c, id := e.dial(t, http.Header{"Traceparent": {callerParent}})
	// The WebSocket works through the middleware: a message and its ack.
	c.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	c.ExpectAck(1, "")

	connect := waitSpan(t, sr, "WebPubSub connect")
	event := waitSpan(t, sr, "WebPubSub event connect")
	if connect.SpanKind() != trace.SpanKindServer || event.SpanKind() != trace.SpanKindClient {
		t.Fatalf("kinds: connect %v, event %v", connect.SpanKind(), event.SpanKind())
	}
	// The client's traceparent is the connect span's parent.
	if got := connect.Parent(); !got.IsRemote() || got.TraceID().String() != callerTrace || got.SpanID().String() != callerSpan {
		t.Fatalf("connect's parent %v, want the caller's span", got)
	}
	wantAttr(t, connect, tracing.AttrHub, "chat")
	wantAttr(t, connect, tracing.AttrConnectionID, id)
	wantAttr(t, connect, "http.response.status_code", int64(http.StatusSwitchingProtocols))
	if connect.Status().Code != codes.Unset {
		t.Fatalf("connect status %v", connect.Status())
	}

	// The event handler's call is the connect span's child, and the
	// application got its trace context.
	if event.Parent().SpanID() != connect.SpanContext().SpanID() || event.SpanContext().TraceID() != connect.SpanContext().TraceID() {
		t.Fatalf("event's parent %v, want connect %v", event.Parent(), connect.SpanContext())
	}
	wantAttr(t, event, tracing.AttrHub, "chat")
	wantAttr(t, event, tracing.AttrEvent, "connect")
	wantAttr(t, event, tracing.AttrConnectionID, id)
	wantAttr(t, event, "http.response.status_code", int64(http.StatusOK))
	got := traceparent(e.next(t, "connect").header)
	if got.TraceID() != event.SpanContext().TraceID() || got.SpanID() != event.SpanContext().SpanID() || !got.IsSampled() {
		t.Fatalf("the application got traceparent %v, want the event span %v", got, event.SpanContext())
	}
	// So did abuse protection, made for the first event.
	if v := waitSpan(t, sr, "WebPubSub abuse protection"); v.Parent().SpanID() != connect.SpanContext().SpanID() {
		t.Fatalf("abuse protection's parent %v", v.Parent())
	}

	// connected is delivered later by the upstream's workers: a trace of
	// its own, with its own traceparent.
	connected := waitSpan(t, sr, "WebPubSub event connected")
	if connected.Parent().IsValid() {
		t.Fatalf("connected has a parent %v", connected.Parent())
	}
	if got := traceparent(e.next(t, "connected").header); got.SpanID() != connected.SpanContext().SpanID() {
		t.Fatalf("connected carried %v, want %v", got, connected.SpanContext())
	}

	// A user event's name is an attribute, not the span's name; a 5xx
	// from the application fails the span.
	c.Send(`{"type":"event","event":"fail","dataType":"text","data":"hi","ackId":2}`)
	c.ExpectAck(2, "InternalServerError")
	fail := waitSpan(t, sr, "WebPubSub user event")
	wantAttr(t, fail, tracing.AttrEvent, "fail")
	wantAttr(t, fail, "http.response.status_code", int64(http.StatusInternalServerError))
	if fail.Status().Code != codes.Error {
		t.Fatalf("a 5xx event: status %v", fail.Status())
	}
}

func TestRESTSpans(t *testing.T) {
	sr, tp := recorder(t)
	e := newEnv(t, tracing.Options{TracerProvider: tp})
	c, _ := e.dial(t, nil)
	c.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	c.ExpectAck(1, "")

	if got := e.rest(t, "POST", "hubs/chat/groups/room/:send", "hello", false, http.Header{"Traceparent": {callerParent}}); got != http.StatusAccepted {
		t.Fatalf("send: %d", got)
	}
	if m := c.NextJSON(); m["data"] != "hello" {
		t.Fatalf("the group got %v", m)
	}
	s := waitSpan(t, sr, "WebPubSub sendToGroup")
	if s.SpanKind() != trace.SpanKindServer {
		t.Fatalf("kind %v", s.SpanKind())
	}
	if p := s.Parent(); !p.IsRemote() || p.TraceID().String() != callerTrace || p.SpanID().String() != callerSpan {
		t.Fatalf("parent %v, want the caller's span", p)
	}
	wantAttr(t, s, tracing.AttrOperation, "sendToGroup")
	wantAttr(t, s, tracing.AttrHub, "chat")
	wantAttr(t, s, "http.request.method", "POST")
	wantAttr(t, s, "http.response.status_code", int64(http.StatusAccepted))
	if s.Status().Code != codes.Unset {
		t.Fatalf("status %v", s.Status())
	}

	// A refused token: 401, the client's fault, not the span's.
	sr.Reset()
	if got := e.rest(t, "HEAD", "hubs/chat/users/alice", "", true, nil); got != http.StatusUnauthorized {
		t.Fatalf("bad token: %d", got)
	}
	s = waitSpan(t, sr, "WebPubSub userExists")
	wantAttr(t, s, "http.response.status_code", int64(http.StatusUnauthorized))
	if s.Parent().IsValid() || s.Status().Code != codes.Unset {
		t.Fatalf("parent %v, status %v", s.Parent(), s.Status())
	}

	// No such operation; health and other paths are not traced.
	sr.Reset()
	if got := e.rest(t, "GET", "hubs/chat/nothing", "", false, nil); got != http.StatusNotFound {
		t.Fatalf("no such operation: %d", got)
	}
	s = waitSpan(t, sr, "WebPubSub REST")
	wantAttr(t, s, "http.response.status_code", int64(http.StatusNotFound))
	if _, ok := attr(s, tracing.AttrOperation); ok {
		t.Fatal("an unknown operation has an operation attribute")
	}
	for _, p := range []string{"/api/health", "/elsewhere"} {
		resp, err := http.Get(e.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	// (The connection's connected event may be traced meanwhile.)
	for _, s := range sr.Ended() {
		if s.SpanKind() == trace.SpanKindServer && s.Name() != "WebPubSub REST" {
			t.Fatalf("spans %v, want only the unknown operation's", names(sr))
		}
	}

	// A 5xx fails the span: the service is shut down.
	sr.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
	defer cancel()
	if err := e.svc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.rest(t, "POST", "hubs/chat/:send", "bye", false, nil); got != http.StatusServiceUnavailable {
		t.Fatalf("send after shutdown: %d", got)
	}
	s = waitSpan(t, sr, "WebPubSub sendToAll")
	wantAttr(t, s, "http.response.status_code", int64(http.StatusServiceUnavailable))
	if s.Status().Code != codes.Error {
		t.Fatalf("a 503: status %v", s.Status())
	}
}

// Without a tracer provider (OpenTelemetry's global no-op), nothing is
// recorded, and no traceparent reaches the application, not even one a
// client sent: tracing is off.
func TestOffWithoutATracerProvider(t *testing.T) {
	e := newEnv(t, tracing.Options{})
	c, _ := e.dial(t, http.Header{"Traceparent": {callerParent}})
	c.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	c.ExpectAck(1, "")
	c2, _ := e.dial(t, nil)
	c2.Send(`{"type":"event","event":"hello","dataType":"text","data":"hi","ackId":1}`)
	c2.ExpectAck(1, "")
	// Two connects and connecteds and the user event, in any order.
	want := map[string]int{"connect": 2, "connected": 2, "hello": 1}
	timeout := time.After(wstest.WaitFor)
	for n := 5; n > 0; n-- {
		select {
		case p := <-e.posts:
			if want[p.event]--; want[p.event] < 0 {
				t.Fatalf("an unexpected %s event", p.event)
			}
			if p.header.Get("traceparent") != "" || p.header.Get("tracestate") != "" {
				t.Fatalf("%s carried trace context %v", p.event, p.header)
			}
		case <-timeout:
			t.Fatalf("events still awaited: %v", want)
		}
	}
	if got := e.rest(t, "POST", "hubs/chat/groups/room/:send", "hello", false, http.Header{"Traceparent": {callerParent}}); got != http.StatusAccepted {
		t.Fatalf("send: %d", got)
	}
	if m := c.NextJSON(); m["data"] != "hello" {
		t.Fatalf("the group got %v", m)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Transport sends a copy of the request: the caller's headers stay as they
// were. A failed request fails its span.
func TestTransportLeavesTheRequestAlone(t *testing.T) {
	sr, tp := recorder(t)
	var mu sync.Mutex
	var sent []*http.Request
	fail := errors.New("unreachable")
	rt := tracing.Transport(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		sent = append(sent, r)
		mu.Unlock()
		if r.Header["ce-eventName"][0] == "disconnected" {
			return nil, fail
		}
		return &http.Response{StatusCode: 204, Body: http.NoBody, Request: r}, nil
	}), tracing.Options{TracerProvider: tp})

	for _, ev := range []string{"connected", "disconnected"} {
		req, err := http.NewRequest("POST", "http://127.0.0.1:1/eventhandler", http.NoBody)
		if err != nil {
			t.Fatal(err)
		}
		req.Header["ce-eventName"] = []string{ev}
		req.Header["ce-type"] = []string{"azure.webpubsub.sys." + ev}
		req.Header["ce-hub"] = []string{"chat"}
		_, err = rt.RoundTrip(req)
		if (ev == "disconnected") != errors.Is(err, fail) {
			t.Fatalf("%s: %v", ev, err)
		}
		if len(req.Header) != 3 {
			t.Fatalf("the caller's request was changed: %v", req.Header)
		}
		if sent[len(sent)-1] == req || sent[len(sent)-1].Header.Get("traceparent") == "" {
			t.Fatalf("%s: base got the caller's request, or no traceparent", ev)
		}
	}
	ok, failed := waitSpan(t, sr, "WebPubSub event connected"), waitSpan(t, sr, "WebPubSub event disconnected")
	wantAttr(t, ok, "http.response.status_code", int64(204))
	wantAttr(t, failed, tracing.AttrHub, "chat")
	if ok.Status().Code != codes.Unset || failed.Status().Code != codes.Error {
		t.Fatalf("statuses %v, %v", ok.Status(), failed.Status())
	}
}

// The writer behind Middleware still flushes, takes deadlines (through
// Unwrap) and records the status of a streamed answer.
func TestMiddlewareKeepsTheResponseController(t *testing.T) {
	sr, tp := recorder(t)
	srv := httptest.NewServer(tracing.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetReadDeadline: %v", err)
		}
		_, _ = io.WriteString(w, "part")
		if err := rc.Flush(); err != nil {
			t.Errorf("Flush: %v", err)
		}
		if _, ok := w.(http.Flusher); !ok {
			t.Error("not an http.Flusher")
		}
	}), tracing.Options{TracerProvider: tp}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/hubs/chat/groups/room/connections")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "part" {
		t.Fatalf("body %q", b)
	}
	s := waitSpan(t, sr, "WebPubSub listConnectionsInGroup")
	wantAttr(t, s, "http.response.status_code", int64(200))
	http.DefaultClient.CloseIdleConnections()
}

// A recovery that cannot be made is still a handshake: the span names the
// connection it tried to resume.
func TestRecoverSpan(t *testing.T) {
	sr, tp := recorder(t)
	e := newEnv(t, tracing.Options{TracerProvider: tp})
	u := strings.Replace(e.srv.URL, "http://", "ws://", 1) + "/client/hubs/Chat?awps_connection_id=gone&awps_reconnection_token=nope"
	c := wstest.Dial(t, u, nil, "json.reliable.webpubsub.azure.v1")
	if info, _ := c.ExpectClose(); info.Code != 1008 {
		t.Fatalf("closed with %d, want 1008", info.Code)
	}
	s := waitSpan(t, sr, "WebPubSub recover")
	wantAttr(t, s, tracing.AttrConnectionID, "gone")
	wantAttr(t, s, tracing.AttrHub, "chat")
	wantAttr(t, s, "http.response.status_code", int64(http.StatusSwitchingProtocols))
}
