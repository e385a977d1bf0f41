package pubsub_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

var allRoles = []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}

func TestConnectedMessage(t *testing.T) {
	e := newEnv(t, pubsub.Config{AllowAnonymous: true})
	c := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "alice"}), nil, "json.webpubsub.azure.v1")
	m := c.NextJSON()
	if m["type"] != "system" || m["event"] != "connected" || m["userId"] != "alice" || len(m["connectionId"].(string)) == 0 {
		t.Fatalf("connected message %v", m)
	}
	if _, ok := m["reconnectionToken"]; ok {
		t.Fatal("a non-reliable client got a reconnection token")
	}
	anon := wstest.Dial(t, e.wsURL()+"/client/hubs/chat", nil, "json.webpubsub.azure.v1")
	if m := anon.NextJSON(); m["userId"] != nil {
		t.Fatalf("anonymous userId %v, want null", m["userId"])
	}
}

func TestJoinSendLeave(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	alice, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alice", Roles: allRoles}))
	bob, bobID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "bob", Roles: allRoles}))

	alice.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	alice.ExpectAck(1, "")
	bob.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	bob.ExpectAck(1, "")
	// Joining twice succeeds and changes nothing.
	bob.Send(`{"type":"joinGroup","group":"room","ackId":2}`)
	bob.ExpectAck(2, "")

	for i, tc := range []struct{ dataType, data, want string }{
		{"text", `"hello"`, `"hello"`},
		{"json", `{"a": [1, 2]}`, `{"a":[1,2]}`},
		{"binary", `"` + base64.StdEncoding.EncodeToString([]byte{0, 1, 2}) + `"`, `"AAEC"`},
		{"", `42`, `42`}, // dataType defaults to json
		// Far larger than a connection's read buffer.
		{"text", quote(strings.Repeat("y", 64<<10)), quote(strings.Repeat("y", 64<<10))},
	} {
		ack := 10 + i
		alice.Send(fmt.Sprintf(`{"type":"sendToGroup","group":"room","ackId":%d,"dataType":%q,"data":%s}`, ack, tc.dataType, tc.data))
		for _, c := range []*wstest.Client{alice, bob} { // no noEcho: the sender gets it too
			f := c.Next()
			wantType := tc.dataType
			if wantType == "" {
				wantType = "json"
			}
			want := fmt.Sprintf(`{"type":"message","from":"group","group":"room","fromUserId":"alice","dataType":%q,"data":%s}`, wantType, tc.want)
			if string(f.Data) != want {
				t.Fatalf("got %s\nwant %s", f.Data, want)
			}
			if c == alice {
				alice.ExpectAck(ack, "")
			}
		}
	}

	// noEcho leaves the sender out.
	alice.Send(`{"type":"sendToGroup","group":"room","ackId":20,"noEcho":true,"dataType":"text","data":"quiet"}`)
	if m := bob.NextJSON(); m["data"] != "quiet" {
		t.Fatalf("bob got %v", m)
	}
	alice.ExpectAck(20, "")

	// After leaving, bob no longer receives the group's messages.
	bob.Send(`{"type":"leaveGroup","group":"room","ackId":3}`)
	bob.ExpectAck(3, "")
	alice.Send(`{"type":"sendToGroup","group":"room","ackId":21,"noEcho":true,"dataType":"text","data":"gone"}`)
	alice.ExpectAck(21, "")
	e.barrier(bob, bobID)
	// Leaving a group one is not in succeeds.
	bob.Send(`{"type":"leaveGroup","group":"room","ackId":4}`)
	bob.ExpectAck(4, "")
	// A sender needs no membership.
	bob.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"from outside"}`)
	if m := alice.NextJSON(); m["data"] != "from outside" || m["fromUserId"] != "bob" {
		t.Fatalf("alice got %v", m)
	}
}

func TestAckErrors(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	member, memberID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "m", Roles: allRoles, Groups: []string{"room"}}))
	norole, noroleID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "n"}))

	t.Run("Forbidden changes nothing", func(t *testing.T) {
		norole.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
		m := norole.ExpectAck(1, "Forbidden")
		if msg := m["error"].(map[string]any)["message"].(string); !strings.Contains(msg, "room") {
			t.Fatalf("message %q does not name the group", msg)
		}
		if members, _ := e.hub.ListConnectionsInGroup(t.Context(), "room"); len(members) != 1 || members[0].ConnectionID != memberID {
			t.Fatalf("members after a refused join: %v", members)
		}
		norole.Send(`{"type":"sendToGroup","group":"room","ackId":2,"dataType":"text","data":"x"}`)
		norole.ExpectAck(2, "Forbidden")
		e.barrier(member, memberID) // nothing was delivered
		e.hub.AddConnectionToGroup(t.Context(), noroleID, "room")
		norole.Send(`{"type":"leaveGroup","group":"room","ackId":3}`)
		norole.ExpectAck(3, "Forbidden")
		if ok, _ := e.hub.GroupExists(t.Context(), "room"); !ok {
			t.Fatal("room vanished")
		}
		members, _ := e.hub.ListConnectionsInGroup(t.Context(), "room")
		if len(members) != 2 {
			t.Fatalf("a refused leave changed the group: %v", members)
		}
		// Forbidden requests without ackId are silently refused.
		norole.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"x"}`)
		e.barrier(norole, noroleID)
		e.barrier(member, memberID)
	})

	t.Run("Duplicate is not performed again", func(t *testing.T) {
		member.Send(`{"type":"sendToGroup","group":"room","ackId":7,"noEcho":true,"dataType":"text","data":"once"}`)
		member.ExpectAck(7, "")
		if m := norole.NextJSON(); m["data"] != "once" {
			t.Fatalf("got %v", m)
		}
		member.Send(`{"type":"sendToGroup","group":"room","ackId":7,"noEcho":true,"dataType":"text","data":"once"}`)
		m := member.ExpectAck(7, "Duplicate")
		if msg := m["error"].(map[string]any)["message"]; msg != "Message with ack-id: 7 has been processed" {
			t.Fatalf("duplicate message %q", msg)
		}
		e.barrier(norole, noroleID) // the repeat was not delivered
	})

	t.Run("InternalServerError may be retried", func(t *testing.T) {
		member.Send(`{"type":"event","event":"ping-upstream","ackId":9,"dataType":"text","data":"x"}`)
		member.ExpectAck(9, "InternalServerError") // no event handler
		member.Send(`{"type":"joinGroup","group":"other","ackId":9}`)
		member.ExpectAck(9, "") // a failed ackId is not a duplicate
	})
}

