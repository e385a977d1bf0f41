package rest

import (
	"net/http"
	"strings"
	"time"

	"github.com/embedwps/pubsub"
)

// NewServiceHandler serves all of svc on one handler: the client endpoint
// on /client/ (and /client), the REST API on /api/, and anything else with
// next (nil: 404). Mount it as the server's handler, in front of any
// http.ServeMux.
//
// It routes on the raw path and never cleans or redirects it, so that "."
// and ".." are names like any other: user ids and group names may be "." or
// "..". http.ServeMux cleans a path before any handler sees it and
// redirects /api/hubs/h/users/../:send to /api/hubs/h/:send, a send to the
// whole hub; a client that follows the redirect and signs the new URL
// reaches every connection.
//
// opts.ReadTimeout bounds the bodies of the requests it answers itself;
// next bounds its own.
func NewServiceHandler(svc *pubsub.Service, opts Options, next http.Handler) http.Handler {
	opts = opts.withDefaults()
	s := &serviceHandler{client: svc.ClientHandler(), api: NewHandler(svc, opts), next: next, readTimeout: opts.ReadTimeout}
	if next == nil {
		s.next, s.ownNext = http.NotFoundHandler(), true
	}
	return s
}

type serviceHandler struct {
	client, api, next http.Handler
	readTimeout       time.Duration
	ownNext           bool // next is our 404
}

func (s *serviceHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.EscapedPath(); {
	case strings.HasPrefix(p, "/api/"):
		s.api.ServeHTTP(w, r)
	case p == "/client" || strings.HasPrefix(p, "/client/"):
		// The client endpoint reads no body, but net/http reads what is
		// left of one after the handler. A WebSocket upgrade clears the
		// deadline.
		limitBodyRead(w, r, s.readTimeout)
		s.client.ServeHTTP(w, r)
	default:
		if s.ownNext {
			limitBodyRead(w, r, s.readTimeout)
		}
		s.next.ServeHTTP(w, r)
	}
}
