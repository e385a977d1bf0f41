// Package rest serves Azure Web PubSub's data-plane REST API (api-version
// 2021-10-01 to 2024-12-01) as an http.Handler that an application mounts at
// /api/ in its own server. It maps each route onto a hub's Go API and owns
// no registry state: authentication, parameters and status codes live here,
// everything else in package pubsub.
package rest

import (
	"encoding/json"
	"errors"
	"github.com/embedwps/pubsub/internal/restauth"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/embedwps/pubsub"
)

// DefaultMaxBodySize bounds a message body: 1 MiB, the client message limit.
const DefaultMaxBodySize = 1 << 20

// DefaultReadTimeout bounds reading a request body: 1 MiB in 30 s is
// 35 KB/s, slower than any link a server SDK calls from.
const DefaultReadTimeout = 30 * time.Second

// Options configure the REST handler; the zero value is ready to use.
type Options struct {
	// MaxBodySize bounds a request body; a larger one gets 413. Default 1 MiB.
	MaxBodySize int64
	// ReadTimeout bounds reading a request's body, from when the handler
	// starts, so that a body that never ends cannot hold its connection even
	// on an http.Server without timeouts: past it, 408 and the connection is
	// closed. Default 30 s (DefaultReadTimeout); negative: no bound. It sets
	// the connection's read deadline (http.ResponseController), which
	// net/http's ResponseWriter supports and resets for the next request.
	ReadTimeout time.Duration
	// Logger receives unexpected errors. Tokens are never logged. Nil:
	// slog.Default().
	Logger *slog.Logger
}

// supportedAPIVersions are the GA data-plane versions Azure's SDKs send.
var supportedAPIVersions = map[string]bool{
	"2021-10-01": true,
	"2022-11-01": true,
	"2023-07-01": true,
	"2024-01-01": true,
	"2024-12-01": true,
}

// NewHandler returns the REST API of svc, for paths /api/…. It routes on
// the raw path, where "." and ".." are names; mount it where nothing cleans
// the path first. http.ServeMux does: it redirects a path with dot segments
// (/api/hubs/h/users/../:send) to the cleaned one (/api/hubs/h/:send),
// another operation. NewServiceHandler mounts it safely.
func NewHandler(svc *pubsub.Service, opts Options) http.Handler {
	return &handler{svc: svc, opts: opts.withDefaults()}
}

