package pubsub_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

const reliableJSON = "json.reliable.webpubsub.azure.v1"

// reliableClient is a json.reliable client that recovers its connection the
// way the spec tells a client to, and drops duplicates by sequence id.
type reliableClient struct {
	t       *testing.T
	url     string
	c       *wstest.Client
	connID  string
	token   string
	lastSeq float64
	data    []string // the data of every message, once each, in order
	dups    int      // replayed messages it had already
}

func dialReliable(t *testing.T, u string) *reliableClient {
	t.Helper()
	c := wstest.Dial(t, u, nil, reliableJSON)
	m := c.NextJSON()
	if m["event"] != "connected" || m["reconnectionToken"] == nil || m["reconnectionToken"] == "" {
		t.Fatalf("connected %v", m)
	}
	if _, ok := m["sequenceId"]; ok {
		t.Fatal("a system message carries a sequenceId")
	}
	return &reliableClient{t: t, url: u, c: c, connID: m["connectionId"].(string), token: m["reconnectionToken"].(string)}
}

// take records a frame, dropping duplicates; it reports whether it was a
// new data message.
func (r *reliableClient) take(f wstest.Frame) bool {
	r.t.Helper()
	m := jsonOf(r.t, f)
	if m["type"] != "message" {
		if _, ok := m["sequenceId"]; ok {
			r.t.Fatalf("a %s frame carries a sequenceId", m["type"])
		}
		return false
	}
	seq, ok := m["sequenceId"].(float64)
	if !ok || seq == 0 {
		r.t.Fatalf("message without a sequenceId: %v", m)
	}
	if seq <= r.lastSeq {
		r.dups++
		return false // a replay of what arrived before the drop
	}
	if seq != r.lastSeq+1 {
		r.t.Fatalf("sequenceId %v after %v: a message was lost", seq, r.lastSeq)
	}
	r.lastSeq = seq
	r.data = append(r.data, fmt.Sprint(m["data"]))
	return true
}

// readUntil reads until n data messages have arrived in all.
func (r *reliableClient) readUntil(n int) {
	r.t.Helper()
	for len(r.data) < n {
		r.take(r.c.Next())
	}
}

func (r *reliableClient) ack() {
	r.c.Send(fmt.Sprintf(`{"type":"sequenceAck","sequenceId":%d}`, int(r.lastSeq)))
}

// lost waits for the transport to fail and keeps what arrived before.
func (r *reliableClient) lost() {
	r.t.Helper()
	info, frames := r.c.ExpectClose()
	if info.Code != 1006 {
		r.t.Fatalf("the drop closed with %+v", info)
	}
	for _, f := range frames {
		r.take(f)
	}
}

func (r *reliableClient) recoveryURL(connID, token string) string {
	return r.url + "&awps_connection_id=" + url.QueryEscape(connID) + "&awps_reconnection_token=" + url.QueryEscape(token)
}

func (r *reliableClient) recover() {
	r.t.Helper()
	r.c = wstest.Dial(r.t, r.recoveryURL(r.connID, r.token), nil, reliableJSON)
	if got := r.c.Conn.SubProtocol(); got != reliableJSON {
		r.t.Fatalf("recovered with subprotocol %q", got)
	}
}

func jsonOf(t *testing.T, f wstest.Frame) map[string]any {
	t.Helper()
	c := map[string]any{}
	if err := jsonUnmarshal(f.Data, &c); err != nil {
		t.Fatalf("frame is not JSON: %q", f.Data)
	}
	return c
}

func TestReliableRecoveryLosesNothing(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ctx := t.Context()
	r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Roles: allRoles, Groups: []string{"g"}})))

	send := func(from, to int) {
		for i := from; i <= to; i++ {
			must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(fmt.Sprintf("m%d", i))))
		}
	}
	send(1, 100)
	r.readUntil(60)
	r.ack() // 1..60 acknowledged; 61.. will be replayed and dropped as duplicates
	r.c.Send(`{"type":"ping"}`)
	for { // frames are handled in order: the pong proves the ack was
		f := r.c.Next()
		if !r.take(f) && strings.Contains(string(f.Data), `"pong"`) {
			break
		}
	}
	r.readUntil(100)

	proxy.Drop() // mid-stream: the server is still sending
	send(101, 200)
	r.lost()
	if ok, _ := e.hub.ConnectionExists(ctx, r.connID); !ok {
		t.Fatal("a connection between transports does not exist")
	}
	send(201, 300)
	r.recover()
	r.readUntil(300)
	if r.dups == 0 || r.dups > 40 {
		t.Fatalf("%d messages replayed twice: want the unacknowledged ones (61..100) at most", r.dups)
	}
	for i, d := range r.data {
		if d != fmt.Sprintf("m%d", i+1) {
			t.Fatalf("message %d is %s", i+1, d)
		}
	}

	// The logical connection kept its groups, user and permissions.
	send(301, 301)
	r.readUntil(301)
	r.c.Send(`{"type":"sendToGroup","group":"other","ackId":1,"dataType":"text","data":"x"}`)
	if f := r.c.Next(); !strings.Contains(string(f.Data), `"ackId":1,"success":true`) {
		t.Fatalf("ack %s", f.Data)
	}
	if ok, _ := e.hub.UserExists(ctx, "r"); !ok {
		t.Fatal("user lost")
	}
	// A repeated ackId is still known after the recovery.
	r.c.Send(`{"type":"sendToGroup","group":"other","ackId":1,"dataType":"text","data":"x"}`)
	if f := r.c.Next(); !strings.Contains(string(f.Data), "Duplicate") {
		t.Fatalf("ack %s", f.Data)
	}

	// Only the end of the logical connection is a disconnected event.
	select {
	case d := <-rec.disconnected:
		t.Fatalf("disconnected event on a transport drop: %+v", d)
	default:
	}
	r.c.Conn.WriteClose(1000, nil)
	if d := rec.nextDisconnect(t); d.Conn.ConnectionID != r.connID {
		t.Fatalf("disconnected %+v", d)
	}
	rec.mu.Lock()
	connected := len(rec.connected)
	rec.mu.Unlock()
	if connected != 1 {
		t.Fatalf("%d connected events, want 1", connected)
	}
	// A session closed with 1000 cannot be recovered.
	expectNotRecovered(t, r.recoveryURL(r.connID, r.token))
}

