package livetrace

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"
)

//go:embed web
var web embed.FS

// static are the page's files, by the last segment of the request path.
var static = map[string]struct{ file, contentType string }{
	"":           {"web/index.html", "text/html; charset=utf-8"},
	"index.html": {"web/index.html", "text/html; charset=utf-8"},
	"app.js":     {"web/app.js", "text/javascript; charset=utf-8"},
	"style.css":  {"web/style.css", "text/css; charset=utf-8"},
}

// Handler serves the page (public: it holds no data) and, on "events",
// the stream (a live trace token required), under any prefix; mount it at
// Path. The stream is Server-Sent Events over a GET with an Authorization
// header, which the page reads with fetch (EventSource cannot send one):
// one "data: {json}" event per line of the trace, the first of kind
// "ready", and a comment every Options.KeepAlive. Query "hub" keeps one
// hub's events only.
func (t *Trace) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			// No request here has a body; one left unread would hold the
			// connection while net/http drains it after the handler.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
			w.Header().Set("Connection", "close")
			http.Error(w, "a request body is not expected", http.StatusBadRequest)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		h := w.Header()
		// No inline script, nothing from elsewhere, no framing, and the
		// address (its fragment aside, never sent) kept from other sites.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if name == "events" {
			t.serveEvents(w, r)
			return
		}
		f, ok := static[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		b, _ := web.ReadFile(f.file)
		h.Set("Content-Type", f.contentType)
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	})
}

// serveEvents streams the trace to one page until the request ends, the
// token expires, or the Trace is closed.
func (t *Trace) serveEvents(w http.ResponseWriter, r *http.Request) {
	exp, err := t.authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="livetrace"`)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	v := &viewer{hub: r.URL.Query().Get("hub"), events: make(chan *event, t.opts.Buffer)}
	if !t.addViewer(v) {
		http.Error(w, "live trace is closed", http.StatusServiceUnavailable)
		return
	}
	defer t.removeViewer(v)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // a proxy that buffers would hold every line
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	rc := http.NewResponseController(w)
	// A write's deadline: writeTimeout, or closeWriteTimeout once the
	// Trace is closed, which also cuts short a write already waiting (a
	// page that stopped reading would hold it for writeTimeout).
	var (
		wmu      sync.Mutex
		closing  bool
		finished bool
	)
	stopWatch := context.AfterFunc(t.closing, func() {
		wmu.Lock()
		defer wmu.Unlock()
		if !finished {
			closing = true
			_ = rc.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
		}
	})
	defer func() {
		stopWatch()
		wmu.Lock()
		defer wmu.Unlock()
		finished = true
		_ = rc.SetWriteDeadline(time.Time{}) // the connection may serve another request
	}()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	add := func(ev *event) {
		buf.WriteString("data: ")
		_ = enc.Encode(ev) // ends with the line's \n
		buf.WriteByte('\n')
	}
	// send writes what buf holds and flushes it: each event reaches the
	// page without waiting for the next (those already queued go along).
	send := func() bool {
		wmu.Lock()
		if closing {
			_ = rc.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
		} else {
			_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		}
		wmu.Unlock()
		_, err := w.Write(buf.Bytes())
		buf.Reset()
		return err == nil && rc.Flush() == nil
	}
	// dropped tells the page how many events it lost since it was last
	// told; they were lost after those it has.
	dropped := func() {
		if n := v.dropped.Swap(0); n > 0 {
			add(&event{Time: time.Now(), Kind: kindDropped, Dropped: n})
		}
	}

	add(&event{Time: time.Now(), Kind: kindReady, Hub: v.hub, Buffer: t.opts.Buffer, Expires: &exp})
	if !send() {
		return
	}
	keepAlive := time.NewTicker(t.opts.KeepAlive)
	defer keepAlive.Stop()
	expiry := time.NewTimer(time.Until(exp))
	defer expiry.Stop()
	for {
		select {
		case ev := <-v.events:
			add(ev)
			for more := true; more && buf.Len() < 64<<10; {
				select {
				case ev := <-v.events:
					add(ev)
				default:
					more = false
				}
			}
			dropped()
		case <-keepAlive.C:
			dropped()
			buf.WriteString(": keep-alive\n\n")
		case <-expiry.C:
			add(&event{Time: time.Now(), Kind: kindExpired})
			send()
			return
		case <-t.done:
			add(&event{Time: time.Now(), Kind: kindClosed})
			send()
			return
		case <-r.Context().Done():
			return
		}
		if !send() {
			return
		}
	}
}
