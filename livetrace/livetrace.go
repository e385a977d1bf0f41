// Package livetrace is the service's Live Trace tool, like the Azure
// portal's: a web page that shows, as they happen, the connectivity logs
// (connections opened, closed, detached, recovered), the messaging logs
// (messages received from clients and fanned out to them) and the REST
// request logs of one node. It owns that page (static files embedded in the
// binary), the event stream behind it, and the tokens that open the stream.
//
// A Trace is a pubsub.Observer (put it in Config.Observers) and a REST
// middleware (wrap the service's handler with Middleware); Handler serves
// the page and the stream, mounted at Path. What it shows is metadata only:
// sizes, names and ids, never a message's data, a token or a key.
//
// With no page open, an event costs an atomic load. With pages open, each
// event is queued to every page without waiting: a page that does not keep
// up loses events (it is told how many), and never slows the service.
package livetrace

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/statuswriter"
	"github.com/embedwps/pubsub/rest"
)

// Path is where a server mounts Handler; URL links there.
const Path = "/livetrace/"

// Defaults of Options.
const (
	DefaultBuffer    = 1024
	DefaultKeepAlive = 15 * time.Second
)

// Errors of New and Token.
var (
	ErrNoAccessKey   = errors.New("livetrace: an access key is required")
	ErrTokenLifetime = errors.New("livetrace: a token's lifetime must be positive and at most pubsub.MaxTokenLifetime")
)

// Options configure a Trace. Only AccessKey is required.
type Options struct {
	// AccessKey and SecondaryAccessKey are the service's keys (the same
	// as pubsub.Config's): the primary signs viewer tokens, either
	// verifies them, so that rotating keys works as for clients.
	AccessKey          string
	SecondaryAccessKey string
	// ClockSkew is the leeway for a token's exp and iat. Default
	// pubsub.DefaultClockSkew.
	ClockSkew time.Duration
	// Buffer is how many events wait for one page before it loses the
	// next ones. Default DefaultBuffer.
	Buffer int
	// KeepAlive is how often an idle stream sends a comment line, so that
	// proxies and the browser see it alive. Default DefaultKeepAlive.
	KeepAlive time.Duration
}

// writeTimeout bounds each write to a page: a page whose connection takes
// longer has stopped reading, and is disconnected rather than hold a
// goroutine for ever.
const writeTimeout = 30 * time.Second

// closeWriteTimeout bounds the writes to a page once the Trace is closed,
// a write already waiting included: a page that reads gets its "closed"
// event, one that stopped reading does not hold up a shutdown.
const closeWriteTimeout = time.Second

// Trace records what a Service does and streams it to the open pages.
type Trace struct {
	opts Options
	keys [][]byte

	// viewers is the open pages, copied on write; nil when there is none,
	// which is the one check an event makes then.
	viewers atomic.Pointer[[]*viewer]
	mu      sync.Mutex // serialises changes of viewers and closing
	done    chan struct{}
	closed  bool
	// closing is cancelled by Close, like done, for context.AfterFunc.
	closing context.Context
	cancel  context.CancelFunc
}

var _ pubsub.Observer = (*Trace)(nil)

// New returns a Trace for a service with the keys of opts.
func New(opts Options) (*Trace, error) {
	if opts.AccessKey == "" {
		return nil, ErrNoAccessKey
	}
	if opts.ClockSkew <= 0 {
		opts.ClockSkew = pubsub.DefaultClockSkew
	}
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	t := &Trace{opts: opts, keys: [][]byte{[]byte(opts.AccessKey)}, done: make(chan struct{})}
	t.closing, t.cancel = context.WithCancel(context.Background())
	if opts.SecondaryAccessKey != "" {
		t.keys = append(t.keys, []byte(opts.SecondaryAccessKey))
	}
	return t, nil
}

// Close ends every stream and refuses new ones. The page's files are
// still served.
func (t *Trace) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.done)
		t.cancel()
	}
}

// URL returns the page's address on endpoint (the service's public base
// URL) with a token valid for ttl. The token is in the fragment, which a
// browser never sends: it stays out of request lines and access logs.
func (t *Trace) URL(endpoint string, ttl time.Duration) (string, error) {
	tok, err := t.Token(ttl)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(endpoint, "/") + Path + "#access_token=" + url.QueryEscape(tok), nil
}

