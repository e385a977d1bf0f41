package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait: a failure, never a synchronisation.
const waitFor = wstest.WaitFor

// env is the library's own service in an httptest server.
type env struct {
	t            testing.TB
	svc          *pubsub.Service
	srv          *httptest.Server
	hub          *pubsub.Hub
	disconnected chan string // connection ids the service saw end
}

func newEnv(t testing.TB, cfg pubsub.Config) *env {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	cfg.Endpoint, cfg.AccessKey = srv.URL, "primary-access-key-0123456789abcdef"
	e := &env{t: t, srv: srv, disconnected: make(chan string, 100)}
	if cfg.EventHandler == nil {
		cfg.EventHandler = pubsub.EventHandlerFuncs{
			OnUserEvent: echoEvent,
			OnDisconnected: func(_ context.Context, c pubsub.ConnectionContext, _ string) {
				e.disconnected <- c.ConnectionID
			},
		}
	}
	svc, err := pubsub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/client/", svc.ClientHandler())
	e.svc = svc
	if e.hub, err = svc.Hub("chat"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return e
}

// echoEvent answers user events and invocations: "fail" fails, "silent"
// replies nothing, anything else is echoed as text with the event name.
func echoEvent(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
	switch string(req.Data) {
	case "fail":
		return nil, errors.New("upstream failed")
	case "silent":
		return nil, nil
	}
	return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: []byte(req.EventName + ":" + string(req.Data))}, nil
}

// noGroupMessage sends connID a server message as a barrier: what the
// service sent it before has come when the barrier does, and no group
// message may be among it (the test fails with why).
func (e *env) noGroupMessage(ctx context.Context, connID string, ev *events, why string) {
	e.t.Helper()
	if err := e.hub.SendToConnection(ctx, connID, pubsub.TextMessage("barrier")); err != nil {
		e.t.Fatal(err)
	}
	if got := next(e.t, ev.server, "barrier"); got.DataType != protocol.Text || string(got.Data) != "barrier" {
		e.t.Fatalf("server message %+v, want the barrier", got)
	}
	select {
	case m := <-ev.group:
		e.t.Fatalf("%s: %+v", why, m)
	default:
	}
}

func (e *env) url(opts pubsub.TokenOptions) string {
	e.t.Helper()
	u, err := e.svc.ClientURL("chat", opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return u
}

// events records what a client's handlers get, on channels.
type events struct {
	connected    chan client.ConnectedEvent
	disconnected chan client.DisconnectedEvent
	stopped      chan struct{}
	group        chan client.Message
	server       chan client.Message
	rejoinFailed chan string
}

func newEvents() *events {
	return &events{
		connected:    make(chan client.ConnectedEvent, 16),
		disconnected: make(chan client.DisconnectedEvent, 16),
		stopped:      make(chan struct{}, 16),
		group:        make(chan client.Message, 20000),
		server:       make(chan client.Message, 100),
		rejoinFailed: make(chan string, 16),
	}
}

func (ev *events) options(o client.Options) client.Options {
	o.OnConnected = func(e client.ConnectedEvent) { ev.connected <- e }
	o.OnDisconnected = func(e client.DisconnectedEvent) { ev.disconnected <- e }
	o.OnStopped = func() { ev.stopped <- struct{}{} }
	o.OnGroupMessage = func(m client.Message) { ev.group <- m }
	o.OnServerMessage = func(m client.Message) { ev.server <- m }
	o.OnRejoinGroupFailed = func(g string, _ error) { ev.rejoinFailed <- g }
	return o
}

func next[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("no %s within %v", what, waitFor)
		panic("unreachable")
	}
}