// expectNotRecovered dials a recovery URL and expects the 1008 close.
func expectNotRecovered(t *testing.T, u string) {
	t.Helper()
	c := wstest.Dial(t, u, nil, reliableJSON)
	if info, _ := c.ExpectClose(); info.Code != 1008 || info.Reason != "The connection could not be recovered." {
		t.Fatalf("recovery closed with %+v, want 1008", info)
	}
}

func TestReconnectionTokenCannotBeForgedOrReused(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	a := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "a"})))
	b := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "b"}))
	proxy.Drop()
	a.lost()
	expectNotRecovered(t, a.recoveryURL(a.connID, "forged"))
	expectNotRecovered(t, a.recoveryURL(a.connID, b.token)) // another connection's token
	expectNotRecovered(t, a.recoveryURL("no-such-connection", a.token))
	// The real token still works: the refusals changed nothing.
	a.recover()
	must(t, e.hub.SendToUser(t.Context(), "a", pubsub.TextMessage("back")))
	a.readUntil(1)
	// A non-reliable connection has nothing to recover.
	_, plainID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	expectNotRecovered(t, a.recoveryURL(plainID, a.token))
}

func TestRecoveryWindowExpires(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, RecoveryWindow: 100 * time.Millisecond})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "gone", Groups: []string{"g"}})))
	proxy.Drop()
	r.lost()
	d := rec.nextDisconnect(t) // raised when the window ends
	if d.Conn.ConnectionID != r.connID {
		t.Fatalf("disconnected %+v", d)
	}
	if ok, _ := e.hub.ConnectionExists(t.Context(), r.connID); ok {
		t.Fatal("an expired session still exists")
	}
	if ok, _ := e.hub.GroupExists(t.Context(), "g"); ok {
		t.Fatal("an expired session is still in its group")
	}
	expectNotRecovered(t, r.recoveryURL(r.connID, r.token))
}

func TestReliableBufferOverflow(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := t.Context()
	acking := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "acks", Groups: []string{"g"}}))
	silent := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "silent", Groups: []string{"g"}}))
	for i := 1; i <= 1500; i++ {
		must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(fmt.Sprint(i))))
		if i%100 == 0 {
			acking.readUntil(i)
			acking.ack()
			acking.c.Send(`{"type":"ping"}`) // the ack is handled before the pong comes
			for {
				if m := jsonOf(t, acking.c.Next()); m["type"] == "pong" {
					break
				}
			}
		}
	}
	// The client that never acknowledged is closed at message 1001.
	info, frames := silent.c.ExpectClose()
	if info.Code != 1008 || info.Reason != "The reliable message buffer is full." {
		t.Fatalf("close %+v", info)
	}
	for _, f := range frames {
		silent.take(f)
	}
	if len(silent.data) != 1000 {
		t.Fatalf("the silent client got %d messages before the close, want 1000", len(silent.data))
	}
	expectNotRecovered(t, silent.recoveryURL(silent.connID, silent.token))
	// The acknowledging client is still served.
	acking.readUntil(1500)
}

func TestReliableEventReplyAndPlainFrames(t *testing.T) {
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: []byte("reply")}, nil
		},
	}})
	r := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "u"}))
	must(t, e.hub.SendToConnection(t.Context(), r.connID, pubsub.TextMessage("first")))
	r.c.Send(`{"type":"event","event":"e","ackId":5,"dataType":"text","data":"x"}`)
	// The reply is a data message with the next sequence id, before the ack.
	want := []string{
		`{"sequenceId":1,"type":"message","from":"server","dataType":"text","data":"first"}`,
		`{"sequenceId":2,"type":"message","from":"server","dataType":"text","data":"reply"}`,
		`{"type":"ack","ackId":5,"success":true}`,
	}
	for _, w := range want {
		if f := r.c.Next(); string(f.Data) != w {
			t.Fatalf("got  %s\nwant %s", f.Data, w)
		}
	}
}
