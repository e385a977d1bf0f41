package pubsub_test

// Regression tests for the hardening issue: each reproduces a way a hostile
// or unlucky client (or caller) could wedge, crash or starve the service.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A frame header whose 64-bit payload length has its top bit set (RFC 6455
// forbids it) is a protocol error for that client alone: gws v1.10.1 turned
// it into -1 and panicked in the read goroutine, which ended the process.
func TestNegativeFrameLengthClosesOnlyThatClient(t *testing.T) {
	e := newEnv(t, pubsub.Config{AllowAnonymous: true})
	other, otherID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "other"}))

	bad := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "bad"}))
	hdr := []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := bad.Write(hdr); err != nil {
		t.Fatal(err)
	}
	if code, reason := expectRawClose(t, bad); code != 1002 {
		t.Fatalf("close %d %q, want 1002", code, reason)
	}
	e.barrier(other, otherID)
}

// expectRawClose reads a raw client's frames until the close frame and
// returns its code and reason.
func expectRawClose(t *testing.T, c *wstest.RawClient) (uint16, string) {
	t.Helper()
	for {
		op, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("want a close frame, got %v", err)
		}
		if op == 0x8 {
			if len(p) < 2 {
				return 1005, ""
			}
			return binary.BigEndian.Uint16(p), string(p[2:])
		}
	}
}

// within fails the test unless f returns within the bound: a call that
// never answers is the bug these tests look for.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatalf("%s did not return within %v", what, waitFor)
	}
}

// detached drops a reliable client's transport and waits until the
// service has noticed: its connection is between transports.
func detached(t *testing.T, e *testEnv, proxy *wstest.Proxy, r *reliableClient) {
	t.Helper()
	proxy.Drop()
	r.lost()
	eventually(t, "the drop noticed", func() bool { return pubsub.IsDetached(e.svc, "chat", r.connID) })
}

// Closing a group whose member is a reliable connection between transports
// used to close it while holding the group's lock, which releasing the
// connection takes again: the call never returned and the group was wedged.
func TestClosingADetachedMemberDoesNotWedgeItsGroup(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, RecoveryWindow: time.Minute})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Groups: []string{"room"}})))
	other, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "o", Groups: []string{"room"}}))
	detached(t, e, proxy, r)

	within(t, "CloseGroupConnections", func() {
		must(t, e.hub.CloseGroupConnections(context.Background(), "room", "bye"))
	})
	seen := map[string]bool{}
	for range 2 {
		d := rec.nextDisconnect(t)
		seen[d.Conn.UserID] = true
	}
	if !seen["r"] || !seen["o"] {
		t.Fatalf("disconnected %v", seen)
	}
	if info, _ := other.ExpectClose(); info.Code != 1000 {
		t.Fatalf("close %+v", info)
	}
	within(t, "SendToGroup after the close", func() {
		must(t, e.hub.SendToGroup(context.Background(), "room", pubsub.TextMessage("x")))
	})
	if ok, _ := e.hub.GroupExists(context.Background(), "room"); ok {
		t.Fatal("the closed group still exists")
	}
}

// More than the replay buffer's 1,000 messages to a group with a detached
// reliable member overflow it; that close ran under the group's lock too.
func TestOverflowingADetachedMemberDoesNotWedgeItsGroup(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, RecoveryWindow: time.Minute})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Groups: []string{"room"}})))
	detached(t, e, proxy, r)
	within(t, "1,001 sends", func() {
		for i := range 1001 {
			must(t, e.hub.SendToGroup(context.Background(), "room", pubsub.TextMessage(itoa(i))))
		}
	})
	if d := rec.nextDisconnect(t); d.Conn.UserID != "r" || d.reason != "The reliable message buffer is full." {
		t.Fatalf("disconnected %+v", d)
	}
	expectNotRecovered(t, r.recoveryURL(r.connID, r.token))
}

