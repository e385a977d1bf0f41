// Package metrics exports a Service's metrics to Prometheus: what Azure
// Monitor shows for Web PubSub, per hub where it makes sense. It owns the
// metric names and labels; the root package stays free of Prometheus.
//
//	m := metrics.New(metrics.Options{})                 // registers on a registry of its own
//	svc, _ := pubsub.New(pubsub.Config{..., Observers: []pubsub.Observer{m}})
//	m.Watch(svc)                                        // gauges and counters read at each scrape
//	handler := m.Middleware(rest.NewServiceHandler(svc, rest.Options{}, nil))
//	up, _ := upstream.New(cfg, upstream.Options{Client: &http.Client{Transport: m.Transport(nil)}})
//	http.Handle("/metrics", m.Handler())
//
// Counting stays off the fan-out's hot path: a message fanned out to many
// connections is counted once, with its recipients, and the service's own
// counters (Stats) are read only when Prometheus scrapes.
package metrics

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/statuswriter"
)

// Options configure the metrics; the zero value is ready to use.
type Options struct {
	// Registerer takes the metrics. Nil: a registry of the Metrics' own,
	// which Handler serves (with the Go runtime and process collectors).
	Registerer prometheus.Registerer
	// Gatherer is what Handler serves when Registerer is set. Nil: the
	// Registerer, if it is a Gatherer too (a *prometheus.Registry is).
	Gatherer prometheus.Gatherer
	// Namespace prefixes every metric name. Default "webpubsub".
	Namespace string
	// Buckets of the latency histograms, in seconds. Default
	// prometheus.DefBuckets.
	Buckets []float64
}

// Metrics is a pubsub.Observer that counts a Service's connections and
// messages, and the source of its Prometheus metrics.
type Metrics struct {
	gatherer prometheus.Gatherer

	opened, closed, reliable            *prometheus.CounterVec
	msgsIn, bytesIn, msgsOut, bytesOut  *prometheus.CounterVec
	restRequests, upstreamCalls         *prometheus.CounterVec
	restDuration, upstreamCallsDuration *prometheus.HistogramVec

	// hubs caches each hub's counters: a label lookup per message would
	// hash the hub name into the vector's map every time.
	hubs sync.Map // hub name → *hubCounters

	mu     sync.Mutex // guards svc and broker, set once and read at scrapes
	svc    *pubsub.Service
	broker func() BrokerStats
}

// hubCounters are one hub's message counters.
type hubCounters struct {
	msgsIn, bytesIn, msgsOut, bytesOut prometheus.Counter
}

var _ pubsub.Observer = (*Metrics)(nil)

// New returns Metrics registered on opts.Registerer. It panics if they are
// registered there already, as prometheus.MustRegister does.
func New(opts Options) *Metrics {
	ns := opts.Namespace
	if ns == "" {
		ns = "webpubsub"
	}
	reg, gat := opts.Registerer, opts.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		r.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
		reg, gat = r, r
	} else if gat == nil {
		gat, _ = reg.(prometheus.Gatherer)
	}
	buckets := opts.Buckets
	if buckets == nil {
		buckets = prometheus.DefBuckets
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, labels)
	}
	m := &Metrics{
		gatherer: gat,
		opened:   counter("connections_opened_total", "Connections opened (their connected event raised), per hub.", "hub"),
		closed: counter("connections_closed_total", "Connections closed, per hub and reason (normal, clientError, connectionLost, appServer, "+
			"serviceReload, slowClient, pingTimeout, recoveryExpired, policy, invalidMessage, internalError, tryAgainLater).", "hub", "reason"),
		reliable: counter("reliable_sessions_total", "Reliable connections that lost their transport (detached), were resumed by a new one "+
			"(recovered), or were not resumed within the recovery window (expired), per hub.", "hub", "event"),
		msgsIn:   counter("inbound_messages_total", "Messages received from clients, per hub.", "hub"),
		bytesIn:  counter("inbound_bytes_total", "Bytes of the messages received from clients, per hub.", "hub"),
		msgsOut:  counter("outbound_messages_total", "Messages delivered to connections of this node (one per recipient), per hub.", "hub"),
		bytesOut: counter("outbound_bytes_total", "Data bytes of the messages delivered to connections of this node (per recipient), per hub.", "hub"),
		restRequests: counter("rest_requests_total", "REST API requests, per operation and HTTP status "+
			"(operation \"\" is a path or method the API does not have).", "operation", "status"),
		upstreamCalls: counter("event_handler_calls_total", "Calls to event handlers, per event (connect, connected, disconnected, "+
			"joined, left, user for every user event, validate for the abuse protection check) and outcome "+
			"(the HTTP status class 2xx, 4xx, 5xx, or error when no answer came).", "event", "outcome"),
		restDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "rest_request_duration_seconds",
			Help: "Time to answer a REST API request, per operation.", Buckets: buckets}, []string{"operation"}),
		upstreamCallsDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "event_handler_call_duration_seconds",
			Help: "Time an event handler took to answer, per event.", Buckets: buckets}, []string{"event"}),
	}
	reg.MustRegister(m.opened, m.closed, m.reliable, m.msgsIn, m.bytesIn, m.msgsOut, m.bytesOut,
		m.restRequests, m.upstreamCalls, m.restDuration, m.upstreamCallsDuration, &collector{m: m, ns: ns})
	return m
}

