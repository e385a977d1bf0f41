package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/embedwps/pubsub/metrics"
)

// defaultMetricsAddr is where /metrics is served unless -metrics-addr says
// otherwise: an address of its own, since the metrics are not protected by
// the access key (9464, the port OpenTelemetry's Prometheus exporter uses).
const defaultMetricsAddr = "127.0.0.1:9464"

// serveMetrics serves m's /metrics on addr until the server is shut down.
// When the default address is taken (another server runs on this host),
// a free port is used and logged; an address the user chose must be free.
// An empty addr serves nothing.
func serveMetrics(addr string, chosen bool, m *metrics.Metrics, log *slog.Logger) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil && !chosen {
		host, _, _ := net.SplitHostPort(addr)
		log.Warn("the default metrics address is in use; serving the metrics on a free port", "addr", addr)
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	}
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: maxHeaderBytes}
	log.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("the metrics server failed", "err", err)
		}
	}()
	return srv, nil
}
