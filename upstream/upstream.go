package upstream

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/puzpuzpuz/xsync/v3"

	"github.com/embedwps/pubsub"
)

// Options tune the upstream; the zero value is usable but for Origin and
// AccessKeys, which a real deployment sets.
type Options struct {
	// AccessKeys sign every request (ce-signature), primary first.
	AccessKeys []string
	// Origin is the service's host name, sent as WebHook-Request-Origin.
	// Default "localhost".
	Origin string
	// Timeout bounds one blocking call (connect, user events) and one
	// attempt of a non-blocking one. Default 30 s.
	Timeout time.Duration
	// MaxConcurrent bounds the calls in flight to one event handler of one
	// hub, whatever host it is on. Default 64. A Client of the
	// application's own should not cap connections per host, which would
	// let one hub's hung handler stall the other hubs on that host.
	MaxConcurrent int
	// Workers deliver the non-blocking events (connected, disconnected,
	// joined, left) per event handler of a hub, in order per connection.
	// Default 4.
	Workers int
	// QueueSize bounds the non-blocking events waiting per worker; past it
	// they are dropped and logged. Default 1024.
	QueueSize int
	// RetryDelays are the waits before retrying a non-blocking event that
	// failed with 408, 5xx or a network error. Default 1 s, 3 s, 5 s (the
	// emulator's). Once Shutdown has begun they are not waited out: see
	// Shutdown.
	RetryDelays []time.Duration
	// ValidationRetry is how long a failed abuse-protection check is
	// remembered before it is tried again. Default 10 s.
	ValidationRetry time.Duration
	// Client sends the requests. Default: a client of its own. Redirects
	// are never followed (New uses a copy of Client that refuses them).
	Client *http.Client
	// Logger receives failures. Default slog.Default().
	Logger *slog.Logger
}

// Handler is a pubsub.EventHandler that calls CloudEvents HTTP upstreams.
type Handler struct {
	cfg  Config
	opts Options
	log  *slog.Logger

	targets *xsync.MapOf[string, []*target] // per hub (lower case)
	events  *xsync.MapOf[string, *atomic.Uint64]

	mu       sync.Mutex // guards closed and the queues' lifetime
	closed   bool
	stopping chan struct{} // closed (under mu) when Shutdown begins: no more retry waits
	wg       sync.WaitGroup
	ctx      context.Context // cancelled when Shutdown gives up waiting
	cancel   context.CancelFunc
}

var (
	_ pubsub.EventHandler         = (*Handler)(nil)
	_ pubsub.AnonymousPolicy      = (*Handler)(nil)
	_ pubsub.GroupPresenceHandler = (*Handler)(nil)
)

