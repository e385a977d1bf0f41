package livetrace

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// TestRESTHubOfHostilePathIsBounded: a REST request needs no token to be
// traced, so its hub segment is anyone's: one that is no hub name (too
// long, or markup) must not become the event's hub, which every page
// shows, filters on and keeps in its list of hubs; and the event stays
// small whatever the path.
func TestRESTHubOfHostilePathIsBounded(t *testing.T) {
	e := newEnv(t, Options{})
	s := e.open("")
	long := strings.Repeat("a", 40<<10) // under the test reader's line limit
	for _, hub := range []string{long, "%3Cimg%20src=x%20onerror=alert(1)%3E", "%FF%FEchat"} {
		u := e.srv.URL + "/api/hubs/" + hub + "/:send?api-version=2024-12-01"
		if st := e.restWith(http.MethodPost, u, "x", ""); st < 400 {
			t.Fatalf("unauthenticated send: %d", st)
		}
		ev := s.expect(kindREST)
		if ev.Hub != "" {
			t.Errorf("hub of %.40q…: %d bytes %.60q, want none (no hub has that name)", hub, len(ev.Hub), ev.Hub)
		}
		if len(ev.Path) > maxPath+len("…") || !utf8.ValidString(ev.Path) {
			t.Errorf("path of %d bytes", len(ev.Path))
		}
	}
	if raw := s.rawText(); len(raw) > 8<<10 {
		t.Errorf("the stream carried %d bytes for three small events", len(raw))
	}
}

// stuckWriter is the ResponseWriter of a page that stopped reading: after
// the first write (the ready event), a Write blocks until its write
// deadline passes, as a connection's does.
type stuckWriter struct {
	h       http.Header
	mu      sync.Mutex
	dl      time.Time
	wake    chan struct{} // a new deadline
	writes  int
	blocked chan struct{} // closed when a Write blocks
	abort   chan struct{} // the test's end
}

func (w *stuckWriter) Header() http.Header             { return w.h }
func (w *stuckWriter) WriteHeader(int)                 {}
func (w *stuckWriter) FlushError() error               { return nil }
func (w *stuckWriter) Flush()                          {}
func (w *stuckWriter) SetReadDeadline(time.Time) error { return nil }

func (w *stuckWriter) SetWriteDeadline(dl time.Time) error {
	w.mu.Lock()
	w.dl = dl
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	first := w.writes == 1
	w.mu.Unlock()
	if first {
		return len(p), nil
	}
	select {
	case <-w.blocked:
	default:
		close(w.blocked)
	}
	for {
		w.mu.Lock()
		dl := w.dl
		w.mu.Unlock()
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, os.ErrDeadlineExceeded
		}
		var timer <-chan time.Time
		tm := time.NewTimer(time.Until(dl))
		if !dl.IsZero() {
			timer = tm.C
		}
		select {
		case <-timer:
		case <-w.wake:
		case <-w.abort:
			tm.Stop()
			return 0, os.ErrDeadlineExceeded
		}
		tm.Stop()
	}
}

// TestCloseEndsAStuckStream: Close ends every stream, that of a page which
// stopped reading too, soon: not after the 30 s write timeout, which
// cmd/webpubsub's shutdown (10 s grace by default) would wait for and fail.
func TestCloseEndsAStuckStream(t *testing.T) {
	trace, err := New(Options{AccessKey: key, Buffer: 4})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := trace.Token(time.Hour)
	w := &stuckWriter{h: http.Header{}, wake: make(chan struct{}, 1), blocked: make(chan struct{}), abort: make(chan struct{})}
	r := httptest.NewRequest(http.MethodGet, Path+"events", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		trace.Handler().ServeHTTP(w, r)
	}()
	defer func() { close(w.abort); <-ended }()

	waitUntil(t, "the viewer is registered", trace.watched)
	trace.MessageSent(pubsub.MessageEvent{Hub: "chat", Type: "sendToAll", Bytes: 1, Recipients: 1})
	select {
	case <-w.blocked:
	case <-time.After(wstest.WaitFor):
		t.Fatal("the stream wrote no event")
	}
	trace.Close()
	select {
	case <-ended:
	case <-time.After(wstest.WaitFor):
		t.Fatalf("the stream of a page that stopped reading outlived Close by %v", wstest.WaitFor)
	}
}