// A viewer is one open stream.
type viewer struct {
	hub     string      // only this hub's events (case-insensitive); "" all
	events  chan *event // bounded: a full one drops
	dropped atomic.Uint64
}

func (t *Trace) addViewer(v *viewer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	var vs []*viewer
	if p := t.viewers.Load(); p != nil {
		vs = append(vs, *p...)
	}
	vs = append(vs, v)
	t.viewers.Store(&vs)
	return true
}

func (t *Trace) removeViewer(v *viewer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.viewers.Load()
	if p == nil {
		return
	}
	vs := make([]*viewer, 0, len(*p))
	for _, o := range *p {
		if o != v {
			vs = append(vs, o)
		}
	}
	if len(vs) == 0 {
		t.viewers.Store(nil)
	} else {
		t.viewers.Store(&vs)
	}
}

// watched reports whether any page is open: the cost of an event when
// none is.
func (t *Trace) watched() bool { return t.viewers.Load() != nil }

// publish queues ev to every page that wants it, never waiting.
func (t *Trace) publish(ev *event) {
	p := t.viewers.Load()
	if p == nil {
		return
	}
	for _, v := range *p {
		if v.hub != "" && !strings.EqualFold(v.hub, ev.Hub) {
			continue
		}
		select {
		case v.events <- ev:
		default:
			v.dropped.Add(1)
		}
	}
}

// ConnectionChanged records a connection event (pubsub.Observer).
func (t *Trace) ConnectionChanged(e pubsub.ConnectionEvent) {
	if !t.watched() {
		return
	}
	ev := &event{
		Time: time.Now(), Kind: "connection." + e.Kind.String(), Hub: e.Hub,
		ConnectionID: e.ConnectionID, UserID: e.UserID, Subprotocol: e.Subprotocol,
	}
	if e.Kind == pubsub.ConnectionClosed {
		ev.CloseReason, ev.Code, ev.Reason = string(e.CloseReason), e.Code, e.Reason
		ev.DurationMS = millis(e.Duration)
	}
	t.publish(ev)
}

// MessageReceived records a message from a client (pubsub.Observer).
func (t *Trace) MessageReceived(e pubsub.MessageEvent) {
	if !t.watched() {
		return
	}
	t.publish(&event{
		Time: time.Now(), Kind: kindReceived, Hub: e.Hub, ConnectionID: e.ConnectionID,
		Type: e.Type, Group: e.Group, Event: e.Event, Bytes: e.Bytes,
	})
}

// MessageSent records a fan-out (pubsub.Observer).
func (t *Trace) MessageSent(e pubsub.MessageEvent) {
	if !t.watched() {
		return
	}
	t.publish(&event{
		Time: time.Now(), Kind: kindSent, Hub: e.Hub,
		Type: e.Type, Group: e.Group, Bytes: e.Bytes, Recipients: e.Recipients,
	})
}

// Middleware records the REST requests (paths under /api/) that next
// answers: operation (rest.Operation), hub, method, path, status and
// duration; never a query, a header or a body. Wrap the handler of
// rest.NewServiceHandler with it. Other requests, and every request while
// no page is open, pass straight through.
func (t *Trace) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.EscapedPath()
		if !t.watched() || !strings.HasPrefix(path, "/api/") {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := statuswriter.New(w)
		next.ServeHTTP(sw, r)
		status := sw.Status()
		op, hub := rest.Operation(r)
		// Copies: a queued event holds nothing of the request (whose URI,
		// query included, these may be substrings of).
		if len(path) > maxPath {
			path = path[:maxPath] + "…"
		} else {
			path = strings.Clone(path)
		}
		// Stamped when answered, as the events it caused were before it.
		t.publish(&event{
			Time: time.Now(), Kind: kindREST, Hub: strings.Clone(hub), Operation: op,
			Method: r.Method, Path: path, Status: status, DurationMS: millis(time.Since(start)),
		})
	})
}

// maxPath bounds a REST path in the trace: ids and group names are short,
// a hostile path need not be kept whole.
const maxPath = 512

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
