package metrics_test

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/metrics"
	"github.com/embedwps/pubsub/rest"
	"github.com/embedwps/pubsub/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const accessKey = "metrics-test-access-key-0123456789abcdef"

// env is a service with metrics, its REST API and an upstream event
// handler, each over real sockets, and the metrics on an address of their
// own.
type env struct {
	t       *testing.T
	svc     *pubsub.Service
	srv     *httptest.Server
	metrics *httptest.Server
}

func newEnv(t *testing.T, upstreamStatus int) *env {
	return newEnvWith(t, upstreamStatus, pubsub.Config{})
}

func newEnvWith(t *testing.T, upstreamStatus int, cfg pubsub.Config) *env {
	t.Helper()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set("WebHook-Allowed-Origin", "*")
			return
		}
		if r.Header.Get("ce-eventName") == "connect" {
			w.WriteHeader(upstreamStatus)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(app.Close)
	m := metrics.New(metrics.Options{})
	up, err := upstream.New(upstream.Config{Hubs: map[string]upstream.HubSettings{"chat": {EventHandlers: []upstream.EventHandlerSettings{{
		URLTemplate: app.URL + "/{event}", SystemEvents: []string{"connect", "connected", "disconnected"}, UserEventPattern: "*",
	}}}}}, upstream.Options{AccessKeys: []string{accessKey}, Client: &http.Client{Transport: m.Transport(nil)}, RetryDelays: []time.Duration{}})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t}
	e.srv = httptest.NewUnstartedServer(nil)
	cfg.Endpoint, cfg.AccessKey = "http://"+e.srv.Listener.Addr().String(), accessKey
	cfg.EventHandler, cfg.Observers = up, []pubsub.Observer{m}
	e.svc, err = pubsub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Watch(e.svc)
	e.srv.Config.Handler = m.Middleware(rest.NewServiceHandler(e.svc, rest.Options{}, nil))
	e.srv.Start()
	e.metrics = httptest.NewServer(m.Handler())
	t.Cleanup(func() {
		e.metrics.Close()
		_ = e.svc.Shutdown(t.Context())
		e.srv.Close()
	})
	return e
}

func (e *env) dial(user string, roles ...string) (*wstest.Client, string) {
	u, err := e.svc.ClientURL("chat", pubsub.TokenOptions{UserID: user, Roles: roles})
	if err != nil {
		e.t.Fatal(err)
	}
	return wstest.DialJSON(e.t, u)
}

// rest calls the REST API with a token for the URL (bad: signed with
// another key).
func (e *env) rest(method, path string, body string, bad bool) int {
	e.t.Helper()
	u := e.srv.URL + path
	key := accessKey
	if bad {
		key = "another-key-0123456789abcdef0123456789"
	}
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(key))
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// scrape reads /metrics as Prometheus would.
func (e *env) scrape() map[string]*dto.MetricFamily {
	e.t.Helper()
	resp, err := http.Get(e.metrics.URL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return fams
}

// value is a metric's value (a histogram's count) with the labels given
// as name, value pairs; NaN when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return math.NaN()
	}
next:
	for _, m := range f.Metric {
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return math.NaN()
}

// await scrapes until want holds, or fails with what the last scrape said.
func (e *env) await(what string, want func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams := e.scrape()
		if want(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: never seen in the metrics", what)
		}
		time.Sleep(20 * time.Millisecond) // a scrape poll, not a synchronisation
	}
}

