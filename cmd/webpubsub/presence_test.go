package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/golang-jwt/jwt/v5"
)

// TestExpressUpstreamGroupPresence: the official @azure/web-pubsub-express
// handler's onGroupJoined and onGroupLeft fire for the groupPresenceEvents
// of cmd/webpubsub -config, for every way in and out of a group (the
// token's groups, the client's requests, REST, the end of the connection),
// filtered by groupFilters, in order between onConnected and
// onDisconnected.
func TestExpressUpstreamGroupPresence(t *testing.T) {
	dir := wstest.Interop(t, "../../interop")
	node := exec.Command("node", "upstream-presence.mjs")
	node.Dir = dir
	node.Stderr = os.Stderr
	stdin, _ := node.StdinPipe()
	stdout, _ := node.StdoutPipe()
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = node.Wait() })
	lines := make(chan map[string]any, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	next := func() map[string]any {
		t.Helper()
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatal("node stopped")
			}
			return m
		case <-time.After(wstest.WaitFor):
			t.Fatal("node printed nothing more")
		}
		return nil
	}
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
		u := cs.Endpoint + "/api/hubs/chat/" + path + "?api-version=2024-12-01"
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(cs.AccessKey))
		req, _ := http.NewRequest(method, u, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
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