func TestPingPong(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	c.Send(`{"type":"ping"}`)
	if f := c.Next(); string(f.Data) != `{"type":"pong"}` {
		t.Fatalf("got %s", f.Data)
	}
}

func TestMalformedFramesCloseOnlyTheSender(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	watcher, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}))
	cases := []struct {
		name   string
		frame  string
		binary bool
		code   uint16
	}{
		{"not JSON", `{"type":`, false, 1007},
		{"not an object", `[1,2]`, false, 1007},
		{"no type", `{"group":"room"}`, false, 1007},
		{"join without group", `{"type":"joinGroup","ackId":1}`, false, 1007},
		{"whitespace group", `{"type":"joinGroup","group":"   "}`, false, 1007},
		{"group too long", `{"type":"joinGroup","group":"` + strings.Repeat("g", 1025) + `"}`, false, 1007},
		{"string ackId", `{"type":"joinGroup","group":"g","ackId":"1"}`, false, 1007},
		{"negative ackId", `{"type":"joinGroup","group":"g","ackId":-1}`, false, 1007},
		{"fractional ackId", `{"type":"joinGroup","group":"g","ackId":1.5}`, false, 1007},
		{"noEcho not a boolean", `{"type":"sendToGroup","group":"g","noEcho":"yes","data":1}`, false, 1007},
		{"unknown dataType", `{"type":"sendToGroup","group":"g","dataType":"xml","data":"<a/>"}`, false, 1007},
		{"text data not a string", `{"type":"sendToGroup","group":"g","dataType":"text","data":1}`, false, 1007},
		{"binary data not base64", `{"type":"sendToGroup","group":"g","dataType":"binary","data":"***"}`, false, 1007},
		{"json data null", `{"type":"sendToGroup","group":"g","dataType":"json","data":null}`, false, 1007},
		{"bad event name", `{"type":"event","event":"1bad","data":1}`, false, 1007},
		{"binary frame", `{"type":"ping"}`, true, 1003},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
			if tc.binary {
				c.SendBinary([]byte(tc.frame))
			} else {
				c.Send(tc.frame)
			}
			info, frames := c.ExpectClose()
			if info.Code != tc.code {
				t.Fatalf("close code %d (%q), want %d", info.Code, info.Reason, tc.code)
			}
			if len(frames) != 1 || !strings.Contains(string(frames[0].Data), `"event":"disconnected"`) {
				t.Fatalf("want one disconnected message before the close, got %d frames", len(frames))
			}
		})
	}
	// The other client of the group still gets its messages.
	if err := e.hub.SendToGroup(t.Context(), "room", pubsub.TextMessage("still here")); err != nil {
		t.Fatal(err)
	}
	if m := watcher.NextJSON(); m["data"] != "still here" {
		t.Fatalf("watcher got %v", m)
	}
}