// A filtered send evaluated "'g' in groups" under the group's lock, taking
// each member's lock, while join and leave take them the other way round.
func TestFilteredSendsAndMembershipChurnDoNotDeadlock(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	var ids []string
	for range 8 {
		c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"g"}}))
		go func() { // keep reading, so that no one is a slow client
			for {
				select {
				case <-c.Frames():
				case <-c.Done():
					return
				}
			}
		}()
		ids = append(ids, id)
	}
	ctx := context.Background()
	within(t, "filtered sends with churn", func() {
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Add(2)
			go func() {
				defer wg.Done()
				for range 2000 {
					must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("x"), pubsub.WithFilter("'g' in groups and 'h' in groups")))
				}
			}()
			go func() {
				defer wg.Done()
				for i := range 2000 {
					id := ids[(i+w)%len(ids)]
					must(t, e.hub.AddConnectionToGroup(ctx, id, "h"))
					must(t, e.hub.RemoveConnectionFromGroup(ctx, id, "g"))
					must(t, e.hub.AddConnectionToGroup(ctx, id, "g"))
					must(t, e.hub.RemoveConnectionFromGroup(ctx, id, "h"))
				}
			}()
		}
		wg.Wait()
	})
}

// A recovery used to start the new transport's read loop while the old one
// was still handling a frame (here, a slow user event): two goroutines
// wrote the connection's ack log at once. The new transport's frames now
// wait for the old loop to finish, so acks keep the client's order.
func TestRecoveryWaitsForThePreviousReadLoop(t *testing.T) {
	entered, release, fast := make(chan struct{}), make(chan struct{}), make(chan struct{}, 2)
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			if req.EventName == "slow" {
				close(entered)
				<-release
			} else {
				fast <- struct{}{}
			}
			return nil, nil
		},
	}})
	r := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "r"}))
	r.c.Send(`{"type":"event","event":"slow","ackId":1,"dataType":"text","data":"x"}`)
	<-entered
	// The client recovers before the old transport's drop is noticed: a
	// takeover. Its requests wait for the old transport's last one.
	r.recover()
	r.c.Send(`{"type":"event","event":"fast","ackId":2,"dataType":"text","data":"y"}`)
	r.c.Send(`{"type":"event","event":"fast","ackId":1,"dataType":"text","data":"y"}`)
	select {
	case <-fast:
		t.Error("the new transport's request was handled while the old one's was")
	case <-time.After(300 * time.Millisecond): // an absence: nothing to await
	}
	close(release)
	r.c.ExpectAck(1, "")
	r.c.ExpectAck(2, "")
	r.c.ExpectAck(1, "Duplicate")
}

// A reliable client's close frame ends its session at once (a browser tab
// closes with 1001; the SDK's stop() sends no code): only a transport that
// drops without a close frame waits for a recovery.
func TestClientCloseFrameEndsAReliableSession(t *testing.T) {
	for _, code := range []uint16{1000, 1001, 4000, 0} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			rec := newRecorder()
			e := newEnv(t, pubsub.Config{EventHandler: rec, RecoveryWindow: time.Minute})
			r := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "r", Groups: []string{"g"}}))
			if code == 0 {
				_ = r.c.Conn.NetConn().SetWriteDeadline(time.Now().Add(waitFor))
				_, _ = r.c.Conn.NetConn().Write([]byte{0x88, 0x80, 0, 0, 0, 0}) // a close frame with no payload
			} else {
				r.c.Conn.WriteClose(code, []byte("tab closed"))
			}
			if d := rec.nextDisconnect(t); d.Conn.ConnectionID != r.connID {
				t.Fatalf("disconnected %+v", d)
			}
			if ok, _ := e.hub.GroupExists(t.Context(), "g"); ok {
				t.Fatal("the closed session is still in its group")
			}
			expectNotRecovered(t, r.recoveryURL(r.connID, r.token))
		})
	}
}

// The outbound bound used to count bytes already being written: eight
// concurrent 1 MiB sends to a client reading as fast as it can closed it as
// a slow client.
func TestAFastReaderIsNotASlowClient(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	payload := strings.Repeat("x", 1<<20)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			must(t, e.hub.SendToConnection(context.Background(), id, pubsub.TextMessage(fmt.Sprintf("%d%s", i, payload))))
		}()
	}
	wg.Wait()
	for range 8 {
		if f := c.Next(); len(f.Data) < 1<<20 {
			t.Fatalf("frame of %d bytes", len(f.Data))
		}
	}
	if n := e.svc.Stats().SlowClientDisconnects; n != 0 {
		t.Fatalf("%d slow client disconnects", n)
	}
}

