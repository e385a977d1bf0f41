// Command webpubsub runs the library as a local, Azure Web PubSub compatible
// server: the client endpoint on /client/ and the REST API on /api/, with
// the access key of a connection string.
//
//	go run ./cmd/webpubsub -addr 127.0.0.1:8080
//
// The access key comes from -connection-string, else from
// WEBPUBSUB_CONNECTION_STRING, else a fresh random key; the connection string
// a client SDK needs is printed on start. -config FILE sets per-hub
// CloudEvents event handlers (upstream.Config). The live trace page
// (livetrace) is on /livetrace/, its URL with a token printed second;
// -livetrace=false turns it off.
//
// -tls self-signed serves HTTPS (and wss://) with a localhost certificate of
// a local development CA made once in the user's config directory;
// -tls-cert and -tls-key serve it with a certificate of one's own.
//
// With -nats URL (or WEBPUBSUB_NATS_URL) the server is one node of a
// cluster on NATS (natsbroker): start every node with the same connection
// string, whose Endpoint is the load balancer's URL.
//
//	go run ./cmd/webpubsub -addr :8081 -nats nats://127.0.0.1:4222 -connection-string "Endpoint=http://lb:8080;AccessKey=...;Version=1.0;"
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
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
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/livetrace"
	"github.com/embedwps/pubsub/metrics"
	"github.com/embedwps/pubsub/natsbroker"
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
	natsURL := fs.String("nats", "", "NATS server URL (or a comma-separated list) that makes this server one node of a cluster; every node needs the same -connection-string, whose Endpoint is the load balancer's URL. A NATS that is unreachable at start does not stop the node: it serves its own connections and joins once NATS is up (default $WEBPUBSUB_NATS_URL, else a single node)")
	nodeID := fs.String("node-id", "", "this node's id in the cluster and in its connection ids, 1 to 32 of [A-Za-z0-9-], unique among the nodes (default $WEBPUBSUB_NODE_ID, else random)")
	natsPrefix := fs.String("nats-prefix", natsbroker.DefaultPrefix, "first token of every NATS subject of the service; clusters sharing a NATS need different prefixes")
	liveTrace := fs.Bool("livetrace", true, "serve the live trace page on /livetrace/ (its stream needs a token signed with the access key) and print its URL, with a 24 h token, as the second line of stdout")
	metricsAddr := fs.String("metrics-addr", defaultMetricsAddr, "address of the Prometheus /metrics endpoint, host:port, apart from the service's (not protected by the access key; a busy default moves to a free port); empty: no metrics")
	grace := fs.Duration("shutdown-grace", 10*time.Second, "how long shutdown (SIGINT, SIGTERM) may take: clients are closed and the pending events sent to the event handlers without retry delays; what is still pending then is dropped and counted in the log")
	tlsOpts := addTLSFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *grace <= 0 {
		return fmt.Errorf("-shutdown-grace must be more than 0, not %v", *grace)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cluster, err := clusterSettings(fs, *natsURL, *nodeID, *natsPrefix, *connStr)
	if err != nil {
		return err
	}
	tlsConfig, err := tlsOpts.config(log, os.Stderr) // nil: plain HTTP
	if err != nil {
		return err
	}
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	cs, err := connectionString(*connStr, scheme, ln.Addr().String())
	if err != nil {
		ln.Close()
		return err
	}
	warnEndpointScheme(log, cs.Endpoint, tlsConfig != nil)
	m := metrics.New(metrics.Options{})
	cfg := pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey, Logger: log, Observers: []pubsub.Observer{m}}
	trace, traceURL, err := newLiveTrace(*liveTrace, cs, cluster.url != "", scheme, ln.Addr())
	if err != nil {
		ln.Close()
		return err
	}
	if trace != nil {
		cfg.Observers = append(cfg.Observers, trace)
	}
	if *configPath != "" {
		hubs, err := upstream.LoadConfig(*configPath)
		if err != nil {
			ln.Close()
			return err
		}
		endpoint, _ := url.Parse(cs.Endpoint)
		up, err := upstream.New(hubs, upstream.Options{AccessKeys: []string{cs.AccessKey}, Origin: endpoint.Hostname(), Logger: log,
			Client: &http.Client{Transport: m.Transport(nil)}})
		if err != nil {
			ln.Close()
			return err
		}
		cfg.EventHandler = up
		log.Info("event handlers configured", "config", *configPath, "hubs", len(hubs.Hubs))
	}
	if cluster.url != "" {
		b, err := natsbroker.New(natsbroker.Options{URL: cluster.url, Prefix: cluster.prefix, NodeID: cluster.nodeID, Logger: log})
		if err != nil {
			ln.Close()
			return err
		}
		cfg.Broker = b
		m.WatchBroker(func() metrics.BrokerStats { return metrics.BrokerStats(b.Stats()) })
		log.Info("cluster node", "node", b.NodeID(), "nats", redactURL(cluster.url), "prefix", cluster.prefix)
	}
	// On an error the broker is left to the exit: Close would wait for a
	// Start that New may not have made.
	svc, err := pubsub.New(cfg)
	if err != nil {
		ln.Close()
		return err
	}

	m.Watch(svc)
	metricsChosen := false
	fs.Visit(func(f *flag.Flag) { metricsChosen = metricsChosen || f.Name == "metrics-addr" })
	metricsSrv, err := serveMetrics(*metricsAddr, metricsChosen, m, log)
	if err != nil {
		ln.Close()
		_ = svc.Shutdown(context.Background())
		return err
	}
	srv := newServer(svc, log, defaultLimits, m.Middleware)
	mountLiveTrace(srv, trace)

	// Signals are caught before the connection string tells a supervisor
	// that the server is up.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The key on stdout, which is how a user gets it; logs get the
	// redacted form (ConnectionString is a slog.LogValuer).
	fmt.Fprintf(stdout, "%s\n", cs.String())
	if trace != nil {
		// Its token, too, goes to stdout only; the log names the path.
		fmt.Fprintf(stdout, "%s\n", traceURL)
		log.Info("live trace", "path", livetrace.Path, "tokenLifetime", liveTraceTTL)
	}
	log.Info("listening", "addr", ln.Addr().String(), "client", "/client/hubs/{hub}", "rest", "/api/", "connectionString", cs)
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	err = errors.Join(svc.Shutdown(shutdownCtx), srv.Shutdown(shutdownCtx))
	if metricsSrv != nil {
		err = errors.Join(err, metricsSrv.Shutdown(shutdownCtx))
	}
	if err == nil {
		log.Info("stopped")
	}
	return err
}

