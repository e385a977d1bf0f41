package upstream_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	primaryKey   = "primary-access-key-0123456789abcdef"
	secondaryKey = "secondary-access-key-0123456789abcdef"
)

// recorded is one request the fake upstream received.
type recorded struct {
	method string
	path   string
	header http.Header
	body   []byte
	ctx    context.Context // the request's: done when the caller gives up
}

// fakeUpstream is an application server: it records every request and
// answers with reply and, for OPTIONS, allowOrigin (set before reply runs,
// so that a test can hang or redirect the validation).
type fakeUpstream struct {
	srv         *httptest.Server
	mu          sync.Mutex
	requests    []recorded
	posts       chan recorded
	reply       func(r recorded, w http.ResponseWriter)
	allowOrigin string
}

func newUpstream(t *testing.T, reply func(r recorded, w http.ResponseWriter)) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{posts: make(chan recorded, 1024), reply: reply, allowOrigin: "*"}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec := recorded{r.Method, r.URL.Path, r.Header.Clone(), body, r.Context()}
		u.mu.Lock()
		u.requests = append(u.requests, rec)
		u.mu.Unlock()
		if r.Method == http.MethodOptions {
			if u.allowOrigin != "" {
				w.Header().Set("WebHook-Allowed-Origin", u.allowOrigin)
			}
			if u.reply != nil {
				u.reply(rec, w)
			}
			return
		}
		if u.reply != nil {
			u.reply(rec, w)
		}
		u.posts <- rec
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *fakeUpstream) next(t *testing.T) recorded {
	t.Helper()
	select {
	case r := <-u.posts:
		return r
	case <-time.After(wstest.WaitFor):
		t.Fatal("no request reached the upstream")
	}
	return recorded{}
}

func (u *fakeUpstream) count(method string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, r := range u.requests {
		if r.method == method {
			n++
		}
	}
	return n
}

type env struct {
	svc *pubsub.Service
	srv *httptest.Server
	up  *upstream.Handler
}

func newEnv(t *testing.T, cfg upstream.Config, opts upstream.Options) *env {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	opts.AccessKeys = []string{primaryKey, secondaryKey}
	opts.Origin = "127.0.0.1"
	if opts.RetryDelays == nil {
		opts.RetryDelays = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
	}
	up, err := upstream.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := pubsub.New(pubsub.Config{Endpoint: srv.URL, AccessKey: primaryKey, SecondaryAccessKey: secondaryKey, EventHandler: up})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/client/", svc.ClientHandler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		srv.Close()
	})
	return &env{svc: svc, srv: srv, up: up}
}

// newHandler returns an upstream driven directly by the test, without a
// service in front; it is shut down (its queues drained) at cleanup.
func newHandler(t *testing.T, cfg upstream.Config, opts upstream.Options) *upstream.Handler {
	t.Helper()
	opts.AccessKeys = []string{primaryKey, secondaryKey}
	opts.Origin = "127.0.0.1"
	if opts.RetryDelays == nil {
		opts.RetryDelays = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
	}
	h, err := upstream.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, h) })
	return h
}

// shutdown drains h's queues: every queued event has been sent after it.
func shutdown(t *testing.T, h *upstream.Handler) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

// posted returns the POSTs u received for event name.
func (u *fakeUpstream) posted(name string) []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []recorded
	for _, r := range u.requests {
		if r.method == http.MethodPost && r.header.Get("ce-eventName") == name {
			out = append(out, r)
		}
	}
	return out
}