// TestMetricsFollowWhatHappened scrapes /metrics after connects, sends,
// closes of several kinds and REST calls, and finds each counted.
func TestMetricsFollowWhatHappened(t *testing.T) {
	e := newEnv(t, http.StatusOK)
	a, _ := e.dial("alice", "webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
	b, bID := e.dial("bob", "webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
	c, _ := e.dial("carol")
	e.await("three connections", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "webpubsub_connections", "hub", "chat") == 3 && value(f, "webpubsub_connections_opened_total", "hub", "chat") == 3
	})

	a.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	a.ExpectAck(1, "")
	b.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	b.ExpectAck(1, "")
	payload := strings.Repeat("x", 100) // 100 data bytes to each of 2 members
	for i := 2; i < 5; i++ {
		b.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"` + payload + `","noEcho":true,"ackId":` + string(rune('0'+i)) + `}`)
		b.ExpectAck(i, "")
	}
	for range 3 {
		if m := a.NextJSON(); m["group"] != "room" {
			t.Fatalf("got %v", m)
		}
	}
	// Two user events, named by the client: one label for both.
	a.Send(`{"type":"event","event":"client-chosen-1","dataType":"text","data":"e","ackId":5}`)
	a.ExpectAck(5, "")
	a.Send(`{"type":"event","event":"client-chosen-2","dataType":"text","data":"e","ackId":6}`)
	a.ExpectAck(6, "")
	if st := e.rest(http.MethodPost, "/api/hubs/chat/:send?api-version=2024-12-01", "hello", false); st != http.StatusAccepted {
		t.Fatalf("sendToAll: %d", st)
	}
	if st := e.rest(http.MethodPost, "/api/hubs/chat/:send?api-version=2024-12-01", "hello", true); st != http.StatusUnauthorized {
		t.Fatalf("a bad token: %d", st)
	}
	if st := e.rest(http.MethodDelete, "/api/hubs/chat/connections/"+bID+"?api-version=2024-12-01", "", false); st != http.StatusOK && st != http.StatusNoContent {
		t.Fatalf("closeConnection: %d", st)
	}
	b.ExpectClose()
	c.Conn.WriteClose(1000, nil) // a normal close from the client
	<-c.Done()

	fams := e.await("the closes", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "webpubsub_connections_closed_total", "hub", "chat", "reason", "appServer") == 1 &&
			value(f, "webpubsub_connections_closed_total", "hub", "chat", "reason", "normal") == 1 &&
			value(f, "webpubsub_connections", "hub", "chat") == 1
	})
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		// 2 joins + 3 sends + 2 events from clients.
		{"webpubsub_inbound_messages_total", []string{"hub", "chat"}, 7},
		// 3 group messages to 1 member (noEcho), and the REST sendToAll to 3.
		{"webpubsub_outbound_messages_total", []string{"hub", "chat"}, 3 + 3},
		{"webpubsub_outbound_bytes_total", []string{"hub", "chat"}, 3*100 + 3*5},
		{"webpubsub_rest_requests_total", []string{"operation", "sendToAll", "status", "202"}, 1},
		{"webpubsub_rest_requests_total", []string{"operation", "sendToAll", "status", "401"}, 1},
		{"webpubsub_rest_requests_total", []string{"operation", "closeConnection", "status", "204"}, 1},
		{"webpubsub_rest_request_duration_seconds", []string{"operation", "sendToAll"}, 2},
		{"webpubsub_event_handler_calls_total", []string{"event", "connect", "outcome", "2xx"}, 3},
		{"webpubsub_event_handler_calls_total", []string{"event", "user", "outcome", "2xx"}, 2},
		{"webpubsub_event_handler_call_duration_seconds", []string{"event", "connect"}, 3},
	}
	for _, c := range checks {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := value(fams, "webpubsub_event_handler_calls_total", "event", "client-chosen-1"); !math.IsNaN(got) {
		t.Errorf("a user event's name is a label")
	}
	if got := value(fams, "webpubsub_inbound_bytes_total", "hub", "chat"); got < 5*30 {
		t.Errorf("inbound bytes %v: the frames were larger", got)
	}
}

// TestMetricsCountFailuresByOutcome: an upstream that refuses connects is
// counted by outcome, and the refused connection is not counted as opened.
func TestMetricsCountFailuresByOutcome(t *testing.T) {
	e := newEnv(t, http.StatusUnauthorized)
	u, _ := e.svc.ClientURL("chat", pubsub.TokenOptions{UserID: "x"})
	if st := wstest.HandshakeStatus(t, u, nil); st != http.StatusUnauthorized {
		t.Fatalf("handshake %d", st)
	}
	fams := e.await("the refused connect", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "webpubsub_event_handler_calls_total", "event", "connect", "outcome", "4xx") == 1
	})
	if got := value(fams, "webpubsub_connections_opened_total", "hub", "chat"); !math.IsNaN(got) {
		t.Fatalf("a refused connect counted as opened: %v", got)
	}
	b, _ := json.Marshal(fams["webpubsub_rest_requests_total"])
	if string(b) != "null" {
		t.Fatalf("REST requests counted without any: %s", b)
	}
}

// TestMetricsCountReliableSessions: a reliable client's dropped transport
// is detached, its recovery recovered, and a second drop left alone past
// the recovery window expired (and closed with that reason).
func TestMetricsCountReliableSessions(t *testing.T) {
	e := newEnvWith(t, http.StatusOK, pubsub.Config{RecoveryWindow: 300 * time.Millisecond})
	u, _ := e.svc.ClientURL("chat", pubsub.TokenOptions{UserID: "r"})
	c := wstest.Dial(t, u, nil, "json.reliable.webpubsub.azure.v1")
	m := c.NextJSON()
	id, token := m["connectionId"].(string), m["reconnectionToken"].(string)
	c.Conn.NetConn().Close() // dropped, no close frame
	e.await("detached", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "webpubsub_reliable_sessions_total", "hub", "chat", "event", "detached") == 1
	})
	c2 := wstest.Dial(t, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/client/hubs/chat?awps_connection_id="+id+"&awps_reconnection_token="+url.QueryEscape(token), nil, "json.reliable.webpubsub.azure.v1")
	e.await("recovered", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "webpubsub_reliable_sessions_total", "hub", "chat", "event", "recovered") == 1
	})
	c2.Conn.NetConn().Close()
	fams := e.await("expired", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "webpubsub_reliable_sessions_total", "hub", "chat", "event", "expired") == 1
	})
	if got := value(fams, "webpubsub_connections_closed_total", "hub", "chat", "reason", "recoveryExpired"); got != 1 {
		t.Fatalf("closed as recoveryExpired: %v", got)
	}
	if got := value(fams, "webpubsub_reliable_sessions_total", "hub", "chat", "event", "detached"); got != 2 {
		t.Fatalf("detached %v times, want 2", got)
	}
}

// BenchmarkObserver is what the metrics add to one message: a client's
// message received and a fan-out sent. Compare with BenchmarkFanoutMetrics
// in bench/, where one fan-out to 100 connections takes about 1 ms.
//
//	go test -run XXX -bench Observer ./metrics
func BenchmarkObserver(b *testing.B) {
	m := metrics.New(metrics.Options{})
	in := pubsub.MessageEvent{Hub: "chat", ConnectionID: "c", Type: "sendToGroup", Group: "room", Bytes: 100}
	out := pubsub.MessageEvent{Hub: "chat", Type: "sendToGroup", Group: "room", Bytes: 64, Recipients: 100}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.MessageReceived(in)
			m.MessageSent(out)
		}
	})
}
