package tracing

import (
	"io"
	"net/http"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Transport traces the calls of package upstream to the application's
// event handlers; give it to upstream.Options.Client:
//
//	up, err := upstream.New(cfg, upstream.Options{
//		Client: &http.Client{Transport: tracing.Transport(nil, tracing.Options{})},
//		...
//	})
//
// Each call gets a client span: "WebPubSub event connect" for a system
// event (connect, connected, disconnected, joined, left), "WebPubSub user
// event" for a user event (whose name, chosen by clients, is the event
// attribute rather than part of the span's name), and "WebPubSub abuse
// protection" for the validation request, with the hub, the event, the
// connection id, the method and the status code; a failed request or a 5xx
// marks it failed. It ends when the response's body is read to its end or
// closed. The request that base sends is a copy that carries the span's
// trace context (traceparent); the caller's is left as it is.
//
// The connect event runs in the client's request, so its span is a child
// of Middleware's connect span. The other events are delivered later by
// upstream's workers or on a connection's read loop, and each starts a
// trace of its own.
//
// base sends the requests; nil: http.DefaultTransport, which keeps 2 idle
// connections per host: an application with busy event handlers passes
// its own, such as &http.Transport{MaxIdleConnsPerHost: 64}.
func Transport(base http.RoundTripper, opts Options) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base, opts: opts, tracer: opts.tracer()}
}

type transport struct {
	base   http.RoundTripper
	opts   Options
	tracer trace.Tracer
}

// header reads a header that package upstream sets under its own
// spelling (ce-eventName), which Header.Get's canonical key would miss.
func header(h http.Header, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return h.Get(name)
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	event := header(req.Header, "ce-eventName")
	attrs := []attribute.KeyValue{method(req.Method), attrServer.String(req.URL.Hostname())}
	var name string
	switch {
	case event == "":
		name = "WebPubSub abuse protection"
	case strings.HasPrefix(header(req.Header, "ce-type"), "azure.webpubsub.user."):
		name = "WebPubSub user event"
	default:
		name = "WebPubSub event " + event
	}
	if event != "" {
		attrs = append(attrs, AttrEvent.String(event))
	}
	if hub := header(req.Header, "ce-hub"); hub != "" {
		attrs = append(attrs, AttrHub.String(hub))
	}
	if id := header(req.Header, "ce-connectionId"); id != "" {
		attrs = append(attrs, AttrConnectionID.String(id))
		if event == "connect" {
			if s, ok := req.Context().Value(connectSpanKey{}).(trace.Span); ok {
				s.SetAttributes(AttrConnectionID.String(id)) // Middleware's connect span
			}
		}
	}
	parent := trace.SpanContextFromContext(req.Context())
	ctx, span := t.tracer.Start(req.Context(), name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))

	// Trace context is sent only for a span of our own: a no-op provider
	// hands back its parent's, and tracing is then off, which forwards
	// nothing, not even a client's traceparent.
	if sc := span.SpanContext(); sc.IsValid() && sc.SpanID() != parent.SpanID() {
		req = req.Clone(ctx) // a RoundTripper must not change its caller's request
		t.opts.propagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.End()
		return resp, err
	}
	span.SetAttributes(attrStatus.Int(resp.StatusCode))
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, http.StatusText(resp.StatusCode))
	}
	if resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode == http.StatusSwitchingProtocols {
		span.End()
		return resp, nil
	}
	resp.Body = &spanBody{ReadCloser: resp.Body, span: span}
	return resp, nil
}

// CloseIdleConnections closes base's idle connections, if it has any
// (http.Client.CloseIdleConnections calls it).
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// spanBody ends a call's span when its response body is read to the end,
// fails or is closed.
type spanBody struct {
	io.ReadCloser
	span trace.Span
	once sync.Once
}

func (b *spanBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.end(nil)
	case err != nil:
		b.end(err)
	}
	return n, err
}

func (b *spanBody) Close() error {
	err := b.ReadCloser.Close()
	b.end(nil)
	return err
}

func (b *spanBody) end(err error) {
	b.once.Do(func() {
		if err != nil {
			b.span.RecordError(err)
			b.span.SetStatus(codes.Error, "reading the response: "+err.Error())
		}
		b.span.End()
	})
}
