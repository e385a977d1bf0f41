package pubsub_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// recorder is an in-process event handler that records what it is called with.
type recorder struct {
	mu           sync.Mutex
	connects     []*pubsub.ConnectRequest
	connected    []pubsub.ConnectionContext
	disconnected chan disconnectEvent
	events       []*pubsub.UserEventRequest

	onConnect func(*pubsub.ConnectRequest) (*pubsub.ConnectResponse, error)
	onEvent   func(*pubsub.UserEventRequest) (*pubsub.UserEventResponse, error)
}

type disconnectEvent struct {
	Conn   pubsub.ConnectionContext
	reason string
}

func newRecorder() *recorder { return &recorder{disconnected: make(chan disconnectEvent, 64)} }

func (r *recorder) Connect(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
	r.mu.Lock()
	r.connects = append(r.connects, req)
	r.mu.Unlock()
	if r.onConnect == nil {
		return nil, pubsub.ErrNoEventHandler
	}
	return r.onConnect(req)
}

func (r *recorder) Connected(_ context.Context, c pubsub.ConnectionContext) {
	r.mu.Lock()
	r.connected = append(r.connected, c)
	r.mu.Unlock()
}

func (r *recorder) Disconnected(_ context.Context, c pubsub.ConnectionContext, reason string) {
	r.disconnected <- disconnectEvent{c, reason}
}

func (r *recorder) UserEvent(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
	r.mu.Lock()
	r.events = append(r.events, req)
	r.mu.Unlock()
	if r.onEvent == nil {
		return nil, pubsub.ErrNoEventHandler
	}
	return r.onEvent(req)
}

func (r *recorder) nextDisconnect(t *testing.T) disconnectEvent {
	t.Helper()
	select {
	case d := <-r.disconnected:
		return d
	case <-timeAfter():
		t.Fatal("no disconnected event")
	}
	return disconnectEvent{}
}

func strptr(s string) *string { return &s }

func TestConnectEventRefuses(t *testing.T) {
	rec := newRecorder()
	rec.onConnect = func(req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
		switch req.UserID {
		case "intruder":
			return nil, pubsub.RejectConnect(http.StatusUnauthorized, "who are you")
		case "banned":
			return nil, pubsub.RejectConnect(http.StatusForbidden, "banned")
		case "broken":
			return nil, errors.New("database down")
		}
		return nil, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	for user, want := range map[string]int{"intruder": 401, "banned": 403, "broken": 500, "fine": 101} {
		if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{UserID: user}), nil); got != want {
			t.Errorf("%s: status %d, want %d", user, got, want)
		}
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "fine" {
		t.Fatalf("disconnected for %q: refused connections must not raise it", d.Conn.UserID)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.connected) != 1 || rec.connected[0].UserID != "fine" {
		t.Fatalf("connected events %v", rec.connected)
	}
}

