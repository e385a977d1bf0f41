package pubsub_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

func TestSlowClientIsDisconnectedWithoutDelayingOthers(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, OutboundBufferSize: 256 << 10, WriteTimeout: time.Minute})
	ctx := t.Context()
	var fast []*wstest.Client
	for i := 0; i < 3; i++ {
		c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}))
		fast = append(fast, c)
	}
	slow := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "slow", Groups: []string{"room"}}))

	// Far more than the kernel buffers and the outbound buffer hold, in
	// batches that fit the outbound buffer: the fast clients read each batch
	// before the next is sent, the slow client reads nothing.
	const n, batch = 2000, 4
	payload := strings.Repeat("x", 16<<10)
	for i := 0; i < n; i += batch {
		for j := i; j < i+batch; j++ {
			must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage(fmt.Sprintf("%04d%s", j, payload))))
		}
		for _, c := range fast {
			for j := i; j < i+batch; j++ {
				f := c.Next()
				if want := fmt.Sprintf(`"data":"%04d`, j); !strings.Contains(string(f.Data[:80]), want) {
					t.Fatalf("fast client message %d: %.80s", j, f.Data)
				}
			}
		}
	}
	if got := e.svc.Stats().SlowClientDisconnects; got != 1 {
		t.Fatalf("SlowClientDisconnects = %d, want 1", got)
	}

	// The slow client, reading at last, finds fewer messages than were sent
	// and then the close frame: 1008 SlowClient.
	received := 0
	for {
		op, p, err := slow.ReadFrame()
		if err != nil {
			t.Fatalf("after %d messages: %v (want a close frame)", received, err)
		}
		if op == 0x8 {
			code := binary.BigEndian.Uint16(p)
			if code != 1008 || !strings.HasPrefix(string(p[2:]), "SlowClient") {
				t.Fatalf("close %d %q", code, p[2:])
			}
			break
		}
		received++
	}
	if received >= n {
		t.Fatalf("the slow client got all %d messages", received)
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "slow" || !strings.HasPrefix(d.reason, "SlowClient") {
		t.Fatalf("disconnected %+v", d)
	}
	// The others are still connected and served.
	must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage("after")))
	for _, c := range fast {
		if m := c.NextJSON(); m["data"] != "after" {
			t.Fatalf("got %v", m)
		}
	}
}

// A client that stops reading for a while but within its outbound buffer
// loses nothing: once the kernel's buffers are full, its frames wait in the
// outbox, and a write that the socket took only in part goes on where it
// stopped when the client reads again.
func TestBackloggedClientGetsEverythingInOrder(t *testing.T) {
	e := newEnv(t, pubsub.Config{OutboundBufferSize: 64 << 20, WriteTimeout: time.Minute})
	ctx := t.Context()
	c := wstest.RawDial(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}))

	// 16 MB: several times what loopback's socket buffers hold for a client
	// that reads nothing. Sizes vary so that partial writes end mid-frame
	// at many offsets.
	const n = 1024
	body := strings.Repeat("0123456789abcdef", 1<<10)
	for i := range n {
		must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage(fmt.Sprintf("%04d:%s", i, body[:(i*7919)%len(body)]))))
	}
	for i := range n {
		op, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		want := fmt.Sprintf("%04d:%s", i, body[:(i*7919)%len(body)])
		if op != 0x1 || string(p) != want {
			t.Fatalf("message %d: opcode %d, %d bytes %.20q, want %d bytes %.20q", i, op, len(p), p, len(want), want)
		}
	}
	// Writes that follow the backlog still go out at once.
	for i := range 3 {
		must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage("after"+itoa(i))))
		if _, p, err := c.ReadFrame(); err != nil || string(p) != "after"+itoa(i) {
			t.Fatalf("after the backlog: %q, %v", p, err)
		}
	}
	if got := e.svc.Stats().SlowClientDisconnects; got != 0 {
		t.Fatalf("SlowClientDisconnects = %d", got)
	}
}

func TestKeepAliveClosesSilentClients(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, KeepAliveInterval: 20 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})
	alive, aliveID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alive"})) // gws answers pings
	silent := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "silent"}))

	// The silent client first sees pings, then the close.
	pings := 0
	for {
		op, p, err := silent.ReadFrame()
		if err != nil {
			t.Fatalf("after %d pings: %v", pings, err)
		}
		if op == 0x9 {
			pings++
			continue
		}
		if op != 0x8 || binary.BigEndian.Uint16(p) != 1001 || !strings.HasPrefix(string(p[2:]), "PingTimeout") {
			t.Fatalf("frame %x %q", op, p)
		}
		break
	}
	if pings == 0 {
		t.Fatal("no keep-alive ping before the close")
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "silent" || !strings.HasPrefix(d.reason, "PingTimeout") {
		t.Fatalf("disconnected %+v", d)
	}
	// The client that answered pings for as long is still there.
	if ok, _ := e.hub.ConnectionExists(t.Context(), aliveID); !ok {
		t.Fatal("a client answering pings was closed")
	}
	e.barrier(alive, aliveID)
}

