package pubsub_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// rawPublisherURL is a client URL with a token of opts and the query
// parameters extra.
func rawPublisherURL(e *testEnv, opts pubsub.TokenOptions, extra string) string {
	return e.url(opts) + "&" + extra
}

// A raw publisher's frames reach a JSON member and a raw member of its group
// as exactly the frames a JSON client's sendToGroup would give: text as
// text, binary as binary, its user as fromUserId. No message event is
// raised.
func TestRawPublisherFramesReachTheGroup(t *testing.T) {
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			t.Errorf("user event %q from %s: a raw publisher's frames are messages", req.EventName, req.UserID)
			return nil, nil
		},
	}})
	room := pubsub.TokenOptions{Groups: []string{"room"}}
	member, _ := wstest.DialJSON(t, e.url(room))
	raw := wstest.Dial(t, e.url(room), nil)
	pub := wstest.Dial(t, rawPublisherURL(e, pubsub.TokenOptions{UserID: "pub", Roles: []string{"webpubsub.sendToGroup.room"}},
		"webpubsub_mode=sendToGroup&group=room"), nil)

	pub.Send(`{"not":"parsed"}`)
	if f := member.Next(); string(f.Data) != `{"type":"message","from":"group","group":"room","fromUserId":"pub","dataType":"text","data":"{\"not\":\"parsed\"}"}` {
		t.Fatalf("JSON member got %s", f.Data)
	}
	if f := raw.Next(); f.Binary || string(f.Data) != `{"not":"parsed"}` {
		t.Fatalf("raw member got binary=%v %q", f.Binary, f.Data)
	}
	pub.SendBinary([]byte{0, 1, 0xff})
	if f := member.Next(); string(f.Data) != `{"type":"message","from":"group","group":"room","fromUserId":"pub","dataType":"binary","data":"AAH/"}` {
		t.Fatalf("JSON member got %s", f.Data)
	}
	if f := raw.Next(); !f.Binary || string(f.Data) != "\x00\x01\xff" {
		t.Fatalf("raw member got binary=%v %q", f.Binary, f.Data)
	}
	// A publisher outside the group is sent nothing of its own.
	if err := e.hub.SendToUser(t.Context(), "pub", pubsub.TextMessage("barrier")); err != nil {
		t.Fatal(err)
	}
	if f := pub.Next(); string(f.Data) != "barrier" {
		t.Fatalf("publisher got %q before the barrier", f.Data)
	}
}

// A raw publisher in its own group gets its frames back, unless noEcho.
// Mode names and booleans are case-insensitive.
func TestRawPublisherNoEcho(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	member := wstest.Dial(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}), nil)
	pubOpts := func(user string) pubsub.TokenOptions {
		return pubsub.TokenOptions{UserID: user, Groups: []string{"room"}, Roles: []string{"webpubsub.sendToGroup"}}
	}

	echo := wstest.Dial(t, rawPublisherURL(e, pubOpts("echo"), "webpubsub_mode=sendToGroup&group=room&noEcho=false"), nil)
	echo.Send("a")
	if f := member.Next(); string(f.Data) != "a" {
		t.Fatalf("member got %q", f.Data)
	}
	if f := echo.Next(); string(f.Data) != "a" {
		t.Fatalf("publisher without noEcho got %q, want its own frame", f.Data)
	}

	quiet := wstest.Dial(t, rawPublisherURL(e, pubOpts("quiet"), "webpubsub_mode=SendToGroup&group=room&noEcho=TRUE"), nil)
	quiet.Send("b")
	quiet.Send("c")
	for _, want := range []string{"b", "c"} {
		if f := member.Next(); string(f.Data) != want {
			t.Fatalf("member got %q, want %q", f.Data, want)
		}
		if f := echo.Next(); string(f.Data) != want {
			t.Fatalf("the other publisher got %q, want %q", f.Data, want)
		}
	}
	// "c" reached the member, so "b" was fanned out in full (a connection's
	// frames are handled in order): had it been echoed, it would come first.
	if err := e.hub.SendToUser(t.Context(), "quiet", pubsub.TextMessage("barrier")); err != nil {
		t.Fatal(err)
	}
	if f := quiet.Next(); string(f.Data) != "barrier" {
		t.Fatalf("noEcho publisher got %q before the barrier", f.Data)
	}
}