func TestConnectEventRequestAndOverrides(t *testing.T) {
	rec := newRecorder()
	rec.onConnect = func(req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
		return &pubsub.ConnectResponse{
			UserID:          strptr("overridden"),
			Groups:          []string{"from-handler"},
			Roles:           []string{"webpubsub.sendToGroup.from-handler"},
			Subprotocol:     "json.webpubsub.azure.v1",
			ConnectionState: strptr("state-1"),
		}, nil
	}
	rec.onEvent = func(req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
		return &pubsub.UserEventResponse{ConnectionState: strptr(req.ConnectionState + "+" + req.EventName)}, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	u := e.url(pubsub.TokenOptions{UserID: "token-user", Roles: []string{"webpubsub.joinLeaveGroup"}, Groups: []string{"from-token"}}) + "&foo=bar"
	c := wstest.Dial(t, u, http.Header{"X-Custom": {"yes"}}, "custom.one", "json.webpubsub.azure.v1")
	m := c.NextJSON()
	if m["userId"] != "overridden" || c.Conn.SubProtocol() != "json.webpubsub.azure.v1" {
		t.Fatalf("connected %v, subprotocol %q", m, c.Conn.SubProtocol())
	}
	id := m["connectionId"].(string)

	rec.mu.Lock()
	req := rec.connects[0]
	rec.mu.Unlock()
	if req.UserID != "token-user" || req.ConnectionID != id || req.Hub != "chat" {
		t.Fatalf("connect context %+v", req.ConnectionContext)
	}
	if req.Claims["sub"][0] != "token-user" || req.Claims["role"][0] != "webpubsub.joinLeaveGroup" || req.Claims["aud"][0] != e.srv.URL+"/client/hubs/chat" {
		t.Fatalf("claims %v", req.Claims)
	}
	if req.Query["foo"][0] != "bar" || req.Query["access_token"] != nil {
		t.Fatalf("query %v", req.Query)
	}
	if req.Headers["X-Custom"][0] != "yes" {
		t.Fatalf("headers %v", req.Headers)
	}
	if strings.Join(req.Subprotocols, ",") != "custom.one,json.webpubsub.azure.v1" {
		t.Fatalf("subprotocols %v", req.Subprotocols)
	}

	// The handler's groups and roles replaced the token's.
	if ok, _ := e.hub.UserExists(t.Context(), "overridden"); !ok {
		t.Fatal("user override not applied")
	}
	if ok, _ := e.hub.GroupExists(t.Context(), "from-token"); ok {
		t.Fatal("token groups were not replaced")
	}
	if ok, _ := e.hub.GroupExists(t.Context(), "from-handler"); !ok {
		t.Fatal("handler groups not joined")
	}
	c.Send(`{"type":"joinGroup","group":"x","ackId":1}`)
	c.ExpectAck(1, "Forbidden") // token role replaced
	c.Send(`{"type":"sendToGroup","group":"from-handler","ackId":2,"noEcho":true,"data":1}`)
	c.ExpectAck(2, "")

	// Connection state flows from the connect response into every later event.
	c.Send(`{"type":"event","event":"a","ackId":3,"data":1}`)
	c.ExpectAck(3, "")
	c.Send(`{"type":"event","event":"b","ackId":4,"data":1}`)
	c.ExpectAck(4, "")
	rec.mu.Lock()
	states := []string{rec.connected[0].ConnectionState, rec.events[0].ConnectionState, rec.events[1].ConnectionState}
	rec.mu.Unlock()
	if strings.Join(states, "|") != "state-1|state-1|state-1+a" {
		t.Fatalf("states %v", states)
	}
	c.Conn.WriteClose(1000, nil)
	d := rec.nextDisconnect(t)
	if d.Conn.ConnectionID != id || d.Conn.ConnectionState != "state-1+a+b" {
		t.Fatalf("disconnected %+v", d)
	}
}

func TestConnectEventBadSubprotocolChoice(t *testing.T) {
	rec := newRecorder()
	rec.onConnect = func(*pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
		return &pubsub.ConnectResponse{Subprotocol: "never.offered"}, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{}), http.Header{"Sec-Websocket-Protocol": {"json.webpubsub.azure.v1"}}); got != 500 {
		t.Fatalf("status %d, want 500", got)
	}
}

func TestSubprotocolNegotiation(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	for _, tc := range []struct {
		offered []string
		want    string
	}{
		{[]string{"json.webpubsub.azure.v1"}, "json.webpubsub.azure.v1"},
		{[]string{"json.reliable.webpubsub.azure.v1"}, "json.reliable.webpubsub.azure.v1"},
		{[]string{"protobuf.webpubsub.azure.v1"}, "protobuf.webpubsub.azure.v1"},
		{[]string{"protobuf.reliable.webpubsub.azure.v1"}, "protobuf.reliable.webpubsub.azure.v1"},
		{[]string{"custom", "protobuf.webpubsub.azure.v1", "json.webpubsub.azure.v1"}, "protobuf.webpubsub.azure.v1"}, // the first predefined
		{[]string{"JSON.WebPubSub.Azure.V1"}, "JSON.WebPubSub.Azure.V1"},                                              // matched case-insensitively, echoed as offered
	} {
		c := wstest.Dial(t, e.url(pubsub.TokenOptions{}), nil, tc.offered...)
		if got := c.Conn.SubProtocol(); got != tc.want {
			t.Fatalf("offered %v: negotiated %q, want %q", tc.offered, got, tc.want)
		}
	}
}