// New returns a Handler for cfg.
func New(cfg Config, opts Options) (*Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if opts.Origin == "" {
		opts.Origin = "localhost"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 64
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	if opts.RetryDelays == nil {
		opts.RetryDelays = []time.Duration{time.Second, 3 * time.Second, 5 * time.Second}
	}
	if opts.ValidationRetry <= 0 {
		opts.ValidationRetry = 10 * time.Second
	}
	client := http.Client{
		// No MaxConnsPerHost: a per-host cap is shared by every hub and
		// handler on that host, so one hung handler would stall them all.
		// Each target's sem bounds its own calls instead; idle connections
		// are kept up to that bound so a busy handler reuses them.
		Transport: &http.Transport{MaxIdleConnsPerHost: opts.MaxConcurrent},
	}
	if opts.Client != nil {
		client = *opts.Client // a copy: the application's client is left as it is
	}
	// A redirect would carry ce-signature, the user and connection ids and
	// the event to another host: the 3xx is the answer, and a failure.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	opts.Client = &client
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Handler{
		cfg:      cfg,
		opts:     opts,
		log:      opts.Logger,
		targets:  xsync.NewMapOf[string, []*target](),
		events:   xsync.NewMapOf[string, *atomic.Uint64](),
		stopping: make(chan struct{}),
		ctx:      ctx,
		cancel:   cancel,
	}, nil
}

// target is one event handler of one hub: its bound on concurrent calls,
// its abuse-protection state, and its workers for non-blocking events.
type target struct {
	hub      string
	settings EventHandlerSettings
	presence presenceFilter
	sem      chan struct{}

	validMu   sync.Mutex
	validated bool
	failedAt  time.Time
	failure   error

	startOnce sync.Once
	queues    []chan asyncEvent

	// The events given up after Shutdown began, counted by the workers and
	// read by Shutdown once they have stopped: failed, their last attempt
	// failed; cancelled, queued or in flight when Shutdown's ctx ended.
	failed, cancelled atomic.Int64
}

type asyncEvent struct {
	kind   string // "connected", "disconnected", "joined" or "left"
	conn   pubsub.ConnectionContext
	id     uint64
	reason string
	group  string // of "joined" and "left"
}

func (h *Handler) hubTargets(hub string) []*target {
	hub = strings.ToLower(hub)
	ts, _ := h.targets.LoadOrCompute(hub, func() []*target {
		s, _ := h.cfg.settings(hub)
		out := make([]*target, len(s.EventHandlers))
		for i, eh := range s.EventHandlers {
			out[i] = &target{hub: hub, settings: eh, presence: eh.presenceFilter(), sem: make(chan struct{}, h.opts.MaxConcurrent)}
		}
		return out
	})
	return ts
}

// system returns the first handler of hub that takes system event name.
func (h *Handler) system(hub, name string) *target {
	for _, t := range h.hubTargets(hub) {
		if t.settings.takesSystem(name) {
			return t
		}
	}
	return nil
}

// AllowAnonymous implements pubsub.AnonymousPolicy: the hub's
// anonymousConnectPolicy.
func (h *Handler) AllowAnonymous(hub string) bool {
	s, _ := h.cfg.settings(hub)
	return strings.EqualFold(s.AnonymousConnectPolicy, "allow")
}

// eventID returns the connection's next ce-id: 0 for connect, then 1, 2, …
func (h *Handler) eventID(c pubsub.ConnectionContext) uint64 {
	n, _ := h.events.LoadOrCompute(c.Hub+"/"+c.ConnectionID, func() *atomic.Uint64 { return new(atomic.Uint64) })
	return n.Add(1) - 1
}

// Sign computes ce-signature: sha256=<hex HMAC-SHA256(key, connectionId)>
// for each key, joined with commas (event-handler.md §4.1).
func Sign(connectionID string, keys []string) string {
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		m := hmac.New(sha256.New, []byte(k))
		m.Write([]byte(connectionID))
		parts = append(parts, "sha256="+hex.EncodeToString(m.Sum(nil)))
	}
	return strings.Join(parts, ",")
}

// event is one CloudEvents request.
type event struct {
	ceType      string
	name        string
	id          uint64
	conn        pubsub.ConnectionContext
	contentType string
	body        []byte
	maxReply    int64 // the largest reply body read
	// metadata is a user event's client metadata, sent as
	// x-webpubsub-metadata-{key} headers (spec client-protocol §6.1).
	metadata map[string]string
}

// The largest reply bodies read: a connect reply (the emulator's limit); a
// user event's, which goes to the client as one message and so is held to
// the 1 MiB a client takes (a larger one fails the event rather than the
// client); and, for connected and disconnected, what is ignored but read so
// the connection can be reused.
const (
	maxConnectReply = 16 << 20
	maxUserReply    = 1 << 20
	maxIgnoredReply = 64 << 10
)