// Without the send permission on the group the upgrade is refused with 403
// (after the connect event, whose roles count); an invalid mode query with
// 400 before the connect event. A PubSub client ignores webpubsub_mode.
func TestRawPublisherHandshake(t *testing.T) {
	var connects atomic.Int32
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnConnect: func(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
			connects.Add(1)
			if req.UserID == "granted-by-handler" {
				return &pubsub.ConnectResponse{Roles: []string{"webpubsub.sendToGroups.ro*"}}, nil
			}
			return nil, nil
		},
	}})
	mode := "webpubsub_mode=sendToGroup&group=room"

	t.Run("permission", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			opts  pubsub.TokenOptions
			want  int
			wantB string
		}{
			{"no role", pubsub.TokenOptions{}, http.StatusForbidden, "The client does not have permission to send to group 'room'.\n"},
			{"another group's role", pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroup.other", "webpubsub.joinLeaveGroup"}}, http.StatusForbidden, "The client does not have permission to send to group 'room'.\n"},
			{"the group's role", pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroup.room"}}, http.StatusSwitchingProtocols, ""},
			{"the connect handler's role", pubsub.TokenOptions{UserID: "granted-by-handler"}, http.StatusSwitchingProtocols, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := wstest.HandshakeResponse(t, rawPublisherURL(e, tc.opts, mode), nil)
				if status != tc.want || body != tc.wantB {
					t.Fatalf("got %d %q, want %d %q", status, body, tc.want, tc.wantB)
				}
			})
		}
	})

	t.Run("bad query", func(t *testing.T) {
		before := connects.Load()
		for query, wantBody := range map[string]string{
			"webpubsub_mode=publish":                                       `unknown webpubsub_mode "publish"`,
			"webpubsub_mode=sendToGroup":                                   "needs the group",
			"webpubsub_mode=sendToGroup&group=":                            "not a valid group name",
			"webpubsub_mode=sendToGroup&group=%20%20":                      "not a valid group name",
			"webpubsub_mode=sendToGroup&group=a&group=b":                   "takes one group",
			"webpubsub_mode=sendToGroup&group=room&noEcho=yes":             "noEcho must be given once, true or false",
			"webpubsub_mode=sendToGroup&webpubsub_mode=sendEvent&group=ro": "webpubsub_mode must be given once",
		} {
			t.Run(query, func(t *testing.T) {
				u := rawPublisherURL(e, pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroup"}}, query)
				status, body := wstest.HandshakeResponse(t, u, nil)
				if status != http.StatusBadRequest || !strings.Contains(body, wantBody) {
					t.Fatalf("got %d %q, want 400 with %q", status, body, wantBody)
				}
			})
		}
		if n := connects.Load() - before; n != 0 {
			t.Fatalf("%d connect events for refused queries", n)
		}
	})

	t.Run("an unauthenticated client is 401 first", func(t *testing.T) {
		u := e.wsURL() + "/client/hubs/chat?webpubsub_mode=bogus"
		if status, _ := wstest.HandshakeResponse(t, u, nil); status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", status)
		}
	})

	t.Run("a PubSub client ignores it", func(t *testing.T) {
		for _, query := range []string{"webpubsub_mode=bogus", mode} {
			c, id := wstest.DialJSON(t, rawPublisherURL(e, pubsub.TokenOptions{Groups: []string{"room"}}, query))
			c.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"x","ackId":1}`)
			c.ExpectAck(1, "Forbidden") // a JSON request as ever, not a raw message
			e.barrier(c, id)
		}
	})

	t.Run("sendEvent is the default", func(t *testing.T) {
		c := wstest.Dial(t, rawPublisherURL(e, pubsub.TokenOptions{}, "webpubsub_mode=SENDEVENT&group=room"), nil)
		c.Send("hello") // a message event, which has no handler here
		if info, _ := c.ExpectClose(); info.Code != 1011 {
			t.Fatalf("closed %+v, want 1011 (the message event failed)", info)
		}
	})
}

// sinceBarrier sends a marker to group and returns what member received
// before it.
func sinceBarrier(t *testing.T, e *testEnv, member *wstest.Client, group string) []string {
	t.Helper()
	if err := e.hub.SendToGroup(t.Context(), group, pubsub.TextMessage("barrier")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		f := member.Next()
		if string(f.Data) == "barrier" {
			return got
		}
		got = append(got, string(f.Data))
	}
}

// The permission is checked per frame: once revoked (Go API, as REST's
// revoke does), the next frame closes the publisher with 1008 and is not published.
func TestRawPublisherRevoked(t *testing.T) {
	ids := make(chan string, 1)
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnConnect: func(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
			if req.UserID == "pub" {
				ids <- req.ConnectionID
			}
			return nil, nil
		},
	}})
	member := wstest.Dial(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}), nil)
	pub := wstest.Dial(t, rawPublisherURL(e, pubsub.TokenOptions{UserID: "pub", Roles: []string{"webpubsub.sendToGroup"}},
		"webpubsub_mode=sendToGroup&group=room"), nil)
	id := <-ids
	pub.Send("before")
	if f := member.Next(); string(f.Data) != "before" {
		t.Fatalf("member got %q", f.Data)
	}
	if err := e.hub.RevokePermission(t.Context(), id, pubsub.PermissionSendToGroup, "room"); err != nil {
		t.Fatal(err)
	}
	pub.Send("after")
	info, _ := pub.ExpectClose()
	if info != (wstest.CloseInfo{Code: 1008, Reason: "Forbidden: the client does not have permission to send to its group."}) {
		t.Fatalf("closed %+v, want 1008 Forbidden", info)
	}
	if got := sinceBarrier(t, e, member, "room"); len(got) != 0 {
		t.Fatalf("member got %q from a publisher without the permission", got)
	}
}

// The rate limit applies as to any simple client: over it, closed 1008.
func TestRawPublisherRateLimited(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxMessagesPerSecond: 5})
	member := wstest.Dial(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}), nil)
	pub := wstest.Dial(t, rawPublisherURL(e, pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroup"}},
		"webpubsub_mode=sendToGroup&group=room"), nil)
	for range 20 {
		_ = pub.Conn.WriteString("x")
	}
	if info, _ := pub.ExpectClose(); info.Code != 1008 || !strings.Contains(info.Reason, "RateLimited") {
		t.Fatalf("closed %+v, want 1008 RateLimited", info)
	}
	if got := sinceBarrier(t, e, member, "room"); len(got) == 0 || len(got) >= 20 {
		t.Fatalf("member got %d of 20 frames sent over 5 per second", len(got))
	}
}