func (e *env) url(t *testing.T, hub string, opts pubsub.TokenOptions) string {
	t.Helper()
	u, err := e.svc.ClientURL(hub, opts)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func all(url string) upstream.Config {
	return upstream.Config{Hubs: map[string]upstream.HubSettings{"*": {EventHandlers: []upstream.EventHandlerSettings{{
		URLTemplate: url + "/api/{hub}/{event}", UserEventPattern: "*", SystemEvents: []string{"connect", "connected", "disconnected"},
	}}}}}
}

func TestSignatureTestVector(t *testing.T) {
	got := upstream.Sign("0f9c97a2f0bf4706afe87a14e0797b11", []string{"7aab239577fd4f24bc919802fb629f5f"})
	if got != "sha256=7767effcb3946f3e1de039df4b986ef02c110b1469d02c0a06f41b3b727ab561" {
		t.Fatalf("signature %s", got)
	}
}

var timeFormat = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

func TestEveryRequestAndResponse(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		switch r.header.Get("ce-eventName") {
		case "connect":
			w.Header().Set("ce-connectionState", "s1")
			w.Write([]byte(`{"userId":"u2","groups":["g1"],"roles":["webpubsub.sendToGroup.g1"],"subprotocol":"json.webpubsub.azure.v1"}`))
		case "hello":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("ce-connectionState", "s2")
			w.Write([]byte(`{"r":1}`))
		case "bin":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write([]byte{1, 2})
		}
	})
	e := newEnv(t, all(up.srv.URL), upstream.Options{})
	u := e.url(t, "Chat", pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.joinLeaveGroup"}}) + "&foo=bar"
	c := wstest.Dial(t, u, http.Header{"X-Custom": {"yes"}}, "json.webpubsub.azure.v1", "other")
	m := c.NextJSON()
	if m["userId"] != "u2" {
		t.Fatalf("connected %v", m)
	}
	id := m["connectionId"].(string)

	// Abuse protection came first, once.
	up.mu.Lock()
	first := up.requests[0]
	up.mu.Unlock()
	if first.method != "OPTIONS" || first.path != "/api/chat/validate" || first.header.Get("WebHook-Request-Origin") != "127.0.0.1" || first.header.Get("ce-awpsversion") != "1.0" {
		t.Fatalf("first request %s %s %v", first.method, first.path, first.header)
	}

	checkHeaders := func(r recorded, ceType, event, ceID, userID, subprotocol, state string) {
		t.Helper()
		want := map[string]string{
			"ce-specversion": "1.0", "ce-awpsversion": "1.0", "ce-type": ceType, "ce-source": "/hubs/chat/client/" + id,
			"ce-id": ceID, "ce-userId": userID, "ce-connectionId": id, "ce-hub": "chat", "ce-eventName": event,
			"ce-subprotocol": subprotocol, "ce-connectionState": state, "WebHook-Request-Origin": "127.0.0.1",
			"ce-signature": upstream.Sign(id, []string{primaryKey, secondaryKey}),
		}
		for k, v := range want {
			if got := r.header.Get(k); got != v {
				t.Fatalf("%s: %s = %q, want %q", event, k, got, v)
			}
		}
		if !timeFormat.MatchString(r.header.Get("ce-time")) {
			t.Fatalf("ce-time %q", r.header.Get("ce-time"))
		}
	}

	connect := up.next(t)
	checkHeaders(connect, "azure.webpubsub.sys.connect", "connect", "0", "u", "", "")
	if connect.path != "/api/chat/connect" || !strings.HasPrefix(connect.header.Get("Content-Type"), "application/json") {
		t.Fatalf("connect %s %s", connect.path, connect.header.Get("Content-Type"))
	}
	var body struct {
		Claims       map[string][]string `json:"claims"`
		Query        map[string][]string `json:"query"`
		Headers      map[string][]string `json:"headers"`
		Subprotocols []string            `json:"subprotocols"`
	}
	if err := json.Unmarshal(connect.body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Claims["sub"][0] != "u" || body.Claims["role"][0] != "webpubsub.joinLeaveGroup" || body.Query["foo"][0] != "bar" ||
		body.Query["access_token"] != nil || body.Headers["X-Custom"][0] != "yes" || body.Headers["Authorization"] != nil ||
		!slices.Equal(body.Subprotocols, []string{"json.webpubsub.azure.v1", "other"}) {
		t.Fatalf("connect body %s", connect.body)
	}

	connected := up.next(t)
	checkHeaders(connected, "azure.webpubsub.sys.connected", "connected", "1", "u2", "json.webpubsub.azure.v1", "s1")
	if string(connected.body) != "{}" {
		t.Fatalf("connected body %s", connected.body)
	}

	// The connect response's roles and groups took effect.
	c.Send(`{"type":"sendToGroup","group":"g1","ackId":1,"dataType":"text","data":"x"}`)
	if m := c.NextJSON(); m["group"] != "g1" { // a member of g1, not noEcho
		t.Fatalf("got %v", m)
	}
	c.ExpectAck(1, "")

	c.Send(`{"type":"event","event":"hello","ackId":2,"dataType":"text","data":"hi"}`)
	if f := c.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"json","data":{"r":1}}` {
		t.Fatalf("reply %s", f.Data)
	}
	c.ExpectAck(2, "")
	hello := up.next(t)
	checkHeaders(hello, "azure.webpubsub.user.hello", "hello", "2", "u2", "json.webpubsub.azure.v1", "s1")
	if hello.path != "/api/chat/hello" || hello.header.Get("Content-Type") != "text/plain; charset=utf-8" || string(hello.body) != "hi" {
		t.Fatalf("user event %s %s %q", hello.path, hello.header.Get("Content-Type"), hello.body)
	}

	c.Send(`{"type":"event","event":"bin","ackId":3,"dataType":"binary","data":"AAE="}`)
	if f := c.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"binary","data":"AQI="}` {
		t.Fatalf("reply %s", f.Data)
	}
	c.ExpectAck(3, "")
	bin := up.next(t)
	checkHeaders(bin, "azure.webpubsub.user.bin", "bin", "3", "u2", "json.webpubsub.azure.v1", "s2") // state from the reply
	if bin.header.Get("Content-Type") != "application/octet-stream" || string(bin.body) != "\x00\x01" {
		t.Fatalf("binary event %s %q", bin.header.Get("Content-Type"), bin.body)
	}
	c.Send(`{"type":"event","event":"j","ackId":4,"dataType":"json","data":{"k":[1]}}`)
	c.ExpectAck(4, "")
	if j := up.next(t); j.header.Get("Content-Type") != "application/json; charset=utf-8" || string(j.body) != `{"k":[1]}` {
		t.Fatalf("json event %s %q", j.header.Get("Content-Type"), j.body)
	}

	c.Conn.WriteClose(1000, []byte("bye"))
	disc := up.next(t)
	checkHeaders(disc, "azure.webpubsub.sys.disconnected", "disconnected", "5", "u2", "json.webpubsub.azure.v1", "s2")
	if string(disc.body) != `{"reason":"bye"}` {
		t.Fatalf("disconnected body %s", disc.body)
	}
	if n := up.count("OPTIONS"); n != 1 {
		t.Fatalf("%d validations, want 1", n)
	}
}