// call POSTs an event to t, bounded by t's concurrency and opts.Timeout.
// When the upstream answered but its body could not be read (too large,
// cut, or not finished within the timeout), the response comes back with
// the error: a 2xx means the application took the event all the same.
func (h *Handler) call(ctx context.Context, t *target, ev event) (*http.Response, []byte, error) {
	if err := h.validate(ctx, t); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	select {
	case t.sem <- struct{}{}:
		defer func() { <-t.sem }()
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("too many calls in flight to %s: %w", redactURL(t.settings.URLTemplate), ctx.Err())
	}
	u := resolve(t.settings.URLTemplate, ev.conn.Hub, ev.name)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(ev.body))
	if err != nil {
		return nil, nil, redactErr(err)
	}
	hd := req.Header
	hd["Content-Type"] = []string{ev.contentType}
	hd["WebHook-Request-Origin"] = []string{h.opts.Origin}
	hd["ce-specversion"] = []string{"1.0"}
	hd["ce-awpsversion"] = []string{"1.0"}
	hd["ce-type"] = []string{ev.ceType}
	hd["ce-source"] = []string{"/hubs/" + ev.conn.Hub + "/client/" + ev.conn.ConnectionID}
	hd["ce-id"] = []string{strconv.FormatUint(ev.id, 10)}
	hd["ce-time"] = []string{time.Now().UTC().Format("2006-01-02T15:04:05Z")}
	if len(h.opts.AccessKeys) > 0 {
		hd["ce-signature"] = []string{Sign(ev.conn.ConnectionID, h.opts.AccessKeys)}
	}
	if ev.conn.UserID != "" {
		hd["ce-userId"] = []string{ev.conn.UserID}
	}
	hd["ce-connectionId"] = []string{ev.conn.ConnectionID}
	hd["ce-hub"] = []string{ev.conn.Hub}
	hd["ce-eventName"] = []string{ev.name}
	if ev.conn.Subprotocol != "" {
		hd["ce-subprotocol"] = []string{ev.conn.Subprotocol}
	}
	if ev.conn.ConnectionState != "" {
		hd["ce-connectionState"] = []string{ev.conn.ConnectionState}
	}
	for k, v := range ev.metadata {
		hd["x-webpubsub-metadata-"+strings.ToLower(k)] = []string{v}
	}
	resp, err := h.opts.Client.Do(req)
	if err != nil {
		return nil, nil, redactErr(err) // it may reach the client, in an ack
	}
	defer resp.Body.Close()
	// The body is read under ctx too: one that never ends fails at the
	// timeout.
	body, err := io.ReadAll(io.LimitReader(resp.Body, ev.maxReply+1))
	if err != nil {
		return resp, nil, fmt.Errorf("reading the %s reply: %w", ev.name, err)
	}
	if int64(len(body)) > ev.maxReply {
		return resp, nil, fmt.Errorf("the %s reply is larger than %s", ev.name, sizeOf(ev.maxReply))
	}
	return resp, body, nil
}

func sizeOf(n int64) string {
	if n%(1<<20) == 0 {
		return strconv.FormatInt(n>>20, 10) + " MiB"
	}
	return strconv.FormatInt(n>>10, 10) + " KiB"
}

// validate runs the abuse-protection check of t (event-handler.md §3) before
// its first use: OPTIONS with WebHook-Request-Origin, which must be answered
// 2xx with WebHook-Allowed-Origin "*" or our origin. A failure is
// remembered for ValidationRetry, and logged.
func (h *Handler) validate(ctx context.Context, t *target) error {
	t.validMu.Lock()
	defer t.validMu.Unlock()
	if t.validated {
		return nil
	}
	if t.failure != nil && time.Since(t.failedAt) < h.opts.ValidationRetry {
		return t.failure
	}
	err := h.preflight(ctx, t)
	if err != nil && ctx.Err() != nil {
		// The caller gave up (a client left during its handshake): that says
		// nothing of the upstream, so the next call checks again.
		return err
	}
	if err != nil {
		t.failure, t.failedAt = err, time.Now()
		h.log.Error("the upstream failed abuse protection: no event is sent to it",
			"hub", t.hub, "urlTemplate", redactURL(t.settings.URLTemplate), "err", err)
		return err
	}
	t.validated, t.failure = true, nil
	return nil
}

// ErrNotValidated wraps abuse-protection failures.
var ErrNotValidated = errors.New("upstream: abuse protection failed")