// start makes and starts a client, stopped when the test ends.
func start(t *testing.T, cred any, o client.Options) *client.Client {
	t.Helper()
	c, err := client.New(cred, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// protocols are the four subprotocols the client speaks.
var protocols = []client.Protocol{client.JSONReliable(), client.JSON(), client.ProtobufReliable(), client.Protobuf()}

func isProtobuf(p client.Protocol) bool { return strings.HasPrefix(p.Name(), "protobuf.") }

func TestOperations(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.Name(), func(t *testing.T) {
			// Protobuf data messages carry no fromUserId.
			from := "alice"
			if isProtobuf(p) {
				from = ""
			}
			e := newEnv(t, pubsub.Config{})
			ev := newEvents()
			u := e.url(pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup.room", "webpubsub.sendToGroup.room"}})
			c := start(t, u, ev.options(client.Options{Protocol: p}))
			ctx := ctxFor(t)
			if got := next(t, ev.connected, "connected"); got.UserID != "alice" || got.ConnectionID == "" || got.ConnectionID != c.ConnectionID() {
				t.Fatalf("connected %+v, ConnectionID %q", got, c.ConnectionID())
			}

			if err := c.JoinGroup(ctx, "room"); err != nil {
				t.Fatal(err)
			}
			for _, m := range []struct {
				dt   protocol.DataType
				data string
			}{{protocol.Text, "hi"}, {protocol.JSON, `{"a":[1,2]}`}, {protocol.Binary, "\x00\xff"}} {
				if err := c.SendToGroup(ctx, "room", m.dt, []byte(m.data)); err != nil {
					t.Fatal(err)
				}
				got := next(t, ev.group, "group message")
				if got.Group != "room" || got.FromUserID != from || got.DataType != m.dt || string(got.Data) != m.data {
					t.Fatalf("got %+v, want %v %q", got, m.dt, m.data)
				}
				if p.Reliable() != (got.SequenceID != 0) {
					t.Fatalf("sequence id %d on %s", got.SequenceID, p.Name())
				}
			}
			// noEcho: the first message back is the one sent after it.
			if err := c.SendToGroup(ctx, "room", protocol.Text, []byte("no echo"), client.NoEcho()); err != nil {
				t.Fatal(err)
			}
			if err := c.SendToGroup(ctx, "room", protocol.Text, []byte("echo"), client.WithMetadata(map[string]string{"k": "v"})); err != nil {
				t.Fatal(err)
			}
			if got := next(t, ev.group, "group message"); string(got.Data) != "echo" || got.Metadata["k"] != "v" {
				t.Fatalf("got %+v", got)
			}
			// Fire and forget, ordered with what follows on the socket.
			if err := c.SendToGroup(ctx, "room", protocol.Text, []byte("ff"), client.FireAndForget()); err != nil {
				t.Fatal(err)
			}
			if got := next(t, ev.group, "group message"); string(got.Data) != "ff" {
				t.Fatalf("got %+v", got)
			}

			// Refusals are errors.Is-comparable, and *AckError.
			err := c.SendToGroup(ctx, "other", protocol.Text, []byte("x"))
			var ae *client.AckError
			if !errors.Is(err, client.ErrForbidden) || !errors.As(err, &ae) || ae.Name != "Forbidden" || ae.AckID == 0 {
				t.Fatalf("send to a forbidden group: %v", err)
			}
			if err := c.JoinGroup(ctx, "other"); !errors.Is(err, client.ErrForbidden) {
				t.Fatalf("join a forbidden group: %v", err)
			}
			// An invalid request fails alone, before it is sent.
			if err := c.SendToGroup(ctx, "room", protocol.JSON, []byte("{")); !errors.Is(err, protocol.ErrInvalidMessage) {
				t.Fatalf("invalid JSON: %v", err)
			}

			// Events: the handler's reply comes before the ack.
			if err := c.SendEvent(ctx, "greet", protocol.Text, []byte("hello")); err != nil {
				t.Fatal(err)
			}
			if got := next(t, ev.server, "event reply"); got.DataType != protocol.Text || string(got.Data) != "greet:hello" {
				t.Fatalf("reply %+v", got)
			}
			if err := c.SendEvent(ctx, "greet", protocol.Text, []byte("fail")); !errors.Is(err, client.ErrInternalServerError) {
				t.Fatalf("failed event: %v", err)
			}
			if err := c.SendEvent(ctx, "greet", protocol.JSON, []byte(`"ff"`), client.FireAndForget()); err != nil {
				t.Fatal(err)
			}
			if got := next(t, ev.server, "event reply"); string(got.Data) != `greet:"ff"` {
				t.Fatalf("reply %+v", got)
			}

			// Invocations: protobuf has none, and says so at once.
			if isProtobuf(p) {
				if _, _, err := c.InvokeEvent(ctx, "add", protocol.Text, []byte("1")); !errors.Is(err, protocol.ErrNotInProtobuf) || ctx.Err() != nil {
					t.Fatalf("invoke on protobuf: %v", err)
				}
			} else {
				dt, data, err := c.InvokeEvent(ctx, "add", protocol.Text, []byte("1"))
				if err != nil || dt != protocol.Text || string(data) != "add:1" {
					t.Fatalf("invoke: %v %q %v", dt, data, err)
				}
				if _, data, err := c.InvokeEvent(ctx, "add", protocol.Text, []byte("silent")); err != nil || data != nil {
					t.Fatalf("silent invoke: %q %v", data, err)
				}
				_, _, err = c.InvokeEvent(ctx, "add", protocol.Text, []byte("fail"))
				if !errors.Is(err, client.ErrInternalServerError) || !errors.As(err, &ae) || ae.InvocationID == "" {
					t.Fatalf("failed invoke: %v", err)
				}
			}

			// Leaving: a send to the group no longer reaches it.
			if err := c.LeaveGroup(ctx, "room"); err != nil {
				t.Fatal(err)
			}
			if err := c.SendToGroup(ctx, "room", protocol.Text, []byte("after leave")); err != nil {
				t.Fatal(err)
			}
			e.noGroupMessage(ctx, c.ConnectionID(), ev, "a group message after leaving")
		})
	}
}

func TestStartStop(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ev := newEvents()
	calls := atomic.Int32{}
	u := e.url(pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}})
	cred := func(context.Context) (string, error) { calls.Add(1); return u, nil }
	c := start(t, cred, ev.options(client.Options{}))
	ctx := ctxFor(t)
	first := next(t, ev.connected, "connected").ConnectionID
	if err := c.Start(ctx); !errors.Is(err, client.ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	next(t, ev.stopped, "stopped")
	if d := next(t, ev.disconnected, "disconnected"); d.ConnectionID != first {
		t.Fatalf("disconnected %+v", d)
	}
	if got := next(t, e.disconnected, "the service's disconnected event"); got != first {
		t.Fatalf("the service ended %s", got)
	}
	if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("x")); !errors.Is(err, client.ErrStopped) {
		t.Fatalf("send after Stop: %v", err)
	}
	c.Stop() // twice: nothing

	// Start after Stop: a new connection, in the groups joined before.
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	second := next(t, ev.connected, "connected").ConnectionID
	if second == first || calls.Load() != 2 {
		t.Fatalf("connection %s after %s, %d credential calls", second, first, calls.Load())
	}
	if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("rejoined")); err != nil {
		t.Fatal(err)
	}
	if got := next(t, ev.group, "group message"); string(got.Data) != "rejoined" {
		t.Fatalf("got %+v", got)
	}

	// A failed Start leaves the client stopped and startable.
	bad, err := client.New(func(context.Context) (string, error) { return "", errors.New("no URL") }, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(ctx); err == nil || !strings.Contains(err.Error(), "no URL") {
		t.Fatalf("Start: %v", err)
	}
	if _, err := client.New(42, client.Options{}); err == nil {
		t.Fatal("a credential of type int")
	}
	refused, _ := client.New(e.url(pubsub.TokenOptions{})+"x", client.Options{}) // a bad token
	if err := refused.Start(ctx); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("Start with a bad token: %v", err)
	}
}

