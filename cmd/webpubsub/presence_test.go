package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// TestExpressUpstreamGroupPresence: the official @azure/web-pubsub-express
// handler's onGroupJoined and onGroupLeft fire for the groupPresenceEvents
// of cmd/webpubsub -config, for every way in and out of a group (the
// token's groups, the client's requests, REST, the end of the connection),
// filtered by groupFilters, in order between onConnected and
// onDisconnected.
func TestExpressUpstreamGroupPresence(t *testing.T) {
	dir := wstest.Interop(t, "../../interop")
	next := nodeLines(t, dir, "upstream-presence.mjs")
	port := int(next()["port"].(float64))

	cfgPath := filepath.Join(t.TempDir(), "hubs.json")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`{"hubs": {"chat": {"eventHandlers": [{
		"urlTemplate": "http://127.0.0.1:%d/eventhandler/{event}",
		"systemEvents": ["connected", "disconnected"],
		"groupPresenceEvents": {"eventNames": ["joined", "left"], "groupFilters": ["room.*"]}}]}}}`, port)), 0o600)
	cs := startServer(t, "-config", cfgPath)
	minter, _ := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	u, err := minter.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Groups: []string{"room.token", "lobby"}, Roles: []string{"webpubsub.joinLeaveGroup"}})
	if err != nil {
		t.Fatal(err)
	}
	rest := func(method, path string, want int) {
		t.Helper()
		if resp := sdkDo(t, cs, method, "hubs/chat/"+path, "", ""); resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d", method, path, resp.StatusCode, want)
		}
	}

	c, id := wstest.DialJSON(t, u)
	c.Send(`{"type":"joinGroup","group":"room.a","ackId":1}`)
	c.ExpectAck(1, "")
	c.Send(`{"type":"joinGroup","group":"lobby2","ackId":2}`) // not room.*: not sent
	c.ExpectAck(2, "")
	rest("PUT", "groups/room.rest/connections/"+id, http.StatusOK)
	rest("DELETE", "groups/room.a/connections/"+id, http.StatusNoContent)
	c.Send(`{"type":"leaveGroup","group":"room.rest","ackId":3}`)
	c.ExpectAck(3, "")
	c.Conn.WriteClose(1000, nil)

	var got []string
	for len(got) == 0 || got[len(got)-1] != "disconnected" {
		m := next()
		if m["connectionId"] != id || m["userId"] != "alice" || m["eventName"] != m["step"] {
			t.Fatalf("the handler was called with %v", m)
		}
		s := m["step"].(string)
		if g, ok := m["group"].(string); ok {
			s += " " + g
		}
		got = append(got, s)
	}
	want := []string{"connected", "joined room.token", "joined room.a", "joined room.rest", "left room.a", "left room.rest", "left room.token", "disconnected"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the handler saw\n%q\nwant\n%q", got, want)
	}
}