func (h *Handler) preflight(ctx context.Context, t *target) error {
	ctx, cancel := context.WithTimeout(ctx, min(h.opts.Timeout, 10*time.Second))
	defer cancel()
	u := resolve(t.settings.URLTemplate, t.hub, "validate")
	for _, method := range []string{http.MethodOptions, http.MethodGet} {
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotValidated, redactErr(err))
		}
		req.Header["WebHook-Request-Origin"] = []string{h.opts.Origin}
		req.Header["ce-awpsversion"] = []string{"1.0"}
		resp, err := h.opts.Client.Do(req)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotValidated, redactErr(err))
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound && method == http.MethodOptions {
			continue // the emulator falls back to GET
		}
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%w: AbuseProtectionResponseInvalidStatusCode: %s answered %d", ErrNotValidated, method, resp.StatusCode)
		}
		for _, v := range resp.Header.Values("WebHook-Allowed-Origin") {
			for _, o := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
				if o == "*" || strings.EqualFold(o, h.opts.Origin) {
					return nil
				}
			}
		}
		return fmt.Errorf("%w: AbuseProtectionResponseMissingAllowedOrigin: WebHook-Allowed-Origin does not allow %q", ErrNotValidated, h.opts.Origin)
	}
	return fmt.Errorf("%w: AbuseProtectionResponseInvalidStatusCode: OPTIONS and GET answered 404", ErrNotValidated)
}

// connectBody is the connect event's body (event-handler.md §5.1).
type connectBody struct {
	Claims             map[string][]string        `json:"claims"`
	Query              map[string][]string        `json:"query"`
	Headers            map[string][]string        `json:"headers"`
	Subprotocols       []string                   `json:"subprotocols"`
	ClientCertificates []pubsub.ClientCertificate `json:"clientCertificates"`
}

type connectReply struct {
	UserID      json.RawMessage `json:"userId"`
	Groups      []string        `json:"groups"`
	Roles       []string        `json:"roles"`
	Subprotocol string          `json:"subprotocol"`
}

// Connect implements pubsub.EventHandler: the blocking connect event.
//
// A connect the upstream refused, or did not answer, frees the connection's
// ce-id counter and is followed by no disconnected event. One it accepted
// (2xx) that is refused here all the same (a reply the service cannot use)
// frees the counter and queues a disconnected event, since the application
// believes the connection was made.
func (h *Handler) Connect(ctx context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
	t := h.system(req.Hub, "connect")
	if t == nil {
		return nil, pubsub.ErrNoEventHandler
	}
	c := req.ConnectionContext
	body, _ := json.Marshal(connectBody{
		Claims: req.Claims, Query: req.Query, Headers: req.Headers,
		Subprotocols: append([]string{}, req.Subprotocols...), ClientCertificates: append([]pubsub.ClientCertificate{}, req.ClientCertificates...),
	})
	resp, respBody, err := h.call(ctx, t, event{
		ceType: "azure.webpubsub.sys.connect", name: "connect", id: h.eventID(c),
		conn: c, contentType: "application/json; charset=utf-8", body: body, maxReply: maxConnectReply,
	})
	switch {
	case resp == nil:
		h.forget(c)
		h.log.Error("connect event failed; refusing the connection", "hub", req.Hub, "err", err)
		return nil, pubsub.RejectConnect(http.StatusInternalServerError, "the connect event handler failed")
	case resp.StatusCode/100 != 2:
		h.forget(c)
		status := resp.StatusCode
		if status < 400 || status > 499 {
			// A 5xx, or a 3xx (redirects are not followed), is a
			// service-side failure, not the client's.
			status = http.StatusInternalServerError
		}
		reason := "refused by the connect event handler (" + strconv.Itoa(resp.StatusCode) + ")"
		if resp.StatusCode/100 == 3 {
			reason = "the connect event handler answered a redirect (" + strconv.Itoa(resp.StatusCode) + "), which is not followed"
		}
		h.log.Info("connect refused by the upstream", "hub", req.Hub, "status", resp.StatusCode, "reason", reason)
		return nil, pubsub.RejectConnect(status, reason)
	}
	out, reason, detail := connectReplyOf(resp, respBody, err)
	if reason != "" {
		h.log.Error("refusing a connection the connect event handler accepted: "+reason, "hub", req.Hub, "connectionId", c.ConnectionID, "err", detail)
		if out.ConnectionState != nil {
			c.ConnectionState = *out.ConnectionState // the state the application set, as later events would carry it
		}
		h.Disconnected(ctx, c, "the service refused the connection: "+reason)
		return nil, pubsub.RejectConnect(http.StatusInternalServerError, reason)
	}
	return out, nil
}

