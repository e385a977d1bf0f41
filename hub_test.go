package pubsub_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

func TestGoAPISends(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := t.Context()
	a1, a1ID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alice", Groups: []string{"g"}}))
	a2, a2ID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alice"}))
	b, bID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "bob", Groups: []string{"g"}}))
	all := map[string]*wstest.Client{a1ID: a1, a2ID: a2, bID: b}

	// expect checks that exactly the listed connections got text, in a frame
	// of the given shape, and no one else did.
	expect := func(text, from string, got ...string) {
		t.Helper()
		for id, c := range all {
			if !slices.Contains(got, id) {
				e.barrier(c, id)
				continue
			}
			m := c.NextJSON()
			if m["data"] != text || m["from"] != from {
				t.Fatalf("%s got %v, want %q from %s", id, m, text, from)
			}
		}
	}

	must(t, e.hub.SendToAll(ctx, pubsub.TextMessage("all")))
	expect("all", "server", a1ID, a2ID, bID)
	must(t, e.hub.SendToAll(ctx, pubsub.TextMessage("all-but"), pubsub.Excluding(a1ID, bID)))
	expect("all-but", "server", a2ID)
	must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("group")))
	expect("group", "group", a1ID, bID)
	must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("group-but"), pubsub.Excluding(bID)))
	expect("group-but", "group", a1ID)
	must(t, e.hub.SendToUser(ctx, "alice", pubsub.TextMessage("user")))
	expect("user", "server", a1ID, a2ID)
	must(t, e.hub.SendToConnection(ctx, bID, pubsub.TextMessage("conn")))
	expect("conn", "server", bID)

	// Sending to nobody is not an error.
	must(t, e.hub.SendToGroup(ctx, "empty", pubsub.TextMessage("x")))
	must(t, e.hub.SendToUser(ctx, "nobody", pubsub.TextMessage("x")))
	must(t, e.hub.SendToConnection(ctx, "missing", pubsub.TextMessage("x")))

	// Bad input is a sentinel error.
	for name, err := range map[string]error{
		"invalid JSON": e.hub.SendToAll(ctx, pubsub.JSONMessage([]byte("{nope"))),
		"empty group":  e.hub.SendToGroup(ctx, " ", pubsub.TextMessage("x")),
		"empty user":   e.hub.SendToUser(ctx, "", pubsub.TextMessage("x")),
		"empty conn":   e.hub.SendToConnection(ctx, "", pubsub.TextMessage("x")),
	} {
		var want error
		switch name {
		case "invalid JSON":
			want = pubsub.ErrInvalidMessage
		case "empty group":
			want = pubsub.ErrInvalidGroup
		case "empty user":
			want = pubsub.ErrInvalidUser
		case "empty conn":
			want = pubsub.ErrInvalidConnection
		}
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	if _, err := e.svc.Hub("bad hub!"); !errors.Is(err, pubsub.ErrInvalidHub) {
		t.Errorf("bad hub name: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestGoAPIGroupsAndExistence(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := t.Context()
	_, a1 := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alice"}))
	_, a2 := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alice"}))
	_, b := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "bob"}))

	members := func(g string) []string {
		t.Helper()
		ms, err := e.hub.ListConnectionsInGroup(ctx, g)
		must(t, err)
		var ids []string
		for _, m := range ms {
			ids = append(ids, m.ConnectionID)
		}
		return ids
	}
	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }
	exists := func(f func(context.Context, string) (bool, error), key string) bool {
		t.Helper()
		ok, err := f(ctx, key)
		must(t, err)
		return ok
	}

	must(t, e.hub.AddConnectionToGroup(ctx, b, "g"))
	if got := members("g"); !slices.Equal(got, []string{b}) {
		t.Fatalf("g = %v", got)
	}
	if err := e.hub.AddConnectionToGroup(ctx, "missing", "g"); !errors.Is(err, pubsub.ErrConnectionNotFound) {
		t.Fatalf("add missing connection: %v", err)
	}
	must(t, e.hub.AddUserToGroup(ctx, "alice", "g"))
	if got := members("g"); !slices.Equal(got, sorted(a1, a2, b)) {
		t.Fatalf("g = %v", got)
	}
	if err := e.hub.AddUserToGroup(ctx, "nobody", "g"); !errors.Is(err, pubsub.ErrUserNotFound) {
		t.Fatalf("add missing user: %v", err)
	}
	ms, _ := e.hub.ListConnectionsInGroup(ctx, "g")
	for _, m := range ms {
		if (m.ConnectionID == b) != (m.UserID == "bob") {
			t.Fatalf("member %+v has the wrong user", m)
		}
	}

	must(t, e.hub.RemoveConnectionFromGroup(ctx, a1, "g"))
	must(t, e.hub.RemoveConnectionFromGroup(ctx, "missing", "g")) // not an error
	if got := members("g"); !slices.Equal(got, sorted(a2, b)) {
		t.Fatalf("g = %v", got)
	}
	must(t, e.hub.RemoveUserFromGroup(ctx, "alice", "g"))
	if got := members("g"); !slices.Equal(got, []string{b}) {
		t.Fatalf("g = %v", got)
	}

	must(t, e.hub.AddUserToGroup(ctx, "alice", "h"))
	must(t, e.hub.AddConnectionToGroup(ctx, b, "h"))
	must(t, e.hub.RemoveConnectionFromAllGroups(ctx, b))
	if exists(e.hub.GroupExists, "g") || !slices.Equal(members("h"), sorted(a1, a2)) {
		t.Fatalf("after removing b from all groups: g exists %v, h = %v", exists(e.hub.GroupExists, "g"), members("h"))
	}
	must(t, e.hub.RemoveUserFromAllGroups(ctx, "alice"))
	if exists(e.hub.GroupExists, "h") {
		t.Fatal("h still exists")
	}

	// Filters: add every connection of alice to two groups, then remove
	// everyone from one.
	must(t, e.hub.AddConnectionsToGroups(ctx, "userId eq 'alice'", "x", "y"))
	if !slices.Equal(members("x"), sorted(a1, a2)) || !slices.Equal(members("y"), sorted(a1, a2)) {
		t.Fatalf("x = %v, y = %v", members("x"), members("y"))
	}
	must(t, e.hub.AddConnectionsToGroups(ctx, "", "x"))
	if !slices.Equal(members("x"), sorted(a1, a2, b)) {
		t.Fatalf("x = %v", members("x"))
	}
	must(t, e.hub.RemoveConnectionsFromGroups(ctx, "'y' in groups", "x"))
	if !slices.Equal(members("x"), []string{b}) {
		t.Fatalf("x = %v", members("x"))
	}
	if err := e.hub.AddConnectionsToGroups(ctx, ""); !errors.Is(err, pubsub.ErrInvalidGroup) {
		t.Fatalf("no groups: %v", err)
	}

	if !exists(e.hub.ConnectionExists, a1) || exists(e.hub.ConnectionExists, "missing") {
		t.Fatal("ConnectionExists")
	}
	if !exists(e.hub.UserExists, "alice") || exists(e.hub.UserExists, "nobody") {
		t.Fatal("UserExists")
	}
	if !exists(e.hub.GroupExists, "x") || exists(e.hub.GroupExists, "never") {
		t.Fatal("GroupExists")
	}
	if _, err := e.hub.GroupExists(ctx, ""); !errors.Is(err, pubsub.ErrInvalidGroup) {
		t.Fatalf("GroupExists(\"\"): %v", err)
	}
}