// A user event reply larger than the client frame limit is an error answer
// to that event, not a close of the client.
func TestOversizedEventReplyIsAnError(t *testing.T) {
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: []byte(strings.Repeat("x", 10<<20))}, nil
		},
	}})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	c.Send(`{"type":"event","event":"big","ackId":1,"dataType":"text","data":"x"}`)
	if m := c.ExpectAck(1, "InternalServerError"); !strings.Contains(fmt.Sprint(m["error"]), "larger") {
		t.Fatalf("ack %v", m)
	}
	e.barrier(c, id)
	if n := e.svc.Stats().SlowClientDisconnects; n != 0 {
		t.Fatalf("%d slow client disconnects", n)
	}
}

// Disconnected follows every Connect that did not refuse, even when the
// connection then fails to open: the event handler's bookkeeping (an
// upstream's per-connection state) depends on it.
func TestDisconnectedFollowsEveryAcceptedConnect(t *testing.T) {
	rec := newRecorder()
	rec.onConnect = func(req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
		switch req.UserID {
		case "bad-group":
			return &pubsub.ConnectResponse{Groups: []string{"   "}}, nil
		case "bad-protocol":
			return &pubsub.ConnectResponse{Subprotocol: "not.offered"}, nil
		case "bad-role":
			return &pubsub.ConnectResponse{Roles: []string{`webpubsub.joinLeaveGroups.a\b`}}, nil
		}
		return nil, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	for _, user := range []string{"bad-group", "bad-protocol", "bad-role"} {
		if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{UserID: user}), nil); got/100 == 1 {
			t.Fatalf("%s: status %d", user, got)
		}
		if d := rec.nextDisconnect(t); d.Conn.UserID != user {
			t.Fatalf("disconnected %+v, want %s", d, user)
		}
	}
	// The upgrade itself fails (gws refuses a WebSocket version it does not
	// speak) after the connect event accepted the client.
	h := http.Header{"Sec-Websocket-Version": {"8"}}
	if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{UserID: "old-client"}), h); got != http.StatusBadRequest {
		t.Fatalf("status %d", got)
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "old-client" {
		t.Fatalf("disconnected %+v", d)
	}
	if n := e.svc.Stats().Connections; n != 0 {
		t.Fatalf("%d connections", n)
	}
}

// A reliable client whose transport goes silent (a dead network path: no
// FIN, no reset) loses the transport, not the session: keep-alive drops it
// and the client recovers everything within RecoveryWindow.
func TestSilentReliableTransportIsDetached(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, KeepAliveInterval: 20 * time.Millisecond, IdleTimeout: 200 * time.Millisecond, RecoveryWindow: time.Minute})
	silent := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "r", Groups: []string{"g"}}), reliableJSON)
	_, p, err := silent.ReadFrame()
	must(t, err)
	var connected struct{ ConnectionID, ReconnectionToken string }
	must(t, jsonUnmarshal(p, &connected))
	must(t, e.hub.SendToGroup(t.Context(), "g", pubsub.TextMessage("kept")))
	for { // pings, then the transport is dropped: no close frame, no disconnected message
		op, p, err := silent.ReadFrame()
		if err != nil {
			break
		}
		if op == 0x8 || strings.Contains(string(p), `"disconnected"`) {
			t.Fatalf("the session was closed: %x %q", op, p)
		}
	}
	eventually(t, "detached", func() bool { return pubsub.IsDetached(e.svc, "chat", connected.ConnectionID) })
	r := &reliableClient{t: t, url: e.url(pubsub.TokenOptions{UserID: "r"}), connID: connected.ConnectionID, token: connected.ReconnectionToken}
	r.recover()
	r.readUntil(1)
	if r.data[0] != "kept" {
		t.Fatalf("replayed %q", r.data)
	}
	select {
	case d := <-rec.disconnected:
		t.Fatalf("disconnected %+v", d)
	default:
	}
}
