package pubsub_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
)

// rawClient is a WebSocket client made by hand over TCP, so that a test can
// stop reading (a slow client) or never answer pings (a dead one).
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func rawDial(t *testing.T, rawURL string) *rawClient {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", u.RequestURI(), u.Host)
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status %d", resp.StatusCode)
	}
	return &rawClient{conn: conn, r: r}
}

// readFrame reads one unmasked server frame.
func (c *rawClient) readFrame() (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		_, err = io.ReadFull(c.r, b[:])
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		_, err = io.ReadFull(c.r, b[:])
		n = binary.BigEndian.Uint64(b[:])
	}
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.r, payload)
	return h[0] & 0x0f, payload, err
}

func TestSlowClientIsDisconnectedWithoutDelayingOthers(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, OutboundBufferSize: 256 << 10, WriteTimeout: time.Minute})
	ctx := t.Context()
	var fast []*client
	for i := 0; i < 3; i++ {
		c, _ := dialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}))
		fast = append(fast, c)
	}
	slow := rawDial(t, e.url(pubsub.TokenOptions{UserID: "slow", Groups: []string{"room"}}))

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
				f := c.next()
				if want := fmt.Sprintf(`"data":"%04d`, j); !strings.Contains(string(f.data[:80]), want) {
					t.Fatalf("fast client message %d: %.80s", j, f.data)
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
		op, p, err := slow.readFrame()
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
	if d := rec.nextDisconnect(t); d.conn.UserID != "slow" || !strings.HasPrefix(d.reason, "SlowClient") {
		t.Fatalf("disconnected %+v", d)
	}
	// The others are still connected and served.
	must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage("after")))
	for _, c := range fast {
		if m := c.nextJSON(); m["data"] != "after" {
			t.Fatalf("got %v", m)
		}
	}
}

func TestKeepAliveClosesSilentClients(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, KeepAliveInterval: 20 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})
	alive, aliveID := dialJSON(t, e.url(pubsub.TokenOptions{UserID: "alive"})) // gws answers pings
	silent := rawDial(t, e.url(pubsub.TokenOptions{UserID: "silent"}))

	// The silent client first sees pings, then the close.
	pings := 0
	for {
		op, p, err := silent.readFrame()
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
	if d := rec.nextDisconnect(t); d.conn.UserID != "silent" || !strings.HasPrefix(d.reason, "PingTimeout") {
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
	jsonClient, _ := dialJSON(t, e.url(pubsub.TokenOptions{}))
	simple := dial(t, e.url(pubsub.TokenOptions{}), nil)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := e.svc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Shutdown returned after every disconnected event.
	if len(rec.disconnected) != 2 {
		t.Fatalf("%d disconnected events when Shutdown returned", len(rec.disconnected))
	}
	info, frames := jsonClient.expectClose()
	if info.code != 1001 || len(frames) != 1 || !strings.Contains(string(frames[0].data), `"event":"disconnected"`) {
		t.Fatalf("JSON client: close %+v after %d frames", info, len(frames))
	}
	if info, frames := simple.expectClose(); info.code != 1001 || len(frames) != 0 {
		t.Fatalf("simple client: close %+v after %d frames", info, len(frames))
	}
	if got := handshakeStatus(t, e.url(pubsub.TokenOptions{}), nil); got != http.StatusServiceUnavailable {
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
	dialJSON(t, e.url(pubsub.TokenOptions{}))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.svc.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a stuck handler: %v", err)
	}
	close(block) // the handler returns; the cleanup's Shutdown then succeeds
}
