package tracing

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/embedwps/pubsub/internal/statuswriter"
	"github.com/embedwps/pubsub/rest"
)

// Middleware traces the requests that rest.NewServiceHandler serves; wrap
// that handler with it:
//
//	handler := tracing.Middleware(rest.NewServiceHandler(svc, rest.Options{}, appMux), tracing.Options{})
//
// A REST request (/api/…) gets a server span named after its operation
// ("WebPubSub sendToGroup"; "WebPubSub REST" for a path or method that is
// no operation), with the hub, the operation, the method and the status
// code; a 5xx marks it failed. Health checks (/api/health) are not traced:
// a load balancer's would drown the rest.
//
// A client's WebSocket connect (/client/…) gets a server span, "WebPubSub
// connect", from the request to the end of the handshake: authentication,
// the connect event (whose context is the span's, so that Transport's span
// for the call to the event handler is its child) and the upgrade; its
// status code is 101 once the connection is taken over for the handshake,
// and when Transport calls the connect event it names the connection
// (webpubsub.connection_id).
// A reliable client's recovery gets "WebPubSub recover", with the
// connection id it resumes. What the connection does later (its messages,
// the connected and disconnected events) is not part of it.
//
// Incoming trace context (traceparent, as Azure's server SDKs may send) is
// the parent of the span, unless the request's context already holds a
// span (a middleware of the application's traced it first). Any other path
// is passed to next untouched.
//
// The ResponseWriter next sees keeps http.Flusher, http.Hijacker and
// Unwrap (http.ResponseController) working.
func Middleware(next http.Handler, opts Options) http.Handler {
	return &middleware{next: next, opts: opts, tracer: opts.tracer()}
}

type middleware struct {
	next   http.Handler
	opts   Options
	tracer trace.Tracer
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.EscapedPath(); {
	case strings.HasPrefix(p, "/api/"):
		op, hub := rest.Operation(r)
		if op == "health" {
			m.next.ServeHTTP(w, r)
			return
		}
		name, attrs := "WebPubSub REST", []attribute.KeyValue{method(r.Method)}
		if op != "" {
			name = "WebPubSub " + op
			attrs = append(attrs, AttrOperation.String(op))
			attrs = appendBounded(attrs, AttrHub, hub)
		}
		m.serve(w, r, name, attrs, false)
	case p == "/client" || strings.HasPrefix(p, "/client/"):
		name, attrs := "WebPubSub connect", []attribute.KeyValue{method(r.Method)}
		attrs = appendBounded(attrs, AttrHub, clientHub(r))
		if strings.Contains(r.URL.RawQuery, "awps_connection_id") {
			if id := r.URL.Query().Get("awps_connection_id"); id != "" {
				name = "WebPubSub recover"
				attrs = appendBounded(attrs, AttrConnectionID, id)
			}
		}
		m.serve(w, r, name, attrs, name == "WebPubSub connect")
	default:
		m.next.ServeHTTP(w, r)
	}
}

// maxName bounds the names read from a request before it is
// authenticated (a hub name has at most 128 characters, a connection id
// fewer): a longer one is left out rather than stored with the span.
const maxName = 256

func appendBounded(attrs []attribute.KeyValue, key attribute.Key, v string) []attribute.KeyValue {
	if v == "" || len(v) > maxName {
		return attrs
	}
	return append(attrs, key.String(v))
}

// connectSpanKey holds a connect span in its request's context, for
// Transport to name the connection on it when it calls the connect event.
type connectSpanKey struct{}

// serve runs next under a server span.
func (m *middleware) serve(w http.ResponseWriter, r *http.Request, name string, attrs []attribute.KeyValue, connect bool) {
	ctx := r.Context()
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = m.opts.propagator().Extract(ctx, propagation.HeaderCarrier(r.Header))
	}
	ctx, span := m.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	if connect && span.IsRecording() {
		ctx = context.WithValue(ctx, connectSpanKey{}, span)
	}
	rw := statuswriter.New(w)
	defer func() {
		if v := recover(); v != nil {
			span.SetStatus(codes.Error, "the handler panicked")
			span.End()
			panic(v)
		}
		status := rw.Status()
		span.SetAttributes(attrStatus.Int(status))
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		span.End()
	}()
	m.next.ServeHTTP(rw, r.WithContext(ctx))
}

// clientHub reads the hub as the client endpoint does, from
// /client/hubs/{hub} or /client?hub={hub}, lower-cased; "" when there is
// none (the endpoint answers 404).
func clientHub(r *http.Request) string {
	p := r.URL.EscapedPath()
	if i := strings.LastIndex(p, "/client/hubs/"); i >= 0 {
		hub, err := url.PathUnescape(strings.TrimSuffix(p[i+len("/client/hubs/"):], "/"))
		if err != nil || strings.Contains(hub, "/") {
			return ""
		}
		return strings.ToLower(hub)
	}
	return strings.ToLower(r.URL.Query().Get("hub"))
}