func (o Options) withDefaults() Options {
	if o.MaxBodySize <= 0 {
		o.MaxBodySize = DefaultMaxBodySize
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

type handler struct {
	svc  *pubsub.Service
	opts Options
}

// request is one REST call on its way through the handler.
type request struct {
	w     http.ResponseWriter
	r     *http.Request
	query url.Values
	hub   *pubsub.Hub
	args  []string // decoded path parameters after the hub, in route order

	readTimeout time.Duration // for the 408's message
}

// ErrorDetail is the REST API's error body.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Target  string `json:"target,omitempty"`
}

// fail writes an error response: ErrorDetail as JSON and x-ms-error-code
// (no body for HEAD).
func (rq *request) fail(status int, code, message, target string) {
	h := rq.w.Header()
	h.Set("x-ms-error-code", code)
	if rq.r.Method == http.MethodHead {
		rq.w.WriteHeader(status)
		return
	}
	h.Set("Content-Type", "application/json; charset=utf-8")
	rq.w.WriteHeader(status)
	_ = json.NewEncoder(rq.w).Encode(ErrorDetail{Code: code, Message: message, Target: target})
}

func (rq *request) badRequest(message, target string) {
	rq.fail(http.StatusBadRequest, "Error.BadRequest", message, target)
}

// failErr maps a Go API error to its status.
func (h *handler) failErr(rq *request, err error) {
	var status int
	var code string
	switch {
	case errors.Is(err, pubsub.ErrConnectionNotFound), errors.Is(err, pubsub.ErrUserNotFound):
		status, code = http.StatusNotFound, "Error.NotFound"
	case errors.Is(err, pubsub.ErrTooManyPermissions), errors.Is(err, pubsub.ErrTooManyGroups):
		status, code = http.StatusConflict, "Error.Conflict"
	case errors.Is(err, pubsub.ErrServiceClosed), errors.Is(err, pubsub.ErrNodeUnavailable):
		status, code = http.StatusServiceUnavailable, "Error.ServiceUnavailable"
	case errors.Is(err, pubsub.ErrInvalidHub), errors.Is(err, pubsub.ErrInvalidGroup),
		errors.Is(err, pubsub.ErrInvalidUser), errors.Is(err, pubsub.ErrInvalidConnection),
		errors.Is(err, pubsub.ErrInvalidMessage), errors.Is(err, pubsub.ErrInvalidFilter),
		errors.Is(err, pubsub.ErrInvalidPermission), errors.Is(err, pubsub.ErrInvalidTokenLifetime):
		status, code = http.StatusBadRequest, "Error.BadRequest"
	default:
		h.opts.Logger.Error("REST operation failed", "path", rq.r.URL.Path, "err", err)
		status, code = http.StatusInternalServerError, "Error.InternalServerError"
	}
	rq.fail(status, code, err.Error(), "")
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limitBodyRead(w, r, h.opts.ReadTimeout)
	rq := &request{w: w, r: r, query: r.URL.Query(), readTimeout: h.opts.ReadTimeout}
	segs, ok := pathSegments(r.URL.EscapedPath())
	if !ok {
		rq.fail(http.StatusNotFound, "Error.NotFound", "no such operation", "")
		return
	}
	if len(segs) == 1 && segs[0] == "health" {
		if r.Method != http.MethodHead && r.Method != http.MethodGet {
			rq.fail(http.StatusMethodNotAllowed, "Error.MethodNotAllowed", "health takes HEAD or GET", "")
			return
		}
		w.WriteHeader(http.StatusOK) // no auth, as the emulator
		return
	}
	op, args, allowed := route(r.Method, segs)
	if op.fn == nil {
		if allowed != "" {
			w.Header().Set("Allow", allowed)
			rq.fail(http.StatusMethodNotAllowed, "Error.MethodNotAllowed", r.Method+" is not allowed here; use "+allowed, "")
			return
		}
		rq.fail(http.StatusNotFound, "Error.NotFound", "no such operation", "")
		return
	}
	if !h.authorized(rq) {
		return
	}
	v := rq.query.Get("api-version")
	switch {
	case v == "":
		rq.badRequest("the api-version query parameter is required; the latest is 2024-12-01", "api-version")
		return
	case !supportedAPIVersions[v]:
		rq.badRequest("api-version "+v+" is not supported; use one of 2021-10-01, 2022-11-01, 2023-07-01, 2024-01-01, 2024-12-01", "api-version")
		return
	}
	hub, err := h.svc.Hub(segs[1])
	if err != nil {
		rq.badRequest("invalid hub name "+segs[1], "hub")
		return
	}
	rq.hub, rq.args = hub, args
	op.fn(h, rq)
}

// limitBodyRead bounds the time left to read r's body, and so also what
// net/http reads of it after the handler to reuse the connection. Requests
// without a body get no deadline: net/http reads ahead on their connection
// during the handler and would cancel the request's context when it fired.
// Without support for read deadlines, the server's own timeouts apply.
func limitBodyRead(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if d > 0 && r.Body != nil && r.Body != http.NoBody {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
	}
}

// authorized checks the Bearer token: signed with an access key, unexpired,
// with aud naming this request's URL (with or without its query, which the
// SDKs include). On failure it answers 401.
func (h *handler) authorized(rq *request) bool {
	auth := rq.r.Header.Get("Authorization")
	if len(auth) < 7 || !strings.EqualFold(auth[:7], "bearer ") {
		rq.fail(http.StatusUnauthorized, "Error.Unauthorized", "an Authorization: Bearer access token is required", "")
		return false
	}
	endpoint := restauth.Endpoint(h.svc)
	err := restauth.ValidateToken(h.svc, strings.TrimSpace(auth[7:]), func(aud string) bool {
		return audienceMatches(aud, rq.r, endpoint)
	})
	if err != nil {
		rq.fail(http.StatusUnauthorized, "Error.Unauthorized", err.Error(), "")
		return false
	}
	return true
}

// audienceMatches: aud is the request URL (http or https), with or without
// its query; the host is the request's or the configured endpoint's; paths
// compare unescaped, case-insensitively, without a trailing slash. Query
// values do not scope access (rest-api.md §2.1).
func audienceMatches(aud string, r *http.Request, endpoint string) bool {
	u, err := url.Parse(strings.TrimSpace(aud))
	if err != nil {
		return false
	}
	if s := strings.ToLower(u.Scheme); s != "http" && s != "https" {
		return false
	}
	ep, _ := url.Parse(endpoint)
	if !strings.EqualFold(u.Host, r.Host) && (ep == nil || !strings.EqualFold(u.Host, ep.Host)) {
		return false
	}
	want, err := url.PathUnescape(r.URL.EscapedPath())
	if err != nil {
		return false
	}
	return strings.EqualFold(strings.TrimRight(u.Path, "/"), strings.TrimRight(want, "/"))
}

// pathSegments splits the path after /api/ and decodes each segment,
// except %2F, which stays the three characters "%2F" (as ASP.NET Core and
// the emulator do), so that a '/' in a user id survives the trip.
func pathSegments(escaped string) ([]string, bool) {
	i := strings.Index(escaped, "/api/")
	if i < 0 {
		return nil, false
	}
	raw := strings.Split(strings.TrimSuffix(escaped[i+len("/api/"):], "/"), "/")
	segs := make([]string, len(raw))
	for k, s := range raw {
		parts := strings.Split(s, "%2F")
		if len(parts) == 1 {
			parts = strings.Split(s, "%2f")
		}
		for j, p := range parts {
			d, err := url.PathUnescape(p)
			if err != nil {
				return nil, false
			}
			parts[j] = d
		}
		segs[k] = strings.Join(parts, "%2F")
		if segs[k] == "" {
			return nil, false
		}
	}
	return segs, true
}
