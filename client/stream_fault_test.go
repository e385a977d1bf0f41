package client_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol"
)

// scriptFrame is what a scripted service reads of a client's frame.
type scriptFrame struct {
	Type             string          `json:"type"`
	AckID            uint64          `json:"ackId"`
	StreamID         string          `json:"streamId"`
	StreamSequenceID uint64          `json:"streamSequenceId"`
	Data             json.RawMessage `json:"data"`
	Stream           *struct {
		StreamID string `json:"streamId"`
	} `json:"stream"`
}

// scriptService is a scripted json.webpubsub.azure.v1 service: each
// connection is numbered from 1 and told it is connected, and onFrame
// answers each frame, under mu.
type scriptService struct {
	gws.BuiltinEventHandler
	mu      sync.Mutex
	conns   int
	onFrame func(c *gws.Conn, conn int, f scriptFrame)
}

func (s *scriptService) OnOpen(c *gws.Conn) {
	s.mu.Lock()
	s.conns++
	n := s.conns
	s.mu.Unlock()
	c.Session().Store("n", n)
	_ = c.WriteString(fmt.Sprintf(`{"type":"system","event":"connected","connectionId":"c%d","userId":"u"}`, n))
}

func (s *scriptService) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	var f scriptFrame
	if json.Unmarshal(m.Bytes(), &f) != nil {
		return
	}
	n, _ := c.Session().Load("n")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onFrame(c, n.(int), f)
}