func TestConnectRefusals(t *testing.T) {
	block := make(chan struct{})
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") != "connect" {
			return
		}
		switch r.header.Get("ce-userId") {
		case "401", "403", "400", "500", "502":
			n, _ := strconv.Atoi(r.header.Get("ce-userId"))
			w.WriteHeader(n)
		case "slow":
			<-block
		case "badjson":
			w.Write([]byte("{not json"))
		}
	})
	defer close(block)
	e := newEnv(t, all(up.srv.URL), upstream.Options{Timeout: 200 * time.Millisecond})
	for user, want := range map[string]int{"401": 401, "403": 403, "400": 400, "500": 500, "502": 500, "slow": 500, "badjson": 500, "ok": 101} {
		if got := wstest.HandshakeStatus(t, e.url(t, "chat", pubsub.TokenOptions{UserID: user}), nil); got != want {
			t.Errorf("%s: status %d, want %d", user, got, want)
		}
	}

	dead := newUpstream(t, nil)
	dead.srv.Close() // unreachable
	e2 := newEnv(t, all(dead.srv.URL), upstream.Options{})
	if got := wstest.HandshakeStatus(t, e2.url(t, "chat", pubsub.TokenOptions{}), nil); got != 500 {
		t.Fatalf("unreachable upstream: %d", got)
	}
}

