package tracing_test

import (
	"log"
	"net/http"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/rest"
	"github.com/embedwps/pubsub/tracing"
	"github.com/embedwps/pubsub/upstream"
)

// The application's tracer provider (with its exporter) is set globally,
// or in tracing.Options; Middleware wraps the service's handler and
// Transport sends the event handler calls.
func Example() {
	tp := sdktrace.NewTracerProvider( /* sdktrace.WithBatcher(yourExporter) */ )
	otel.SetTracerProvider(tp)
	opts := tracing.Options{} // or tracing.Options{TracerProvider: tp}

	up, err := upstream.New(upstream.Config{ /* hubs and their event handlers */ }, upstream.Options{
		AccessKeys: []string{"my-access-key"},
		Client:     &http.Client{Transport: tracing.Transport(&http.Transport{MaxIdleConnsPerHost: 64}, opts)},
	})
	if err != nil {
		log.Fatal(err)
	}
	svc, err := pubsub.New(pubsub.Config{Endpoint: "http://localhost:8080", AccessKey: "my-access-key", EventHandler: up})
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Addr:              "localhost:8080",
		Handler:           tracing.Middleware(rest.NewServiceHandler(svc, rest.Options{}, nil), opts),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.ListenAndServe()
}