// serveScript serves s and returns its client URL; the server closes
// after the clients started later stopped.
func serveScript(t *testing.T, s *scriptService) string {
	up := gws.NewUpgrader(s, &gws.ServerOption{SubProtocols: []string{protocol.JSONSubprotocol}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/client/hubs/h"
}

func streamAckFrame(id string, expected uint64) string {
	return fmt.Sprintf(`{"type":"streamAck","streamId":%q,"expectedSequenceId":%d}`, id, expected)
}

func streamClosedFrame(id string) string {
	return fmt.Sprintf(`{"type":"streamClosed","streamId":%q}`, id)
}

func streamNackFrame(id string, expected uint64, name string) string {
	return fmt.Sprintf(`{"type":"streamNack","streamId":%q,"expectedSequenceId":%d,"name":%q,"message":"refused"}`, id, expected, name)
}

// A fragment the service keeps refusing with a streamNack other than a gap
// (here TransientError, as this module's server sends when a publish
// fails) is written again, after a pause, at most 3 times: then the stream
// ends with the service's error, rather than End never returning while the
// client floods the service (found in review).
func TestStreamNackedAgainAndAgainIsGivenUp(t *testing.T) {
	const bound = 200
	flooded := make(chan struct{})
	copies := 0
	svc := &scriptService{onFrame: func(c *gws.Conn, _ int, f scriptFrame) {
		var reply string
		switch {
		case f.Type == "sendToGroup" && f.Stream != nil:
			reply = streamAckFrame(f.Stream.StreamID, 1)
		case f.Type == "streamData" && f.StreamSequenceID == 1:
			reply = streamAckFrame(f.StreamID, 2)
		case f.Type == "streamData" && f.StreamSequenceID == 2:
			if copies++; copies == bound {
				close(flooded)
			}
			reply = streamNackFrame(f.StreamID, 2, "TransientError")
		case f.Type == "streamData" && f.StreamSequenceID > 2:
			reply = streamNackFrame(f.StreamID, 2, protocol.StreamInvalidSequenceID)
		case f.Type == "streamEnd":
			reply = streamClosedFrame(f.StreamID)
		}
		if reply != "" {
			_ = c.WriteString(reply)
		}
	}}
	u := serveScript(t, svc)
	ctx := ctxFor(t)
	c := start(t, u, client.Options{Protocol: client.JSON()})
	s, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Write(ctx, protocol.Text, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	ended := make(chan error, 1)
	go func() { ended <- s.End(ctx) }()
	select {
	case err := <-ended:
		var se *client.StreamError
		if !errors.As(err, &se) || se.Name != "TransientError" {
			t.Fatalf("End: %v, want the service's TransientError", err)
		}
	case <-flooded:
		c.Stop()
		<-ended
		t.Fatalf("fragment 2 written %d times on one transport after as many nacks; the stream neither ended nor stopped writing it", bound)
	case <-ctx.Done():
		t.Fatal("neither an end nor a flood")
	}
}

// On json.webpubsub.azure.v1, a transport that ends before the start's ack
// ends the connection, and the stream with ErrConnectionLost: its start is
// not written on the next connection, where the service would open a
// stream nobody writes or ends, holding one of the connection's (100) and
// the group's (1000) streams until its idle timeout (found in review).
func TestFailedStreamStartIsNotWrittenOnTheNextConnection(t *testing.T) {
	seen := map[string]int{}
	var orphans []string
	svc := &scriptService{onFrame: func(c *gws.Conn, n int, f scriptFrame) {
		switch {
		case f.Type == "sendToGroup" && f.Stream != nil:
			id := f.Stream.StreamID
			if seen[id]++; seen[id] == 1 {
				_ = c.NetConn().Close() // the transport drops before the ack
				return
			}
			orphans = append(orphans, fmt.Sprintf("%s on connection %d", id, n))
			_ = c.WriteString(streamAckFrame(id, 1))
		case f.Type == "sendToGroup" && f.AckID != 0:
			_ = c.WriteString(fmt.Sprintf(`{"type":"ack","ackId":%d,"success":true}`, f.AckID))
		}
	}}
	u := serveScript(t, svc)
	ctx := ctxFor(t)
	c := start(t, u, client.Options{Protocol: client.JSON(), RetryDelay: time.Millisecond})
	for i := range 5 {
		id := fmt.Sprint("s", i)
		if _, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: id}); !errors.Is(err, client.ErrConnectionLost) {
			t.Fatalf("stream %s opened over a lost connection: %v", id, err)
		}
		// Acknowledged after every frame written before it on the
		// connection it goes out on.
		if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("sync")); err != nil {
			t.Fatal(err)
		}
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if len(orphans) > 0 {
		t.Fatalf("starts of streams OpenGroupStream had failed (ErrConnectionLost) reached the service on the next connection: %v", orphans)
	}
}

// A stream given up after 4 transports without an ack (a fragment the
// service closes the transport over, as too big) is ended at the service
// with an error on a reliable connection that goes on, so that its
// receivers are told at once rather than at the idle timeout, and its
// slots are freed (found in review).
func TestGivenUpStreamIsEndedAtTheService(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxMessageSize: 4096})
	ctx := ctxFor(t)
	ro, received := streamsOf(client.Options{})
	receiver := start(t, e.url(pubsub.TokenOptions{UserID: "r", Roles: []string{"webpubsub.joinLeaveGroup"}}), ro)
	if err := receiver.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ev := newEvents()
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "p", Roles: []string{"webpubsub.sendToGroup"}}))
	c := start(t, u, ev.options(client.Options{RetryDelay: 10 * time.Millisecond}))
	connID := next(t, ev.connected, "connected").ConnectionID
	s, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "big"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, protocol.Text, []byte("small")); err != nil {
		t.Fatal(err)
	}
	r := next(t, received, "the stream")
	if m, err := r.Next(ctx); err != nil || string(m.Data) != "small" {
		t.Fatalf("first fragment %q, %v", m.Data, err)
	}
	if err := s.Write(ctx, protocol.Binary, make([]byte, 8192)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("the stream was not given up")
	}
	if err := s.Err(); !errors.Is(err, client.ErrConnectionLost) {
		t.Fatalf("stream ended with %v", err)
	}
	// The connection went on (recovered): a request still goes.
	if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if c.ConnectionID() != connID {
		t.Skipf("a new connection (%s, was %s): the service ended the stream with the old one", c.ConnectionID(), connID)
	}
	if _, err := r.Next(ctx); ctx.Err() != nil {
		t.Fatalf("the receivers' stream did not end within %v after its publisher gave it up on a connection that goes on", waitFor)
	} else {
		t.Logf("the receivers' stream ended with %v", err)
	}
}
