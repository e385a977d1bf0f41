// Command webpubsub runs the library as a local, Azure Web PubSub compatible
// server: the client endpoint on /client/ and the REST API on /api/, with
// the access key of a connection string.
//
//	go run ./cmd/webpubsub -addr 127.0.0.1:8080
//
// The access key comes from -connection-string, else from
// WEBPUBSUB_CONNECTION_STRING, else a fresh random key; the connection string
// a client SDK needs is printed on start. -config FILE sets per-hub
// CloudEvents event handlers (upstream.Config).
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/rest"
	"github.com/embedwps/pubsub/upstream"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "webpubsub:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout *os.File) error {
	fs := flag.NewFlagSet("webpubsub", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "address to listen on, host:port")
	connStr := fs.String("connection-string", "", "connection string whose AccessKey signs tokens (default $WEBPUBSUB_CONNECTION_STRING, else a random key)")
	configPath := fs.String("config", "", `JSON file of hub settings with CloudEvents event handlers: {"hubs": {"<hub>": {...}, "*": {...}}}`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	cs, err := connectionString(*connStr, ln.Addr().String())
	if err != nil {
		ln.Close()
		return err
	}
	cfg := pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey, Logger: log}
	if *configPath != "" {
		hubs, err := upstream.LoadConfig(*configPath)
		if err != nil {
			ln.Close()
			return err
		}
		endpoint, _ := url.Parse(cs.Endpoint)
		up, err := upstream.New(hubs, upstream.Options{AccessKeys: []string{cs.AccessKey}, Origin: endpoint.Hostname(), Logger: log})
		if err != nil {
			ln.Close()
			return err
		}
		cfg.EventHandler = up
		log.Info("event handlers configured", "config", *configPath, "hubs", len(hubs.Hubs))
	}
	svc, err := pubsub.New(cfg)
	if err != nil {
		ln.Close()
		return err
	}

	srv := newServer(svc, log, defaultLimits)

	// Signals are caught before the connection string tells a supervisor
	// that the server is up.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The key on stdout, which is how a user gets it; logs get the
	// redacted form (ConnectionString is a slog.LogValuer).
	fmt.Fprintf(stdout, "%s\n", cs.String())
	log.Info("listening", "addr", ln.Addr().String(), "client", "/client/hubs/{hub}", "rest", "/api/", "connectionString", cs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = errors.Join(svc.Shutdown(shutdownCtx), srv.Shutdown(shutdownCtx))
	if err == nil {
		log.Info("stopped")
	}
	return err
}

// limits bound how long a connection may hold the server without
// finishing a request.
type limits struct {
	readHeader time.Duration // the request line and headers
	idle       time.Duration // a keep-alive connection between requests
	body       time.Duration // a request body (rest.Options.ReadTimeout)
}

// defaultLimits: an SDK's next call on a kept-alive connection usually
// comes within a minute, and a body in 30 s (rest.DefaultReadTimeout).
var defaultLimits = limits{readHeader: 10 * time.Second, idle: 60 * time.Second, body: rest.DefaultReadTimeout}

// maxHeaderBytes bounds a request's line and headers: 64 KiB, room for a
// client URL with a token of many groups, far below net/http's 1 MiB
// default (ASP.NET Core, behind Azure, allows 8 KiB + 32 KiB).
const maxHeaderBytes = 64 << 10

// newServer is the HTTP server of svc. It sets no ReadTimeout or
// WriteTimeout: WebSocket connections outlive any request, and bodies are
// bounded per request by the handler.
func newServer(svc *pubsub.Service, log *slog.Logger, l limits) *http.Server {
	return &http.Server{
		// Not http.ServeMux: it would redirect dot segments (users/../:send)
		// to other operations.
		Handler:           rest.NewServiceHandler(svc, rest.Options{Logger: log, ReadTimeout: l.body}, nil),
		ReadHeaderTimeout: l.readHeader,
		IdleTimeout:       l.idle,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// connectionString picks the connection string from the flag, the
// environment, or makes one with a fresh key for the listening address.
func connectionString(flagValue, listenAddr string) (pubsub.ConnectionString, error) {
	s := flagValue
	if s == "" {
		s = os.Getenv("WEBPUBSUB_CONNECTION_STRING")
	}
	if s != "" {
		return pubsub.ParseConnectionString(s)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return pubsub.ConnectionString{}, err
	}
	return pubsub.ConnectionString{
		Endpoint:  "http://" + listenAddr,
		AccessKey: base64.StdEncoding.EncodeToString(key),
	}, nil
}