// A handler may call the client and wait for its ack: events are not read
// on the socket's goroutine.
func TestHandlerCallsClient(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	u := e.url(pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}})
	var c *client.Client
	got := make(chan string, 10)
	c = start(t, u, client.Options{OnGroupMessage: func(m client.Message) {
		got <- string(m.Data)
		if string(m.Data) == "ping" {
			if err := c.SendToGroup(context.Background(), "g", protocol.Text, []byte("pong")); err != nil {
				got <- err.Error()
			}
		}
	}})
	ctx := ctxFor(t)
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("ping")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ping", "pong"} {
		if s := next(t, got, want); s != want {
			t.Fatalf("got %q, want %q", s, want)
		}
	}
}

// TestRecoveryLosesNothing cuts the transport under a stream of 10,000
// group messages, several times: the application gets each once, in order,
// on one connection, on both reliable subprotocols.
func TestRecoveryLosesNothing(t *testing.T) {
	for _, p := range []client.Protocol{client.JSONReliable(), client.ProtobufReliable()} {
		t.Run(p.Name(), func(t *testing.T) { testRecoveryLosesNothing(t, p) })
	}
}

func testRecoveryLosesNothing(t *testing.T, p client.Protocol) {
	const total = 10000
	e := newEnv(t, pubsub.Config{RecoveryWindow: time.Minute})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ev := newEvents()
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Roles: []string{"webpubsub.joinLeaveGroup"}}))
	c := start(t, u, ev.options(client.Options{Protocol: p, RetryDelay: 10 * time.Millisecond, SequenceAckInterval: 20 * time.Millisecond, Logger: testLogger()}))
	ctx := ctxFor(t)
	connID := next(t, ev.connected, "connected").ConnectionID
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}

	// The sender keeps at most 100 messages ahead of the application, well
	// below the 1000 unacknowledged ones the service holds for a session:
	// during an outage it buffers what is sent, plus what the client
	// acknowledged in sequenceAcks that the cut lost (the service's unread
	// socket buffer goes with the RST).
	var received atomic.Int64
	progress := make(chan struct{}, 1)
	sendErr := make(chan error, 1)
	go func() {
		for i := range total {
			for int64(i)-received.Load() > 100 {
				select {
				case <-progress:
				case <-ctx.Done():
					sendErr <- ctx.Err()
					return
				}
			}
			if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(fmt.Sprint(i))); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()

	cuts := map[int]bool{1000: true, 3000: true, 3001: true, 6000: true, 9000: true}
	var lastSeq uint64
	for i := range total {
		m := next(t, ev.group, fmt.Sprintf("message %d", i))
		if string(m.Data) != fmt.Sprint(i) || m.SequenceID <= lastSeq {
			t.Fatalf("message %d is %q (sequence id %d after %d)", i, m.Data, m.SequenceID, lastSeq)
		}
		lastSeq = m.SequenceID
		received.Store(int64(i + 1))
		select {
		case progress <- struct{}{}:
		default:
		}
		if cuts[i] {
			proxy.Drop() // mid-stream: the sender goes on
		}
	}
	if err := next(t, sendErr, "the sender's end"); err != nil {
		t.Fatal(err)
	}
	// Nothing more: a barrier sent now is the next message.
	if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("end")); err != nil {
		t.Fatal(err)
	}
	if m := next(t, ev.group, "end"); string(m.Data) != "end" {
		t.Fatalf("after the last message: %q", m.Data)
	}
	if n := proxy.Accepted(); n < 5 {
		t.Fatalf("%d transports: the cuts did not happen", n)
	}
	if c.ConnectionID() != connID {
		t.Fatalf("connection %s became %s: not recovered", connID, c.ConnectionID())
	}
	select {
	case got := <-ev.connected:
		t.Fatalf("a new connection %+v", got)
	case d := <-ev.disconnected:
		t.Fatalf("disconnected %+v", d)
	default:
	}
	t.Logf("%d messages through %d transports", total, proxy.Accepted())
}

