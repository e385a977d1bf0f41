package pubsub

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/embedwps/pubsub/internal/wstest"
)

// panicOnConnected panics in the connected event, unguarded: it stands for
// a panic of the service's own code in OnOpen (readStarted).
type panicOnConnected struct {
	EventHandlerFuncs
	disconnected chan string
}

func (panicOnConnected) Connected(context.Context, ConnectionContext) { panic("in OnOpen") }
func (p panicOnConnected) Disconnected(_ context.Context, c ConnectionContext, reason string) {
	p.disconnected <- reason
}

// A panic in gws's OnOpen (readStarted) is recovered by readEnded: it is
// counted once, the connection is closed with 1011 and released, and every
// counter returns to zero.
func TestPanicInOnOpenEndsTheConnection(t *testing.T) {
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	s, err := New(Config{AccessKey: "primary-access-key-0123456789abcdef", Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	h := panicOnConnected{disconnected: make(chan string, 4)}
	s.handler = h // unguarded
	mux.Handle("/client/", s.ClientHandler())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}()
	u, err := s.ClientURL("chat", TokenOptions{UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	c := wstest.Dial(t, u, nil, "json.webpubsub.azure.v1")
	info, _ := c.ExpectClose()
	if info.Code != 1011 {
		t.Errorf("close %+v, want 1011", info)
	}
	select {
	case <-h.disconnected:
	case <-time.After(wstest.WaitFor):
		t.Fatal("no disconnected event")
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		st := s.Stats()
		if st.Connections == 0 && st.Hubs == 0 && st.BufferedBytes == 0 && st.InboundBytes == 0 {
			if st.Panics != 1 {
				t.Fatalf("Panics %d", st.Panics)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
