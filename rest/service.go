package rest

import (
	"net/http"
	"strings"

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
// whole hub; a client that follows the redirect and signs the new URL (as
// Azure's SDK pipelines do) would reach every connection.
func NewServiceHandler(svc *pubsub.Service, opts Options, next http.Handler) http.Handler {
	if next == nil {
		next = http.NotFoundHandler()
	}
	return &serviceHandler{client: svc.ClientHandler(), api: NewHandler(svc, opts), next: next}
}

type serviceHandler struct {
	client, api, next http.Handler
}

func (s *serviceHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.EscapedPath(); {
	case strings.HasPrefix(p, "/api/"):
		s.api.ServeHTTP(w, r)
	case p == "/client" || strings.HasPrefix(p, "/client/"):
		s.client.ServeHTTP(w, r)
	default:
		s.next.ServeHTTP(w, r)
	}
}
