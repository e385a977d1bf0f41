package main

import (
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/livetrace"
)

// liveTraceTTL is how long the printed live trace URL works: a day, after
// which a restart (or a token minted with the key) gives a new one.
const liveTraceTTL = 24 * time.Hour

// newLiveTrace is the server's live trace, and its URL with a token, or
// nil with -livetrace=false.
func newLiveTrace(enabled bool, cs pubsub.ConnectionString, clustered bool, scheme string, addr net.Addr) (*livetrace.Trace, string, error) {
	if !enabled {
		return nil, "", nil
	}
	trace, err := livetrace.New(livetrace.Options{AccessKey: cs.AccessKey})
	if err != nil {
		return nil, "", err
	}
	u, err := liveTraceURL(trace, cs, clustered, scheme, addr)
	return trace, u, err
}

// mountLiveTrace serves the page and its stream on livetrace.Path, in front
// of the service's handler, whose REST requests it records; the streams
// end when the server shuts down, which would otherwise wait for them.
func mountLiveTrace(srv *http.Server, trace *livetrace.Trace) {
	if trace == nil {
		return
	}
	page, api := trace.Handler(), trace.Middleware(srv.Handler)
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.EscapedPath(); {
		case p == strings.TrimSuffix(livetrace.Path, "/"):
			http.Redirect(w, r, livetrace.Path, http.StatusMovedPermanently) // the fragment is kept
		case strings.HasPrefix(p, livetrace.Path):
			page.ServeHTTP(w, r)
		default:
			api.ServeHTTP(w, r)
		}
	})
	srv.RegisterOnShutdown(trace.Close)
}

// liveTraceURL is the page's address with a token. A node of a cluster
// shows its own events only, so its URL is the node's listening address,
// not the load balancer's Endpoint (scheme: the node's, http or https).
func liveTraceURL(trace *livetrace.Trace, cs pubsub.ConnectionString, clustered bool, scheme string, addr net.Addr) (string, error) {
	endpoint := cs.Endpoint
	if clustered {
		host, port, _ := net.SplitHostPort(addr.String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host = "localhost"
		}
		endpoint = scheme + "://" + net.JoinHostPort(host, port)
	}
	return trace.URL(endpoint, liveTraceTTL)
}