// connectReplyOf reads a 2xx connect reply whose body was read with err. A
// reply the service cannot use gives a reason (for the client and the
// application) and the detail (for the log).
func connectReplyOf(resp *http.Response, body []byte, err error) (out *pubsub.ConnectResponse, reason string, detail error) {
	out = &pubsub.ConnectResponse{ConnectionState: stateOf(resp)}
	if err != nil {
		return out, "the connect event handler's reply could not be read", err
	}
	b := bytes.TrimSpace(body)
	if len(b) == 0 || bytes.Equal(b, []byte("null")) {
		return out, "", nil
	}
	var r connectReply
	if err := json.Unmarshal(b, &r); err != nil {
		return out, "the connect event handler answered invalid JSON", err
	}
	if len(r.UserID) > 0 && string(r.UserID) != "null" {
		var u string
		if err := json.Unmarshal(r.UserID, &u); err != nil {
			return out, "the connect event handler answered a userId that is not a string", err
		}
		out.UserID = &u
	}
	if len(r.Groups) > 0 { // an empty array keeps the token's groups
		out.Groups = r.Groups
	}
	out.Roles = r.Roles // [] removes the token's roles
	out.Subprotocol = r.Subprotocol
	return out, "", nil
}

// stateOf reads ce-connectionState from a response: nil when absent (keep
// the state), else the new state (the last header wins).
func stateOf(resp *http.Response) *string {
	vs := resp.Header.Values("ce-connectionState")
	if len(vs) == 0 {
		return nil
	}
	s := vs[len(vs)-1]
	return &s
}

// UserEvent implements pubsub.EventHandler: a blocking user event, answered
// by the upstream's response.
func (h *Handler) UserEvent(ctx context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
	var t *target
	for _, c := range h.hubTargets(req.Hub) {
		if c.settings.takesUser(req.EventName) {
			t = c
			break
		}
	}
	if t == nil {
		return nil, pubsub.ErrNoEventHandler
	}
	resp, body, err := h.call(ctx, t, event{
		ceType: "azure.webpubsub.user." + req.EventName, name: req.EventName, id: h.eventID(req.ConnectionContext),
		conn: req.ConnectionContext, contentType: contentTypes[req.DataType], body: req.Data, maxReply: maxUserReply,
		metadata: req.Metadata,
	})
	if resp != nil && resp.StatusCode/100 != 2 {
		h.log.Warn("user event answered an error", "hub", req.Hub, "event", req.EventName, "status", resp.StatusCode)
		return nil, fmt.Errorf("the %s event handler answered %d", req.EventName, resp.StatusCode)
	}
	if err != nil {
		h.log.Warn("user event failed", "hub", req.Hub, "event", req.EventName, "err", err)
		return nil, fmt.Errorf("the %s event handler failed: %w", req.EventName, err)
	}
	out := &pubsub.UserEventResponse{ConnectionState: stateOf(resp)}
	if len(body) > 0 {
		t, err := dataTypeOf(resp.Header.Get("Content-Type"))
		if err != nil {
			return nil, err
		}
		out.DataType, out.Data = t, body
	}
	return out, nil
}

var contentTypes = map[pubsub.DataType]string{
	pubsub.DataTypeText:     "text/plain; charset=utf-8",
	pubsub.DataTypeJSON:     "application/json; charset=utf-8",
	pubsub.DataTypeBinary:   "application/octet-stream",
	pubsub.DataTypeProtobuf: "application/x-protobuf",
}

// dataTypeOf maps a response's Content-Type to the reply's data type; no
// Content-Type is text, as the emulator's code does.
func dataTypeOf(ct string) (pubsub.DataType, error) {
	if ct == "" {
		return pubsub.DataTypeText, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return 0, fmt.Errorf("the event handler answered Content-Type %q: %v", ct, err)
	}
	switch mt {
	case "text/plain":
		return pubsub.DataTypeText, nil
	case "application/json":
		return pubsub.DataTypeJSON, nil
	case "application/octet-stream":
		return pubsub.DataTypeBinary, nil
	case "application/x-protobuf":
		return pubsub.DataTypeProtobuf, nil
	}
	return 0, fmt.Errorf("the event handler answered unsupported Content-Type %q", mt)
}