func TestAbuseProtectionRefusalSendsNothing(t *testing.T) {
	for name, origin := range map[string]string{"no header": "", "other origin": "evil.example.com"} {
		t.Run(name, func(t *testing.T) {
			up := newUpstream(t, nil)
			up.allowOrigin = origin
			e := newEnv(t, all(up.srv.URL), upstream.Options{})
			if got := wstest.HandshakeStatus(t, e.url(t, "chat", pubsub.TokenOptions{}), nil); got != 500 {
				t.Fatalf("status %d, want 500", got)
			}
			if got := wstest.HandshakeStatus(t, e.url(t, "chat", pubsub.TokenOptions{}), nil); got != 500 {
				t.Fatalf("second connect: status %d, want 500", got)
			}
			if n := up.count("POST"); n != 0 {
				t.Fatalf("%d events sent to an upstream that failed validation", n)
			}
			if n := up.count("OPTIONS"); n != 1 {
				t.Fatalf("%d validations: a failure is remembered for a while", n)
			}
		})
	}
}

func TestUserEventFailuresAndSimpleClients(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		switch string(r.body) {
		case "fail", `"fail"`:
			w.WriteHeader(500)
		case "echo":
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("echo back"))
		}
	})
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{"chat": {EventHandlers: []upstream.EventHandlerSettings{
		{URLTemplate: up.srv.URL + "/first/{event}", UserEventPattern: "message, Greet"},
		{URLTemplate: up.srv.URL + "/second/{event}", UserEventPattern: "*"},
	}}}}
	e := newEnv(t, cfg, upstream.Options{})

	c, _ := wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{}))
	c.Send(`{"type":"event","event":"greet","ackId":1,"dataType":"text","data":"fail"}`)
	c.ExpectAck(1, "InternalServerError")
	if r := up.next(t); r.path != "/first/greet" {
		t.Fatalf("first matching handler: %s", r.path)
	}
	c.Send(`{"type":"event","event":"other","ackId":2,"dataType":"text","data":"x"}`)
	c.ExpectAck(2, "")
	if r := up.next(t); r.path != "/second/other" {
		t.Fatalf("second handler: %s", r.path)
	}

	s := wstest.Dial(t, e.url(t, "chat", pubsub.TokenOptions{}), nil)
	s.Send("echo")
	if f := s.Next(); f.Binary || string(f.Data) != "echo back" {
		t.Fatalf("simple reply %v %q", f.Binary, f.Data)
	}
	if r := up.next(t); r.path != "/first/message" || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("message event %s %s", r.path, r.header.Get("Content-Type"))
	}
	s.Send("fail")
	if info, _ := s.ExpectClose(); info.Code != 1011 {
		t.Fatalf("simple client closed with %+v, want 1011", info)
	}
}

func TestOneConnectionsEventsKeepTheirOrder(t *testing.T) {
	up := newUpstream(t, nil)
	e := newEnv(t, all(up.srv.URL), upstream.Options{})
	c, _ := wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{}))
	const n = 200
	for i := 1; i <= n; i++ {
		c.Send(`{"type":"event","event":"seq","dataType":"text","data":"` + strconv.Itoa(i) + `"}`)
	}
	c.Send(`{"type":"event","event":"seq","ackId":1,"dataType":"text","data":"last"}`)
	c.ExpectAck(1, "")
	c.Conn.WriteClose(1000, nil)
	var names []string
	lastID := -1
	for len(names) == 0 || names[len(names)-1] != "disconnected" {
		r := up.next(t)
		name := r.header.Get("ce-eventName")
		if id, _ := strconv.Atoi(r.header.Get("ce-id")); name != "connected" { // connected is not blocking: it may race
			if id <= lastID {
				t.Fatalf("ce-id %d after %d", id, lastID)
			}
			lastID = id
		}
		if name == "seq" {
			name = string(r.body)
		}
		names = append(names, name)
	}
	// connected is not blocking, so it may come anywhere before disconnected.
	var seq []string
	for _, nm := range names {
		if nm != "connect" && nm != "connected" && nm != "disconnected" {
			seq = append(seq, nm)
		}
	}
	for i := 1; i <= n; i++ {
		if seq[i-1] != strconv.Itoa(i) {
			t.Fatalf("event %d arrived as %s", i, seq[i-1])
		}
	}
	if names[0] != "connect" || !slices.Contains(names, "connected") {
		t.Fatalf("events %v", names[:3])
	}
}