// A request waiting for its ack when the transport drops is sent again on
// the recovered one, with the same ackId: it takes effect once.
func TestRetryAfterRecovery(t *testing.T) {
	e := newEnv(t, pubsub.Config{RecoveryWindow: time.Minute})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ev := newEvents()
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "p", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}}))
	c := start(t, u, ev.options(client.Options{RetryDelay: 10 * time.Millisecond}))
	ctx := ctxFor(t)
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	const n = 300
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if err := c.SendToGroup(ctx, "g", protocol.Text, []byte(fmt.Sprint(i))); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		m := next(t, ev.group, "echo")
		if string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("message %d is %q", i, m.Data)
		}
		if i%50 == 10 {
			proxy.Drop()
		}
	}
	if err := next(t, done, "sender"); err != nil {
		t.Fatal(err)
	}
	if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("end")); err != nil {
		t.Fatal(err)
	}
	if m := next(t, ev.group, "end"); string(m.Data) != "end" {
		t.Fatalf("a message sent twice: %q", m.Data)
	}
}

// expectReconnected waits for the client's new connection and proves it
// rejoined its group.
func expectReconnected(t *testing.T, e *env, ev *events, c *client.Client, old string) {
	t.Helper()
	ctx := ctxFor(t)
	if d := next(t, ev.disconnected, "disconnected"); d.ConnectionID != old {
		t.Fatalf("disconnected %+v", d)
	}
	got := next(t, ev.connected, "a new connection")
	if got.ConnectionID == old || c.ConnectionID() != got.ConnectionID {
		t.Fatalf("connection %+v after %s (ConnectionID %s)", got, old, c.ConnectionID())
	}
	// OnConnected comes after the rejoin: the group reaches it at once.
	if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("again")); err != nil {
		t.Fatal(err)
	}
	if m := next(t, ev.group, "group message"); string(m.Data) != "again" {
		t.Fatalf("got %+v", m)
	}
}

