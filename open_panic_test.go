package pubsub_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// panicOnOpenedObserver panics when told a connection opened: an
// application's observer (observers are not guarded), called from
// conn.opened.
type panicOnOpenedObserver struct{}

func (panicOnOpenedObserver) ConnectionChanged(ev pubsub.ConnectionEvent) {
	if ev.Kind == pubsub.ConnectionOpened {
		panic("observer panicked on opened")
	}
}
func (panicOnOpenedObserver) MessageReceived(pubsub.MessageEvent) {}
func (panicOnOpenedObserver) MessageSent(pubsub.MessageEvent)     {}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A panic while a connection opens is logged with the stack of the panic,
// so that the application learns which of its calls panicked: opening runs
// on a goroutine of its own, and its panic is raised again on the read
// loop with that stack (found in review, when the read loop's was logged).
func TestPanicWhileOpeningLogsWhereItHappened(t *testing.T) {
	var logs lockedBuffer
	e := newEnv(t, pubsub.Config{
		Observers: []pubsub.Observer{panicOnOpenedObserver{}},
		Logger:    slog.New(slog.NewTextHandler(&logs, nil)),
	})
	c := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "u"}), nil, "json.webpubsub.azure.v1")
	if info, _ := c.ExpectClose(); info.Code != 1011 {
		t.Fatalf("close %+v, want 1011", info)
	}
	out := logs.String()
	i := strings.Index(out, "recovered a panic")
	if i < 0 {
		t.Fatalf("no panic logged:\n%s", out)
	}
	line := out[i:]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	if !strings.Contains(line, "panicOnOpenedObserver.ConnectionChanged") {
		t.Fatalf("the panic's stack does not name the observer that panicked:\n%s", line)
	}
}