// Connected implements pubsub.EventHandler: queued, delivered in order per
// connection by the handler's workers, never blocking the connection.
func (h *Handler) Connected(_ context.Context, c pubsub.ConnectionContext) {
	if t := h.system(c.Hub, "connected"); t != nil {
		h.enqueue(t, asyncEvent{kind: "connected", conn: c, id: h.eventID(c)})
	}
}

// Disconnected implements pubsub.EventHandler, like Connected.
func (h *Handler) Disconnected(_ context.Context, c pubsub.ConnectionContext, reason string) {
	if t := h.system(c.Hub, "disconnected"); t != nil {
		h.enqueue(t, asyncEvent{kind: "disconnected", conn: c, id: h.eventID(c), reason: reason})
	}
	h.forget(c)
}

// GroupJoined implements pubsub.GroupPresenceHandler: the joined event
// (azure.webpubsub.gp.joined), queued as connected is, for the first
// handler whose groupPresenceEvents take it.
func (h *Handler) GroupJoined(_ context.Context, ev pubsub.GroupPresenceEvent) {
	h.presence(ev, true)
}

// GroupLeft implements pubsub.GroupPresenceHandler, like GroupJoined.
func (h *Handler) GroupLeft(_ context.Context, ev pubsub.GroupPresenceEvent) {
	h.presence(ev, false)
}

func (h *Handler) presence(ev pubsub.GroupPresenceEvent, joined bool) {
	kind := "left"
	if joined {
		kind = "joined"
	}
	for _, t := range h.hubTargets(ev.Hub) {
		if t.presence.takes(joined, ev.Group) {
			h.enqueue(t, asyncEvent{kind: kind, conn: ev.ConnectionContext, id: h.eventID(ev.ConnectionContext), group: ev.Group})
			return
		}
	}
}

func (h *Handler) forget(c pubsub.ConnectionContext) { h.events.Delete(c.Hub + "/" + c.ConnectionID) }

// enqueue hands a non-blocking event to the worker of its connection, so
// that one connection's events keep their order and a dead upstream costs a
// bounded queue, not a goroutine per event.
func (h *Handler) enqueue(t *target, ev asyncEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	t.startOnce.Do(func() {
		t.queues = make([]chan asyncEvent, h.opts.Workers)
		for i := range t.queues {
			t.queues[i] = make(chan asyncEvent, h.opts.QueueSize)
			h.wg.Add(1)
			go h.work(t, t.queues[i])
		}
	})
	f := fnv.New32a()
	f.Write([]byte(ev.conn.ConnectionID))
	select {
	case t.queues[f.Sum32()%uint32(len(t.queues))] <- ev:
	default:
		h.log.Error("dropping a "+ev.kind+" event: the upstream is not keeping up", "hub", t.hub, "connectionId", ev.conn.ConnectionID)
	}
}

func (h *Handler) work(t *target, q chan asyncEvent) {
	defer h.wg.Done()
	for ev := range q { // closed by Shutdown once nothing more is queued
		if h.ctx.Err() != nil {
			t.cancelled.Add(1) // Shutdown's ctx ended: drain without calling out
			continue
		}
		h.deliver(t, ev)
	}
}

// stopped reports whether Shutdown has begun.
func (h *Handler) stopped() bool {
	select {
	case <-h.stopping:
		return true
	default:
		return false
	}
}

