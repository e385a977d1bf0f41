package upstream_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// Group presence events go, as CloudEvents azure.webpubsub.gp.joined and
// .left with the body {"group": ...}, to the first handler whose
// groupPresenceEvents take the event's name and group, in order with the
// connection's other non-blocking events; a handler without
// groupPresenceEvents gets none.
func TestGroupPresenceCloudEvents(t *testing.T) {
	rooms := newUpstream(t, nil)  // joined of room.* groups, with connected and disconnected
	others := newUpstream(t, nil) // joined of other groups, and every left
	none := newUpstream(t, nil)   // user events only
	cfg := upstream.Config{Hubs: map[string]upstream.HubSettings{"*": {EventHandlers: []upstream.EventHandlerSettings{
		{URLTemplate: none.srv.URL + "/{event}", UserEventPattern: "*"},
		{URLTemplate: rooms.srv.URL + "/api/{hub}/{event}", SystemEvents: []string{"connected", "disconnected"},
			GroupPresenceEvents: &upstream.GroupPresenceEvents{EventNames: []string{"Joined"}, GroupFilters: []string{"room.*"}}},
		{URLTemplate: others.srv.URL + "/{event}", GroupPresenceEvents: &upstream.GroupPresenceEvents{EventNames: []string{"joined", "left"}}},
	}}}}
	e := newEnv(t, cfg, upstream.Options{})
	c, id := wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{UserID: "u", Groups: []string{"room.a"}, Roles: []string{"webpubsub.joinLeaveGroup"}}))
	c.Send(`{"type":"joinGroup","group":"lobby","ackId":1}`)
	c.ExpectAck(1, "")
	c.Send(`{"type":"joinGroup","group":"room.b.c","ackId":2}`) // * stops at a dot: not room.*
	c.ExpectAck(2, "")
	c.Send(`{"type":"leaveGroup","group":"lobby","ackId":3}`)
	c.ExpectAck(3, "")
	c.Send(`{"type":"event","event":"e","ackId":4,"dataType":"text","data":"x"}`)
	c.ExpectAck(4, "")
	c.Conn.WriteClose(1000, nil)

	type ev struct{ name, group string }
	read := func(u *fakeUpstream, n int) (out []ev) {
		t.Helper()
		lastID := -1
		for range n {
			r := u.next(t)
			name := r.header.Get("ce-eventName")
			ceID, _ := strconv.Atoi(r.header.Get("ce-id"))
			if ceID <= lastID {
				t.Fatalf("ce-id %d after %d", ceID, lastID)
			}
			lastID = ceID
			if r.header.Get("ce-connectionId") != id || r.header.Get("ce-userId") != "u" || r.header.Get("ce-hub") != "chat" ||
				r.header.Get("ce-signature") != upstream.Sign(id, []string{primaryKey, secondaryKey}) {
				t.Fatalf("%s: headers %v", name, r.header)
			}
			var group string
			switch name {
			case "joined", "left":
				if r.header.Get("ce-type") != "azure.webpubsub.gp."+name || r.header.Get("Content-Type") != "application/json; charset=utf-8" {
					t.Fatalf("%s: ce-type %q, Content-Type %q", name, r.header.Get("ce-type"), r.header.Get("Content-Type"))
				}
				var body map[string]any
				if err := json.Unmarshal(r.body, &body); err != nil || len(body) != 1 {
					t.Fatalf("%s body %s", name, r.body)
				}
				group = body["group"].(string)
			}
			if u == rooms && r.path != "/api/chat/"+name {
				t.Fatalf("path %s", r.path)
			}
			out = append(out, ev{name, group})
		}
		return out
	}
	if got, want := read(rooms, 3), []ev{{"connected", ""}, {"joined", "room.a"}, {"disconnected", ""}}; !slices.Equal(got, want) {
		t.Fatalf("rooms got %v, want %v", got, want)
	}
	if got, want := read(others, 5), []ev{{"joined", "lobby"}, {"joined", "room.b.c"}, {"left", "lobby"}, {"left", "room.a"}, {"left", "room.b.c"}}; !slices.Equal(got, want) {
		t.Fatalf("others got %v, want %v", got, want)
	}
	if got := none.next(t).header.Get("ce-eventName"); got != "e" {
		t.Fatalf("none got %s", got)
	}
	shutdown(t, e.up) // everything queued was sent: nothing more
	if r, o, n := rooms.count(http.MethodPost), others.count(http.MethodPost), none.count(http.MethodPost); r != 3 || o != 5 || n != 1 {
		t.Fatalf("%d, %d and %d events", r, o, n)
	}
}

func TestGroupPresenceConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"hubs": {"chat": {"eventHandlers": [{"urlTemplate": "http://x/{event}",
		"groupPresenceEvents": {"eventNames": ["joined", "left"], "groupFilters": ["room.*", "a\\*b", "**"]}}]}}}`), 0o600)
	cfg, err := upstream.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if gp := cfg.Hubs["chat"].EventHandlers[0].GroupPresenceEvents; gp == nil || len(gp.EventNames) != 2 || len(gp.GroupFilters) != 3 {
		t.Fatalf("groupPresenceEvents %+v", gp)
	}
	for _, bad := range []string{
		`{"eventNames": ["kicked"]}`,
		`{"eventNames": ["joined"], "groupFilters": [""]}`,
		`{"eventNames": ["joined"], "groupFilters": ["a\\b"]}`,
		`{"eventNames": ["joined"], "groupFilters": ["**.**.**"]}`,
		`{"eventNames": ["joined"], "groupFilter": ["x"]}`,
	} {
		os.WriteFile(path, []byte(`{"hubs": {"h": {"eventHandlers": [{"urlTemplate": "http://x/", "groupPresenceEvents": `+bad+`}]}}}`), 0o600)
		if _, err := upstream.LoadConfig(path); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