func TestDeadUpstreamHurtsOnlyItsOwnHub(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{}, 1)
	dead := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") == "slow" {
			started <- struct{}{}
			<-release
		}
	})
	defer close(release)
	live := newUpstream(t, func(r recorded, w http.ResponseWriter) { w.Write([]byte("live")) })
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{
		"dead": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: dead.srv.URL + "/{event}", UserEventPattern: "*"}}},
		"live": {EventHandlers: []upstream.EventHandlerSettings{{URLTemplate: live.srv.URL + "/{event}", UserEventPattern: "*"}}},
	}}
	e := newEnv(t, cfg, upstream.Options{Timeout: time.Second})
	d, _ := wstest.DialJSON(t, e.url(t, "dead", pubsub.TokenOptions{}))
	l, _ := wstest.DialJSON(t, e.url(t, "live", pubsub.TokenOptions{}))
	d.Send(`{"type":"event","event":"slow","ackId":1,"dataType":"text","data":"x"}`)
	<-started // the dead hub's call is in flight
	for i := 1; i <= 20; i++ {
		l.Send(`{"type":"event","event":"fast","ackId":` + strconv.Itoa(i) + `,"dataType":"text","data":"x"}`)
		if m := l.NextJSON(); m["data"] != "live" {
			t.Fatalf("live reply %v", m)
		}
		l.ExpectAck(i, "")
	}
	d.ExpectAck(1, "InternalServerError") // its own timeout
}

func TestNonBlockingEventsRetry(t *testing.T) {
	var mu sync.Mutex
	failures := 2
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") != "connected" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			w.WriteHeader(503)
		}
	})
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{"*": {EventHandlers: []upstream.EventHandlerSettings{
		{URLTemplate: up.srv.URL + "/{event}", SystemEvents: []string{"connected"}},
	}}}}
	e := newEnv(t, cfg, upstream.Options{})
	wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{}))
	var ids []string
	for len(ids) < 3 {
		ids = append(ids, up.next(t).header.Get("ce-id"))
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("retries changed ce-id: %v", ids)
	}
}

func TestAnonymousConnectPolicyAndConfigFile(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.header.Get("ce-eventName") == "connect" {
			w.Write([]byte(`{"userId":"from-upstream"}`))
		}
	})
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"hubs": {
		"open": {"anonymousConnectPolicy": "allow", "eventHandlers": [{"urlTemplate": "`+up.srv.URL+`/{Hub}/{EVENT}", "systemEvents": ["connect"]}]},
		"*": {"eventHandlers": []}
	}}`), 0o600)
	cfg, err := upstream.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, cfg, upstream.Options{})
	c, _ := wstest.DialJSON(t, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/client/hubs/open")
	_ = c
	if r := up.next(t); r.path != "/open/connect" {
		t.Fatalf("path %s", r.path)
	}
	if got := wstest.HandshakeStatus(t, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/client/hubs/closed", nil); got != 401 {
		t.Fatalf("anonymous on a deny hub: %d", got)
	}

	for _, bad := range []string{
		`{"hubs": {"h": {"eventHandlers": [{"urlTemplate": "ftp://x/{event}"}]}}}`,
		`{"hubs": {"h": {"eventHandlers": [{"urlTemplate": "http://{hub}.example/{event}"}]}}}`,
		`{"hubs": {"h": {"eventHandlers": [{"urlTemplate": "http://x/", "systemEvents": ["boot"]}]}}}`,
		`{"hubs": {"h": {"anonymousConnectPolicy": "maybe"}}}`,
		`{"hubs": {"h": {"eventHandlers": [{"urlTemplate": "http://x/", "auth": {"type": "ManagedIdentity"}}]}}}`,
		`{"hub": {}}`,
	} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := upstream.LoadConfig(path); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
