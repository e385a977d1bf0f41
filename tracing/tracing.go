// Package tracing owns the service's OpenTelemetry traces: a server span
// for each REST operation and each client connect (Middleware, around
// rest.NewServiceHandler), and a client span for each call to an
// application's event handler (Transport, in upstream.Options.Client),
// which carries W3C trace context (traceparent) to the application so that
// its own traces join the service's.
//
// It is a package of its own so that the service's other packages never
// import OpenTelemetry: only an application that imports tracing compiles
// it. Tracing is off unless the application sets a tracer provider, in
// Options or globally (otel.SetTracerProvider): with OpenTelemetry's
// default no-op provider nothing is recorded and no traceparent is sent.
package tracing

import (
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of every span of this package.
const ScopeName = "github.com/embedwps/pubsub/tracing"

// Options configure Middleware and Transport; the zero value uses the
// global tracer provider and propagator.
type Options struct {
	// TracerProvider makes the spans. Nil: otel.GetTracerProvider(), which
	// is a no-op, and so tracing off, until the application sets one with
	// otel.SetTracerProvider (before or after Middleware and Transport
	// are made).
	TracerProvider trace.TracerProvider
	// Propagator reads trace context from incoming requests and writes it
	// to the event handler's. Nil: otel.GetTextMapPropagator(), unless that
	// is OpenTelemetry's default, which propagates nothing: then W3C Trace
	// Context (propagation.TraceContext), so that traceparent goes to the
	// event handler whenever a span is made without the application having
	// to set a global propagator too.
	Propagator propagation.TextMapPropagator
}

func (o Options) tracer() trace.Tracer {
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(ScopeName)
}

// propagator is chosen per request: a global propagator set after
// Middleware or Transport was made is used from then on.
func (o Options) propagator() propagation.TextMapPropagator {
	if o.Propagator != nil {
		return o.Propagator
	}
	if p := otel.GetTextMapPropagator(); len(p.Fields()) > 0 {
		return p
	}
	return propagation.TraceContext{}
}

// The attributes of the spans: OpenTelemetry's semantic conventions for
// HTTP, and the service's own under webpubsub.
const (
	AttrHub          = attribute.Key("webpubsub.hub")
	AttrOperation    = attribute.Key("webpubsub.operation")     // a REST operation: sendToGroup, ...
	AttrEvent        = attribute.Key("webpubsub.event")         // an event handler call's event: connect, a user event's name, ...
	AttrConnectionID = attribute.Key("webpubsub.connection_id") // an event's connection, or the one a recovery resumes
	attrMethod       = attribute.Key("http.request.method")
	attrStatus       = attribute.Key("http.response.status_code")
	attrServer       = attribute.Key("server.address")
)

// method is the request's method as the semantic conventions want it:
// a known method, else _OTHER (an attribute of bounded values).
func method(m string) attribute.KeyValue {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodPatch, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return attrMethod.String(m)
	}
	return attrMethod.String("_OTHER")
}
