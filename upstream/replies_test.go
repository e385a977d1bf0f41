package upstream_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// userEvent sends event name with data "x" to hub chat.
func userEvent(h *upstream.Handler, name string) (*pubsub.UserEventResponse, error) {
	return h.UserEvent(context.Background(), &pubsub.UserEventRequest{
		ConnectionContext: pubsub.ConnectionContext{Hub: "chat", ConnectionID: "c1"},
		EventName:         name, DataType: pubsub.DataTypeText, Data: []byte("x"),
	})
}

// A user event's reply goes to the client as one message, and a client
// takes 1 MiB: a larger reply is the event's failure, not the client's end.
func TestUserEventReplyOver1MiBIsAnError(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		switch r.header.Get("ce-eventName") {
		case "at-limit":
			w.Write(bytes.Repeat([]byte("a"), 1<<20))
		case "over-limit":
			w.Write(bytes.Repeat([]byte("a"), 1<<20+1))
		case "small":
			w.Write([]byte("small"))
		}
	})
	h := newHandler(t, all(up.srv.URL), upstream.Options{})
	if resp, err := userEvent(h, "at-limit"); err != nil || len(resp.Data) != 1<<20 {
		t.Errorf("a 1 MiB reply: %v", err)
	}
	if resp, err := userEvent(h, "over-limit"); err == nil || !strings.Contains(err.Error(), "larger than 1 MiB") {
		n := 0
		if resp != nil {
			n = len(resp.Data)
		}
		t.Errorf("a reply over 1 MiB: %d bytes, error %v; want an error", n, err)
	}

	e := newEnv(t, all(up.srv.URL), upstream.Options{})
	c, _ := wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{}))
	c.Send(`{"type":"event","event":"over-limit","ackId":1,"dataType":"text","data":"x"}`)
	if f := c.Next(); len(f.Data) > 1024 { // not the ack: don't print a megabyte
		t.Fatalf("want ack 1, got a %d-byte frame: %.80s…", len(f.Data), f.Data)
	} else if !strings.Contains(string(f.Data), `"ackId":1,"success":false`) || !strings.Contains(string(f.Data), "larger than 1 MiB") {
		t.Fatalf("want ack 1 with an error, got %s", f.Data)
	}
	c.Send(`{"type":"event","event":"small","ackId":2,"dataType":"text","data":"x"}`)
	if m := c.NextJSON(); m["data"] != "small" {
		t.Fatalf("reply %v", m)
	}
	c.ExpectAck(2, "")
}

// A reply whose body never ends fails the event at the timeout.
func TestEndlessReplyIsBoundedByTheTimeout(t *testing.T) {
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.method != http.MethodPost {
			return
		}
		w.Write([]byte("the start of a reply"))
		w.(http.Flusher).Flush()
		<-r.ctx.Done()
	})
	h := newHandler(t, all(up.srv.URL), upstream.Options{Timeout: 200 * time.Millisecond})
	done := make(chan error, 1)
	go func() { _, err := userEvent(h, "endless"); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "reading the endless reply") {
			t.Fatalf("an endless reply: %v, want an error reading it", err)
		}
	case <-time.After(wstest.WaitFor):
		t.Fatal("an endless reply is still being read")
	}
}

// A client's event metadata goes upstream as x-webpubsub-metadata-{key}
// headers (client-protocol §6.1).
func TestUserEventMetadataHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.method == http.MethodPost {
			select {
			case got <- r.header:
			default:
			}
		}
	})
	h := newHandler(t, all(up.srv.URL), upstream.Options{})
	_, err := h.UserEvent(context.Background(), &pubsub.UserEventRequest{
		ConnectionContext: pubsub.ConnectionContext{Hub: "chat", ConnectionID: "c1"},
		EventName:         "e", DataType: pubsub.DataTypeText, Data: []byte("x"),
		Metadata: map[string]string{"Trace-Id": "abc", "k": "v 1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	hd := <-got
	if hd.Get("x-webpubsub-metadata-trace-id") != "abc" || hd.Get("X-Webpubsub-Metadata-K") != "v 1" {
		t.Fatalf("headers %v", hd)
	}
}