// Closed by the service: the recovery is refused (1008), and the client
// connects again, rejoining its group.
func TestRefusedRecoveryReconnects(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ev := newEvents()
	u := e.url(pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.joinLeaveGroup.g"}})
	c := start(t, u, ev.options(client.Options{RetryDelay: 10 * time.Millisecond}))
	ctx := ctxFor(t)
	old := next(t, ev.connected, "connected").ConnectionID
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := e.hub.CloseConnection(ctx, old, "bye"); err != nil {
		t.Fatal(err)
	}
	expectReconnected(t, e, ev, c, old)
}

// A transport down for longer than the recovery window: the session is
// gone, and the client connects again through the credential, rejoining.
func TestRecoveryWindowExpiredReconnects(t *testing.T) {
	e := newEnv(t, pubsub.Config{RecoveryWindow: 100 * time.Millisecond})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	target := strings.TrimPrefix(e.srv.URL, "http://")
	ev := newEvents()
	var calls atomic.Int32
	cred := func(context.Context) (string, error) {
		calls.Add(1)
		return proxy.URL(e.url(pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.joinLeaveGroup.g", "webpubsub.joinLeaveGroup.h"}})), nil
	}
	c := start(t, cred, ev.options(client.Options{RetryDelay: 10 * time.Millisecond}))
	ctx := ctxFor(t)
	old := next(t, ev.connected, "connected").ConnectionID
	for _, g := range []string{"g", "h"} {
		if err := c.JoinGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.LeaveGroup(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	proxy.SetTarget("") // the service is out of reach
	proxy.Drop()
	if got := next(t, e.disconnected, "the session's end"); got != old {
		t.Fatalf("the service ended %s", got)
	}
	proxy.SetTarget(target)
	expectReconnected(t, e, ev, c, old)
	if calls.Load() != 2 {
		t.Fatalf("%d credential calls, want 2", calls.Load())
	}
	if err := e.hub.SendToGroup(ctx, "h", pubsub.TextMessage("left")); err != nil {
		t.Fatal(err)
	}
	e.noGroupMessage(ctx, c.ConnectionID(), ev, "rejoined a group it had left")
}

// A group it may no longer join is reported by OnRejoinGroupFailed.
func TestRejoinFailure(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ev := newEvents()
	var calls atomic.Int32
	cred := func(context.Context) (string, error) {
		roles := []string{"webpubsub.joinLeaveGroup.g", "webpubsub.joinLeaveGroup.h"}
		if calls.Add(1) > 1 {
			roles = roles[:1] // h is no longer allowed
		}
		return e.url(pubsub.TokenOptions{UserID: "u", Roles: roles}), nil
	}
	c := start(t, cred, ev.options(client.Options{RetryDelay: 10 * time.Millisecond}))
	ctx := ctxFor(t)
	old := next(t, ev.connected, "connected").ConnectionID
	for _, g := range []string{"g", "h"} {
		if err := c.JoinGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.hub.CloseConnection(ctx, old, "bye"); err != nil {
		t.Fatal(err)
	}
	if g := next(t, ev.rejoinFailed, "rejoin failure"); g != "h" {
		t.Fatalf("rejoin of %q failed", g)
	}
	expectReconnected(t, e, ev, c, old)
}

// Without recovery (json.webpubsub.azure.v1), a drop is a new connection;
// with DisableAutoReconnect, the client stops.
func TestNoAutoReconnectStops(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ev := newEvents()
	u := e.url(pubsub.TokenOptions{UserID: "u"})
	c := start(t, u, ev.options(client.Options{Protocol: client.JSON(), DisableAutoReconnect: true}))
	old := next(t, ev.connected, "connected").ConnectionID
	if err := e.hub.CloseConnection(ctxFor(t), old, "bye"); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ev.disconnected, "disconnected"); d.ConnectionID != old || d.Message != "bye" {
		t.Fatalf("disconnected %+v", d)
	}
	next(t, ev.stopped, "stopped")
	if err := c.JoinGroup(ctxFor(t), "g"); !errors.Is(err, client.ErrStopped) {
		t.Fatalf("join on a stopped client: %v", err)
	}
	if err := c.Start(ctxFor(t)); err != nil { // it may start again
		t.Fatal(err)
	}
	next(t, ev.connected, "connected")
}

func testLogger() *slog.Logger {
	if os.Getenv("CLIENT_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// holeProxy forwards TCP connections until Freeze makes those it has a
// black hole: they stay open and swallow what comes, as a dead network
// path does, where only the keep-alive notices.
type holeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*holeConn
	wg     sync.WaitGroup
}

type holeConn struct {
	a, b   net.Conn
	frozen atomic.Bool
}

func newHoleProxy(t *testing.T, target string) *holeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			hc := &holeConn{a: a, b: b}
			p.mu.Lock()
			p.conns = append(p.conns, hc)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(hc, a, b)
			go p.pipe(hc, b, a)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, hc := range p.conns {
			hc.a.Close()
			hc.b.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *holeProxy) pipe(hc *holeConn, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		if !hc.frozen.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				src.Close()
				return
			}
		}
	}
}

// Freeze turns the connections made so far into black holes.
func (p *holeProxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, hc := range p.conns {
		hc.frozen.Store(true)
	}
}

func (p *holeProxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// A transport that silently stops carrying anything is found dead by the
// keep-alive, and the connection recovers with nothing lost.
func TestKeepAliveDetectsDeadTransport(t *testing.T) {
	e := newEnv(t, pubsub.Config{RecoveryWindow: time.Minute})
	target := strings.TrimPrefix(e.srv.URL, "http://")
	proxy := newHoleProxy(t, target)
	ev := newEvents()
	u := strings.Replace(e.url(pubsub.TokenOptions{UserID: "k", Roles: []string{"webpubsub.joinLeaveGroup"}}), target, proxy.ln.Addr().String(), 1)
	c := start(t, u, ev.options(client.Options{KeepAliveInterval: 20 * time.Millisecond, KeepAliveTimeout: 200 * time.Millisecond, RetryDelay: 10 * time.Millisecond}))
	ctx := ctxFor(t)
	connID := next(t, ev.connected, "connected").ConnectionID
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	proxy.Freeze()
	if err := e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("into the hole")); err != nil {
		t.Fatal(err)
	}
	if m := next(t, ev.group, "the replayed message"); string(m.Data) != "into the hole" {
		t.Fatalf("got %+v", m)
	}
	if proxy.Accepted() != 2 || c.ConnectionID() != connID {
		t.Fatalf("%d transports, connection %s then %s", proxy.Accepted(), connID, c.ConnectionID())
	}
}

// The same message reaches a client of each subprotocol with the same
// DataType and Data: protobuf's text_data, json_data and binary_data decode
// to what the JSON client gets, from the server and from a client alike.
// JSON data is the same value, and the same text but for the whitespace
// around it, which a JSON frame cannot keep and json_data (a string) does.
// (A JSON null is left out: the client refuses to send one, and a JSON
// client skips one from the server as data missing, where a protobuf client
// gets "null".)
func TestSameDataOnEveryProtocol(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := ctxFor(t)
	u := e.url(pubsub.TokenOptions{UserID: "x", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}})
	evs := make([]*events, len(protocols))
	clients := make([]*client.Client, len(protocols))
	for i, p := range protocols {
		evs[i] = newEvents()
		clients[i] = start(t, u, evs[i].options(client.Options{Protocol: p}))
		if err := clients[i].JoinGroup(ctx, "g"); err != nil {
			t.Fatal(err)
		}
	}
	payloads := []struct {
		dt   protocol.DataType
		data string
	}{
		{protocol.Text, "plain"},
		{protocol.Text, "é 😀 \"quoted\" \\ \n\t"},
		{protocol.Text, ""},
		{protocol.JSON, `{"a":[1,2]}`},
		{protocol.JSON, ` { "b" : [ 1.50 , -0, 1e3 ], "s": "\u00e9\n" } `},
		{protocol.JSON, `"just a string"`},
		{protocol.JSON, `false`},
		{protocol.Binary, "\x00\xff\x80 binary"},
		{protocol.Binary, ""},
	}
	check := func(what string, sender int) {
		t.Helper()
		var want client.Message
		for i, p := range protocols {
			got := next(t, evs[i].group, what+" on "+p.Name())
			if i == 0 {
				want = got
				continue
			}
			same := string(got.Data) == string(want.Data)
			if got.DataType == protocol.JSON {
				same = strings.TrimSpace(string(got.Data)) == strings.TrimSpace(string(want.Data))
			}
			if got.DataType != want.DataType || !same || got.Group != "g" {
				t.Errorf("%s: %s got %v %q, %s got %v %q", what, protocols[0].Name(), want.DataType, want.Data, p.Name(), got.DataType, got.Data)
			}
			wantFrom := ""
			if sender >= 0 && !isProtobuf(p) {
				wantFrom = "x"
			}
			if got.FromUserID != wantFrom {
				t.Errorf("%s: %s got fromUserId %q", what, p.Name(), got.FromUserID)
			}
		}
	}
	for _, m := range payloads {
		var msg pubsub.Message
		switch m.dt {
		case protocol.Text:
			msg = pubsub.TextMessage(m.data)
		case protocol.JSON:
			msg = pubsub.JSONMessage([]byte(m.data))
		case protocol.Binary:
			msg = pubsub.BinaryMessage([]byte(m.data))
		}
		if err := e.hub.SendToGroup(ctx, "g", msg); err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("server's %v %q", m.dt, m.data)
		check(what, -1)
		for s, p := range protocols {
			if err := clients[s].SendToGroup(ctx, "g", m.dt, []byte(m.data)); err != nil {
				t.Fatalf("%s sending %v %q: %v", p.Name(), m.dt, m.data, err)
			}
			check(fmt.Sprintf("%s's %v %q", p.Name(), m.dt, m.data), s)
		}
	}
}

// A request the service closes the connection over (too big: 1009) is not
// written again on new transports forever: after the first and three
// more, it fails with ErrConnectionLost, and the client goes on.
func TestTooBigRequestIsGivenUp(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.Name(), func(t *testing.T) {
			e := newEnv(t, pubsub.Config{MaxMessageSize: 4096})
			proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
			ev := newEvents()
			u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}}))
			c := start(t, u, client.Options{Protocol: p, RetryDelay: 10 * time.Millisecond, Logger: testLogger()})
			ctx := ctxFor(t)
			// The receiver, not through the proxy: the sender's new
			// connections rejoin the group on their own time.
			receiver := start(t, e.url(pubsub.TokenOptions{Roles: []string{"webpubsub.joinLeaveGroup"}}), ev.options(client.Options{}))
			if err := receiver.JoinGroup(ctx, "g"); err != nil {
				t.Fatal(err)
			}
			err := c.SendToGroup(ctx, "g", protocol.Binary, make([]byte, 8192))
			if !errors.Is(err, client.ErrConnectionLost) || ctx.Err() != nil || !strings.Contains(err.Error(), "1009") {
				t.Fatalf("a request too big: %v", err)
			}
			if n := proxy.Accepted(); n > 5 {
				t.Fatalf("%d transports for one request", n)
			}
			if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("small")); err != nil {
				t.Fatalf("after it: %v", err)
			}
			if m := next(t, ev.group, "the small message"); string(m.Data) != "small" {
				t.Fatalf("received %q", m.Data)
			}
		})
	}
}