func TestMessageTooLarge(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxMessageSize: 1024})
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
	c.Send(`{"type":"sendToGroup","group":"g","dataType":"text","data":"` + strings.Repeat("x", 2048) + `"}`)
	if info, _ := c.ExpectClose(); info.Code != 1009 {
		t.Fatalf("close code %d, want 1009", info.Code)
	}
}

func TestSimpleAndPubSubClientsInOneGroup(t *testing.T) {
	// A connect handler picks the custom subprotocol when it is offered
	// (spec §3 rule 3): that client is a simple client.
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnConnect: func(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
			if slices.Contains(req.Subprotocols, "my.custom.protocol") {
				return &pubsub.ConnectResponse{Subprotocol: "my.custom.protocol"}, nil
			}
			return nil, nil
		},
	}})
	jsonClient, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "j", Roles: allRoles, Groups: []string{"room"}}))
	simple := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "s", Groups: []string{"room"}}), nil)
	custom := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "c", Groups: []string{"room"}}), nil, "my.custom.protocol")
	if custom.Conn.SubProtocol() != "my.custom.protocol" {
		t.Fatalf("custom subprotocol not accepted: %q", custom.Conn.SubProtocol())
	}
	ctx := context.Background()

	// The conversion matrix (spec §6.3) for every producer of this issue.
	type want struct {
		jsonFrame string // what the JSON receiver gets
		binary    bool   // simple receivers: binary frame?
		raw       string // simple receivers: the payload
	}
	producers := []struct {
		name    string
		produce func()
		want    want
	}{
		{"JSON client text", func() {
			jsonClient.Send(`{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"text","data":"hi"}`)
		}, want{`{"type":"message","from":"group","group":"room","fromUserId":"j","dataType":"text","data":"hi"}`, false, "hi"}},
		{"JSON client json", func() {
			jsonClient.Send(`{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"json","data":"Hello"}`)
		}, want{`{"type":"message","from":"group","group":"room","fromUserId":"j","dataType":"json","data":"Hello"}`, false, `"Hello"`}},
		{"JSON client binary", func() {
			jsonClient.Send(`{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"binary","data":"AAH/"}`)
		}, want{`{"type":"message","from":"group","group":"room","fromUserId":"j","dataType":"binary","data":"AAH/"}`, true, "\x00\x01\xff"}},
		{"Go API text", func() { e.hub.SendToGroup(ctx, "room", pubsub.TextMessage("t")) },
			want{`{"type":"message","from":"group","group":"room","dataType":"text","data":"t"}`, false, "t"}},
		{"Go API json", func() { e.hub.SendToGroup(ctx, "room", pubsub.JSONMessage([]byte(`{"k":true}`))) },
			want{`{"type":"message","from":"group","group":"room","dataType":"json","data":{"k":true}}`, false, `{"k":true}`}},
		{"Go API binary", func() { e.hub.SendToGroup(ctx, "room", pubsub.BinaryMessage([]byte{9, 8})) },
			want{`{"type":"message","from":"group","group":"room","dataType":"binary","data":"CQg="}`, true, "\x09\x08"}},
	}
	for _, p := range producers {
		t.Run(p.name, func(t *testing.T) {
			p.produce()
			if p.name[:2] == "Go" {
				if f := jsonClient.Next(); string(f.Data) != p.want.jsonFrame {
					t.Fatalf("JSON receiver got %s, want %s", f.Data, p.want.jsonFrame)
				}
			}
			for _, c := range []*wstest.Client{simple, custom} {
				f := c.Next()
				if f.Binary != p.want.binary || string(f.Data) != p.want.raw {
					t.Fatalf("simple receiver got binary=%v %q, want binary=%v %q", f.Binary, f.Data, p.want.binary, p.want.raw)
				}
			}
		})
	}
	// And the JSON client receives what the Go API sends to it directly.
	e.hub.SendToUser(ctx, "j", pubsub.TextMessage("direct"))
	if f := jsonClient.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"text","data":"direct"}` {
		t.Fatalf("got %s", f.Data)
	}
}

// Several senders at once to simple, JSON and reliable JSON clients: each
// client gets every message, each sender's in the order it was sent, and a
// reliable client's sequence ids count up without a gap — whether a frame
// went out alone, coalesced with others, or after a requeue.
func TestConcurrentSendersKeepEachSendersOrder(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	const senders, perSender = 4, 200 // 800: within a reliable client's unacknowledged 1,000
	room := pubsub.TokenOptions{Groups: []string{"room"}}
	type receiver struct {
		c    *wstest.Client
		kind string
	}
	var rs []receiver
	for range 3 {
		rs = append(rs, receiver{wstest.Dial(t, e.url(room), nil), "simple"})
		c, _ := wstest.DialJSON(t, e.url(room))
		rs = append(rs, receiver{c, "json"})
		rs = append(rs, receiver{dialReliable(t, e.url(room)).c, "reliable"})
	}
	var wg sync.WaitGroup
	defer wg.Wait() // before the service shuts down, even when the test fails
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range perSender {
				if err := e.hub.SendToGroup(context.Background(), "room", pubsub.TextMessage(fmt.Sprintf("%d:%d", s, n))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for _, r := range rs {
		next := make([]int, senders)
		for i := range senders * perSender {
			f := r.c.Next()
			data := string(f.Data)
			if r.kind != "simple" {
				m := jsonOf(t, f)
				data, _ = m["data"].(string)
				if seq, _ := m["sequenceId"].(float64); r.kind == "reliable" && int(seq) != i+1 {
					t.Fatalf("reliable client: sequenceId %v, want %d", m["sequenceId"], i+1)
				}
			}
			var s, n int
			if _, err := fmt.Sscanf(data, "%d:%d", &s, &n); err != nil || s < 0 || s >= senders {
				t.Fatalf("%s client: frame %q", r.kind, f.Data)
			}
			if n != next[s] {
				t.Fatalf("%s client: sender %d's message %d came when %d was due", r.kind, s, n, next[s])
			}
			next[s]++
		}
	}
}