// deliver sends a non-blocking event, retrying 408, 5xx and network
// failures after RetryDelays; the same ce-id each time. Once Shutdown has
// begun an event gets at most one more attempt (see Shutdown), and one
// given up is counted for Shutdown's summary rather than logged here.
func (h *Handler) deliver(t *target, ev asyncEvent) {
	body, ceType := []byte("{}"), "azure.webpubsub.sys."+ev.kind
	switch ev.kind {
	case "disconnected":
		body, _ = json.Marshal(struct {
			Reason string `json:"reason"`
		}{ev.reason})
	case "joined", "left":
		// event-handler.md §5.4: what @azure/web-pubsub-express dispatches
		// to onGroupJoined / onGroupLeft.
		body, _ = json.Marshal(struct {
			Group string `json:"group"`
		}{ev.group})
		ceType = "azure.webpubsub.gp." + ev.kind
	}
	e := event{ceType: ceType, name: ev.kind, id: ev.id, conn: ev.conn,
		contentType: "application/json; charset=utf-8", body: body, maxReply: maxIgnoredReply}
	for attempt := 0; ; attempt++ {
		// An attempt begun after Shutdown is the event's last: checked
		// before the call, so that an event whose attempt failed just as
		// Shutdown began still gets its one more.
		last := h.stopped()
		resp, _, err := h.call(h.ctx, t, e)
		if resp != nil && resp.StatusCode/100 == 2 {
			return // the reply's body is ignored: an unreadable one is no failure
		}
		if h.ctx.Err() != nil {
			t.cancelled.Add(1)
			return
		}
		transient := resp == nil && !errors.Is(err, ErrNotValidated) ||
			resp != nil && (resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode >= 500)
		if !transient || attempt >= len(h.opts.RetryDelays) || last {
			if h.stopped() {
				t.failed.Add(1) // one line for all of them, at the end of Shutdown
				return
			}
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			h.log.Warn(ev.kind+" event failed", "hub", t.hub, "connectionId", ev.conn.ConnectionID, "status", status, "err", err)
			return
		}
		wait := time.NewTimer(h.opts.RetryDelays[attempt])
		select {
		case <-h.stopping: // retry at once: Shutdown is not kept waiting
		case <-wait.C:
		}
		wait.Stop()
	}
}

// Shutdown lets the workers deliver what is queued and stops them. The
// service calls it from its Shutdown.
//
// From the moment it begins, retry delays are no longer waited out, so that
// a dead upstream cannot hold shutdown for their sum: an event waiting to be
// retried is retried at once, and an attempt begun after Shutdown began is
// never retried. Each pending event so gets at most one more attempt. When
// ctx ends first, the attempts in flight are cancelled and what is still
// queued is dropped unsent. The events given up after Shutdown began are
// logged in one line, with their count per hub (no connection ids, bodies
// or keys); before it, each failure is logged as it happens.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true // enqueue checks it under mu: no send on a closed queue
	close(h.stopping)
	h.targets.Range(func(_ string, ts []*target) bool {
		for _, t := range ts {
			for _, q := range t.queues {
				close(q)
			}
		}
		return true
	})
	h.mu.Unlock()
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	h.cancel()
	<-done // the workers are gone: the counters are final
	h.logDropped()
	if tr, ok := h.opts.Client.Transport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
	return err
}

// maxHubsLogged bounds the per-hub counts in Shutdown's one line: a "*"
// handler may serve many hubs.
const maxHubsLogged = 16

// logDropped logs, in one line, the events given up since Shutdown began.
// Called once the workers have stopped.
func (h *Handler) logDropped() {
	type hubCount struct {
		hub string
		n   int64
	}
	var failed, cancelled int64
	var hubs []hubCount
	h.targets.Range(func(hub string, ts []*target) bool {
		var n int64
		for _, t := range ts {
			f, c := t.failed.Load(), t.cancelled.Load()
			failed, cancelled, n = failed+f, cancelled+c, n+f+c
		}
		if n > 0 {
			hubs = append(hubs, hubCount{hub, n})
		}
		return true
	})
	if failed+cancelled == 0 {
		return
	}
	// The hubs with most drops first; past maxHubsLogged, only how many more.
	slices.SortFunc(hubs, func(a, b hubCount) int {
		if a.n != b.n {
			return cmp.Compare(b.n, a.n)
		}
		return strings.Compare(a.hub, b.hub)
	})
	var perHub []any
	for _, c := range hubs[:min(len(hubs), maxHubsLogged)] {
		perHub = append(perHub, slog.Int64(c.hub, c.n))
	}
	args := []any{"dropped", failed + cancelled, "failed", failed, "cancelled", cancelled, slog.Group("droppedPerHub", perHub...)}
	if len(hubs) > maxHubsLogged {
		args = append(args, "otherHubs", len(hubs)-maxHubsLogged)
	}
	h.log.Warn("shutdown: dropped the pending events the upstream did not take", args...)
}