func TestUserEvents(t *testing.T) {
	rec := newRecorder()
	rec.onEvent = func(req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
		switch string(req.Data) {
		case "fail", `"fail"`:
			return nil, errors.New("upstream failed")
		case "silent", `"silent"`:
			return nil, nil
		case "\x00\x01":
			return &pubsub.UserEventResponse{DataType: pubsub.DataTypeBinary, Data: []byte{7, 7}}, nil
		}
		return &pubsub.UserEventResponse{DataType: pubsub.DataTypeJSON, Data: []byte(`{"echo":` + quote(req.EventName) + `}`)}, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})

	t.Run("PubSub client: reply before the ack", func(t *testing.T) {
		c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "u1"}))
		c.Send(`{"type":"event","event":"greet","ackId":1,"dataType":"text","data":"hello"}`)
		if f := c.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"json","data":{"echo":"greet"}}` {
			t.Fatalf("reply %s", f.Data)
		}
		c.ExpectAck(1, "")
		rec.mu.Lock()
		got := rec.events[len(rec.events)-1]
		rec.mu.Unlock()
		if got.EventName != "greet" || got.DataType != pubsub.DataTypeText || string(got.Data) != "hello" || got.UserID != "u1" || got.ConnectionID != id {
			t.Fatalf("event %+v", got)
		}
		c.Send(`{"type":"event","event":"greet","ackId":2,"dataType":"binary","data":"AAE="}`)
		if f := c.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"binary","data":"Bwc="}` {
			t.Fatalf("binary reply %s", f.Data)
		}
		c.ExpectAck(2, "")
		c.Send(`{"type":"event","event":"greet","ackId":3,"dataType":"text","data":"silent"}`)
		c.ExpectAck(3, "") // no reply, just the ack
		c.Send(`{"type":"event","event":"greet","ackId":4,"dataType":"text","data":"fail"}`)
		c.ExpectAck(4, "InternalServerError")
		// Without ackId a failure is only logged; the connection stays.
		c.Send(`{"type":"event","event":"greet","dataType":"text","data":"fail"}`)
		e.barrier(c, id)
	})

	t.Run("simple client: raw reply", func(t *testing.T) {
		c := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "u2"}), nil)
		c.Send("hi")
		if f := c.Next(); f.Binary || string(f.Data) != `{"echo":"message"}` {
			t.Fatalf("reply %v %q", f.Binary, f.Data)
		}
		c.SendBinary([]byte{0, 1})
		if f := c.Next(); !f.Binary || string(f.Data) != "\x07\x07" {
			t.Fatalf("reply %v %q", f.Binary, f.Data)
		}
		rec.mu.Lock()
		got := rec.events[len(rec.events)-1]
		rec.mu.Unlock()
		if got.EventName != "message" || got.DataType != pubsub.DataTypeBinary {
			t.Fatalf("event %+v", got)
		}
		c.Send("fail")
		if info, _ := c.ExpectClose(); info.Code != 1011 {
			t.Fatalf("close %d, want 1011", info.Code)
		}
	})
}

func TestSimpleClientWithoutHandlerIsClosed(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	c := wstest.Dial(t, e.url(pubsub.TokenOptions{}), nil)
	c.Send("anyone?")
	info, frames := c.ExpectClose()
	if info.Code != 1011 || len(frames) != 0 {
		t.Fatalf("close %d with %d frames, want 1011 and no system message", info.Code, len(frames))
	}
}

func TestUserEventsOfOneConnectionAreHandledInOrder(t *testing.T) {
	rec := newRecorder()
	var mu sync.Mutex
	inFlight := 0
	rec.onEvent = func(req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
		mu.Lock()
		inFlight++
		parallel := inFlight > 1
		mu.Unlock()
		defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
		if parallel {
			return nil, errors.New("two events of one connection ran in parallel")
		}
		return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: req.Data}, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	const n = 200
	for i := 1; i <= n; i++ {
		c.Send(`{"type":"event","event":"seq","ackId":` + itoa(i) + `,"dataType":"text","data":"` + itoa(i) + `"}`)
	}
	for i := 1; i <= n; i++ {
		if m := c.NextJSON(); m["data"] != itoa(i) {
			t.Fatalf("reply %d: %v", i, m)
		}
		c.ExpectAck(i, "")
	}
}

func TestDisconnectedEventReasons(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	if err := e.hub.CloseConnection(t.Context(), id, "bye now"); err != nil {
		t.Fatal(err)
	}
	info, frames := c.ExpectClose()
	if info.Code != 1000 || info.Reason != "bye now" || len(frames) != 1 || string(frames[0].Data) != `{"type":"system","event":"disconnected","message":"bye now"}` {
		t.Fatalf("close %+v, frames %d", info, len(frames))
	}
	if d := rec.nextDisconnect(t); d.reason != "bye now" || d.Conn.ConnectionID != id {
		t.Fatalf("disconnected %+v", d)
	}
	c2, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	c2.Conn.WriteClose(1000, []byte("client done"))
	if d := rec.nextDisconnect(t); d.reason != "client done" {
		t.Fatalf("client close reason %q", d.reason)
	}
}

func TestPanickingEventHandlerHurtsOnlyItsConnection(t *testing.T) {
	e := newEnv(t, pubsub.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), EventHandler: pubsub.EventHandlerFuncs{
		OnConnect: func(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
			if req.UserID == "boom" {
				panic("connect bug")
			}
			return nil, nil
		},
		OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			panic("user event bug")
		},
		OnDisconnected: func(context.Context, pubsub.ConnectionContext, string) { panic("disconnected bug") },
	}})
	if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{UserID: "boom"}), nil); got != 500 {
		t.Fatalf("panicking connect: status %d, want 500", got)
	}
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	c.Send(`{"type":"event","event":"e","ackId":1,"data":1}`)
	c.ExpectAck(1, "InternalServerError")
	e.barrier(c, id)
}