func TestShutdown(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	jsonClient, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	simple := wstest.Dial(t, e.url(pubsub.TokenOptions{}), nil)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := e.svc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Shutdown returned after every disconnected event.
	if len(rec.disconnected) != 2 {
		t.Fatalf("%d disconnected events when Shutdown returned", len(rec.disconnected))
	}
	info, frames := jsonClient.ExpectClose()
	if info.Code != 1001 || len(frames) != 1 || !strings.Contains(string(frames[0].Data), `"event":"disconnected"`) {
		t.Fatalf("JSON client: close %+v after %d frames", info, len(frames))
	}
	if info, frames := simple.ExpectClose(); info.Code != 1001 || len(frames) != 0 {
		t.Fatalf("simple client: close %+v after %d frames", info, len(frames))
	}
	if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{}), nil); got != http.StatusServiceUnavailable {
		t.Fatalf("connect after Shutdown: %d", got)
	}
	if err := e.hub.SendToAll(ctx, pubsub.TextMessage("x")); !errors.Is(err, pubsub.ErrServiceClosed) {
		t.Fatalf("send after Shutdown: %v", err)
	}
	if err := e.svc.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

func TestShutdownDeadline(t *testing.T) {
	block := make(chan struct{})
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnDisconnected: func(context.Context, pubsub.ConnectionContext, string) { <-block },
	}})
	wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.svc.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a stuck handler: %v", err)
	}
	close(block) // the handler returns; the cleanup's Shutdown then succeeds
}

func TestMessageTTLDropsLateMessages(t *testing.T) {
	e := newEnv(t, pubsub.Config{OutboundBufferSize: 256 << 20, WriteTimeout: time.Minute})
	ctx := t.Context()
	reader := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "late"}))
	if ok, _ := e.hub.UserExists(ctx, "late"); !ok {
		t.Fatal("not connected")
	}
	// 40 MB that the client does not read: far more than the kernel buffers,
	// so what follows waits in the outbox.
	const n = 40
	big := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		must(t, e.hub.SendToUser(ctx, "late", pubsub.BinaryMessage(big)))
	}
	must(t, e.hub.SendToUser(ctx, "late", pubsub.TextMessage("expiring"), pubsub.WithTTL(100*time.Millisecond)))
	must(t, e.hub.SendToUser(ctx, "late", pubsub.TextMessage("kept"), pubsub.WithTTL(time.Hour)))
	must(t, e.hub.SendToUser(ctx, "late", pubsub.TextMessage("no ttl")))
	time.Sleep(200 * time.Millisecond) // the TTL passing is what is tested, not a synchronisation

	var texts []string
	for binaries := 0; len(texts) < 2; {
		op, p, err := reader.ReadFrame()
		if err != nil {
			t.Fatalf("after %d binary frames and %q: %v", binaries, texts, err)
		}
		if op == 0x2 {
			binaries++
			continue
		}
		texts = append(texts, string(p))
	}
	if strings.Join(texts, ",") != "kept,no ttl" {
		t.Fatalf("text frames %q, want the expired one dropped", texts)
	}
}

// An application that serves TLS: its connections have no socket to write
// without blocking, so each outbox is written by a goroutine of its own.
func TestClientsOverTLS(t *testing.T) {
	e := newEnvOn(t, pubsub.Config{}, httptest.NewTLSServer)
	u := e.url(pubsub.TokenOptions{UserID: "tls", Groups: []string{"room"}, Roles: []string{"webpubsub.sendToGroup"}})
	if !strings.HasPrefix(u, "wss://") {
		t.Fatalf("client URL %s", u)
	}
	c := wstest.DialTLS(t, u, e.srv.Client().Transport.(*http.Transport).TLSClientConfig, "json.webpubsub.azure.v1")
	if m := c.NextJSON(); m["event"] != "connected" {
		t.Fatalf("first message %v", m)
	}
	const n = 200
	for i := range n {
		must(t, e.hub.SendToGroup(t.Context(), "room", pubsub.TextMessage("m"+itoa(i))))
	}
	for i := range n {
		if m := c.NextJSON(); m["data"] != "m"+itoa(i) {
			t.Fatalf("message %d: %v", i, m)
		}
	}
	c.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"from the client"}`)
	if m := c.NextJSON(); m["data"] != "from the client" || m["fromUserId"] != "tls" {
		t.Fatalf("got %v", m)
	}
}