// clusterConfig is what makes the server a node of a cluster: no url, a
// single node.
type clusterConfig struct {
	url, nodeID, prefix string
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,32}$`)

// clusterSettings picks the NATS URL and node id from the flags, else the
// environment, and checks them before anything connects.
func clusterSettings(fs *flag.FlagSet, natsURL, nodeID, prefix, connStr string) (clusterConfig, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if natsURL == "" {
		natsURL = os.Getenv("WEBPUBSUB_NATS_URL")
	}
	if natsURL == "" {
		if set["node-id"] || set["nats-prefix"] {
			return clusterConfig{}, errors.New("-node-id and -nats-prefix need -nats (or WEBPUBSUB_NATS_URL)")
		}
		return clusterConfig{}, nil
	}
	if connStr == "" && os.Getenv("WEBPUBSUB_CONNECTION_STRING") == "" {
		return clusterConfig{}, errors.New("-nats needs -connection-string (or WEBPUBSUB_CONNECTION_STRING): every node of a cluster must have the same access key")
	}
	if nodeID == "" {
		nodeID = os.Getenv("WEBPUBSUB_NODE_ID")
	}
	if nodeID != "" && !nodeIDPattern.MatchString(nodeID) {
		return clusterConfig{}, fmt.Errorf("node id %q: want 1 to 32 of [A-Za-z0-9-]", nodeID)
	}
	return clusterConfig{url: natsURL, nodeID: nodeID, prefix: prefix}, nil
}

// redactURL hides the user info (user:password, or a token) of each URL
// of a comma-separated NATS URL list.
func redactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		rest := p
		scheme := ""
		if j := strings.Index(p, "://"); j >= 0 {
			scheme, rest = p[:j+3], p[j+3:]
		}
		host := rest
		if j := strings.IndexAny(rest, "/?#"); j >= 0 {
			host = rest[:j]
		}
		if at := strings.LastIndex(host, "@"); at >= 0 {
			userinfo := host[:at]
			if user, _, ok := strings.Cut(userinfo, ":"); ok {
				userinfo = user + ":***"
			} else {
				userinfo = "***" // a lone user is a token
			}
			p = scheme + userinfo + rest[at:]
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
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
// wraps are middlewares (metrics, live trace), the first outermost.
func newServer(svc *pubsub.Service, log *slog.Logger, l limits, wraps ...func(http.Handler) http.Handler) *http.Server {
	// Not http.ServeMux: it would redirect dot segments (users/../:send)
	// to other operations.
	h := rest.NewServiceHandler(svc, rest.Options{Logger: log, ReadTimeout: l.body}, nil)
	for i := len(wraps) - 1; i >= 0; i-- {
		h = wraps[i](h)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.readHeader,
		IdleTimeout:       l.idle,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// connectionString picks the connection string from the flag, the
// environment, or makes one with a fresh key for the listening address,
// with scheme http or https.
func connectionString(flagValue, scheme, listenAddr string) (pubsub.ConnectionString, error) {
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
		Endpoint:  scheme + "://" + reachableAddr(listenAddr),
		AccessKey: base64.StdEncoding.EncodeToString(key),
	}, nil
}