// Handler serves the metrics in Prometheus' text format. Serve it on an
// address of its own: it is not protected by the access key.
func (m *Metrics) Handler() http.Handler {
	if m.gatherer == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.gatherer, promhttp.HandlerOpts{})
}

func (m *Metrics) hub(name string) *hubCounters {
	if h, ok := m.hubs.Load(name); ok {
		return h.(*hubCounters)
	}
	h := &hubCounters{
		msgsIn: m.msgsIn.WithLabelValues(name), bytesIn: m.bytesIn.WithLabelValues(name),
		msgsOut: m.msgsOut.WithLabelValues(name), bytesOut: m.bytesOut.WithLabelValues(name),
	}
	actual, _ := m.hubs.LoadOrStore(name, h)
	return actual.(*hubCounters)
}

// ConnectionChanged counts opens, closes by reason and reliable sessions'
// changes.
func (m *Metrics) ConnectionChanged(ev pubsub.ConnectionEvent) {
	switch ev.Kind {
	case pubsub.ConnectionOpened:
		m.opened.WithLabelValues(ev.Hub).Inc()
	case pubsub.ConnectionClosed:
		m.closed.WithLabelValues(ev.Hub, string(ev.CloseReason)).Inc()
		if ev.CloseReason == pubsub.CloseReasonRecoveryExpired {
			m.reliable.WithLabelValues(ev.Hub, "expired").Inc()
		}
	case pubsub.ConnectionDetached:
		m.reliable.WithLabelValues(ev.Hub, "detached").Inc()
	case pubsub.ConnectionRecovered:
		m.reliable.WithLabelValues(ev.Hub, "recovered").Inc()
	}
}

// MessageReceived counts a client's message.
func (m *Metrics) MessageReceived(ev pubsub.MessageEvent) {
	h := m.hub(ev.Hub)
	h.msgsIn.Inc()
	h.bytesIn.Add(float64(ev.Bytes))
}

// MessageSent counts a fan-out: one message per recipient.
func (m *Metrics) MessageSent(ev pubsub.MessageEvent) {
	h := m.hub(ev.Hub)
	h.msgsOut.Add(float64(ev.Recipients))
	h.bytesOut.Add(float64(ev.Bytes) * float64(ev.Recipients))
}

// Middleware counts and times the REST API's requests (paths under /api/);
// wrap the service's handler (rest.NewServiceHandler) with it.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op, ok := restOperation(r)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := statuswriter.New(w)
		next.ServeHTTP(sw, r)
		m.restRequests.WithLabelValues(op, strconv.Itoa(sw.Status())).Inc()
		m.restDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	})
}

// Transport counts and times the calls an upstream.Handler makes to event
// handlers: give it the upstream's client (upstream.Options.Client).
// base nil is http.DefaultTransport.
func (m *Metrics) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		event := eventLabel(r.Header)
		start := time.Now()
		resp, err := base.RoundTrip(r)
		outcome := "error"
		if err == nil {
			outcome = strconv.Itoa(resp.StatusCode/100) + "xx"
		}
		m.upstreamCalls.WithLabelValues(event, outcome).Inc()
		m.upstreamCallsDuration.WithLabelValues(event).Observe(time.Since(start).Seconds())
		return resp, err
	})
}

// eventLabel names an event handler call for a label. A user event's name
// is the client's choice, so every user event is "user": a label per name
// would let clients make series without bound. Hubs are left out for the
// same reason: a connect event comes before any check of the hub.
func eventLabel(h http.Header) string {
	typ := header(h, "ce-type")
	switch {
	case typ == "": // the abuse-protection OPTIONS check
		return "validate"
	case strings.HasPrefix(typ, "azure.webpubsub.user."):
		return "user"
	}
	return header(h, "ce-eventName")
}

// header reads a CloudEvents header, which the upstream sets in the
// spelling of the spec (ce-hub), not Go's canonical one.
func header(h http.Header, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return h.Get(name)
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