func TestGoAPICloses(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	ctx := t.Context()
	dialN := func(user string, groups ...string) (*wstest.Client, string) {
		return wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: user, Groups: groups}))
	}
	expectClosed := func(c *wstest.Client, reason string) {
		t.Helper()
		info, frames := c.ExpectClose()
		if info.Code != 1000 || info.Reason != reason {
			t.Fatalf("close %+v, want 1000 %q", info, reason)
		}
		if len(frames) != 1 || string(frames[0].Data) != `{"type":"system","event":"disconnected","message":`+quote(reason)+`}` {
			t.Fatalf("frames before close: %d", len(frames))
		}
		if d := rec.nextDisconnect(t); d.reason != reason {
			t.Fatalf("disconnected reason %q, want %q", d.reason, reason)
		}
	}

	c1, id1 := dialN("u1", "g")
	c2, id2 := dialN("u1", "g")
	c3, id3 := dialN("u2", "g")
	must(t, e.hub.CloseGroupConnections(ctx, "g", "group closed", id3))
	expectClosed(c1, "group closed")
	expectClosed(c2, "group closed")
	e.barrier(c3, id3)

	c4, _ := dialN("u3")
	c5, id5 := dialN("u3")
	must(t, e.hub.CloseUserConnections(ctx, "u3", "user closed", id5))
	expectClosed(c4, "user closed")
	e.barrier(c5, id5)

	must(t, e.hub.CloseConnection(ctx, id5, ""))
	expectClosed(c5, "Closed by app server.")
	if ok, _ := e.hub.ConnectionExists(ctx, id5); ok {
		t.Fatal("closed connection still exists")
	}

	c6, id6 := dialN("u4")
	must(t, e.hub.CloseAllConnections(ctx, "all closed", id6))
	expectClosed(c3, "all closed")
	e.barrier(c6, id6)
	must(t, e.hub.CloseAllConnections(ctx, "really all"))
	expectClosed(c6, "really all")
	_ = id1
	_ = id2
	if n := e.svc.Stats().Connections; n != 0 {
		t.Fatalf("%d connections left", n)
	}
}
