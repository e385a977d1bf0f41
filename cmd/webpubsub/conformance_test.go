package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/golang-jwt/jwt/v5"
)

// startServer builds and starts cmd/webpubsub on a free port and returns its
// connection string; the process is stopped when the test ends.
func startServer(t *testing.T, args ...string) pubsub.ConnectionString {
	t.Helper()
	bin := buildServer(t)
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), "WEBPUBSUB_CONNECTION_STRING=", "WEBPUBSUB_NATS_URL=")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	cs, err := pubsub.ParseConnectionString(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// restSend posts text to one connection through the REST API, signed the
// way the SDKs sign: the barrier every step ends with.
func restSend(t *testing.T, cs pubsub.ConnectionString, connID, text string) {
	t.Helper()
	u := cs.Endpoint + "/api/hubs/chat/connections/" + connID + "/:send?api-version=2024-12-01"
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(cs.AccessKey))
	req, _ := http.NewRequest("POST", u, strings.NewReader(text))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "text/plain")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("barrier send: %d", resp.StatusCode)
	}
}

// TestServerSDKConformance: Azure's official @azure/web-pubsub server SDK
// calls every method it has against cmd/webpubsub, while real WebSocket
// clients check where each message went.
func TestServerSDKConformance(t *testing.T) {
	dir := wstest.Interop(t, "../../interop")
	cs := startServer(t)
	minter, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	if err != nil {
		t.Fatal(err)
	}
	clientURL := func(opts pubsub.TokenOptions) string {
		u, err := minter.ClientURL("chat", opts)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	type peer struct {
		c      *wstest.Client
		id     string
		simple bool
	}
	alice, aliceID := wstest.DialJSON(t, clientURL(pubsub.TokenOptions{UserID: "alice", Groups: []string{"room"}}))
	bob, bobID := wstest.DialJSON(t, clientURL(pubsub.TokenOptions{UserID: "bob"}))
	anon, anonID := wstest.DialJSON(t, clientURL(pubsub.TokenOptions{}))
	carol := wstest.Dial(t, clientURL(pubsub.TokenOptions{UserID: "carol", Groups: []string{"room"}}), nil)
	// carol is a simple client: learn her connection id from a listing later;
	// until then, barriers to her go through her user.
	peers := map[string]*peer{
		"alice": {alice, aliceID, false},
		"bob":   {bob, bobID, false},
		"anon":  {anon, anonID, false},
		"carol": {carol, "", true},
	}
	var dave *peer

	// expect checks that exactly the named peers received text (or, for a
	// JSON peer, a frame containing want), then proves nothing else came.
	expect := func(step string, got map[string]string) {
		t.Helper()
		for name, p := range peers {
			if want, ok := got[name]; ok {
				f := p.c.Next()
				if p.simple && string(f.Data) != want || !p.simple && !strings.Contains(string(f.Data), want) {
					t.Fatalf("%s: %s got %s, want %s", step, name, f.Data, want)
				}
			}
		}
		for name, p := range peers {
			if p.id == "" { // carol: reach her through her user
				continue
			}
			restSend(t, cs, p.id, "barrier:"+step)
			if f := p.c.Next(); !strings.Contains(string(f.Data), "barrier:"+step) {
				t.Fatalf("%s: %s got an unexpected %s", step, name, f.Data)
			}
		}
	}
	expectClosed := func(step, name, reason string) {
		t.Helper()
		p := peers[name]
		info, frames := p.c.ExpectClose()
		if info.Code != 1000 || info.Reason != reason {
			t.Fatalf("%s: %s closed with %+v, want 1000 %q", step, name, info, reason)
		}
		if !p.simple && (len(frames) != 1 || !strings.Contains(string(frames[0].Data), `"disconnected"`)) {
			t.Fatalf("%s: %s got %d frames before the close", step, name, len(frames))
		}
		delete(peers, name)
	}

	checks := map[string]func(line map[string]any){
		"sendToAll text": func(map[string]any) {
			expect("text", map[string]string{"alice": `"dataType":"text","data":"hello"`, "bob": `"data":"hello"`, "anon": `"data":"hello"`, "carol": "hello"})
		},
		"sendToAll json": func(map[string]any) {
			expect("json", map[string]string{"alice": `"dataType":"json","data":{"x":1,"s":"y"}`, "bob": `"x":1`, "anon": `"x":1`, "carol": `{"x":1,"s":"y"}`})
		},
		"sendToAll binary": func(map[string]any) {
			expect("binary", map[string]string{"alice": `"dataType":"binary","data":"AQL/"`, "bob": `"AQL/"`, "anon": `"AQL/"`, "carol": "\x01\x02\xff"})
		},
		"sendToAll filter": func(map[string]any) { expect("filter", map[string]string{"alice": `"for alice"`}) },
		"sendToAll ttl": func(map[string]any) {
			expect("ttl", map[string]string{"alice": "with ttl", "bob": "with ttl", "anon": "with ttl", "carol": "with ttl"})
		},
		"sendToUser": func(map[string]any) {
			expect("user", map[string]string{"bob": `"from":"server","dataType":"text","data":"to bob"`})
		},
		"sendToUser filter": func(map[string]any) { expect("user filter", map[string]string{"bob": `"data":{"to":"bob"}`}) },
		"sendToConnection":  func(map[string]any) { expect("connection", map[string]string{"alice": `"data":"to alice"`}) },
		"group sendToAll": func(map[string]any) {
			expect("group", map[string]string{"alice": `"from":"group","group":"room","dataType":"text","data":"to room"`, "carol": "to room"})
		},
		"group sendToAll filter": func(map[string]any) { expect("group filter", map[string]string{"alice": "to room but carol"}) },
		"group addConnection": func(map[string]any) {
			expect("add", map[string]string{"alice": "bob joined", "bob": "bob joined", "carol": "bob joined"})
		},
		"group removeConnection": func(map[string]any) { expect("remove", map[string]string{"alice": "bob left", "carol": "bob left"}) },
		"group addUser":          func(map[string]any) { expect("addUser", map[string]string{"alice": `"group":"g2"`}) },
		"addConnectionsToGroups": func(map[string]any) { expect("addTo", map[string]string{"bob": "to g3", "anon": "to g3"}) },
		"removeConnectionsFromGroups": func(map[string]any) {
			expect("removeFrom", map[string]string{"bob": "to g3 again"})
		},
		"removeConnectionFromAllGroups": func(map[string]any) { expect("removeAll", map[string]string{"carol": "room without alice"}) },
		"removeUserFromAllGroups":       func(map[string]any) { expect("removeUserAll", map[string]string{"anon": "to g4"}) },
		"group removeUser": func(line map[string]any) {
			if line["g2Exists"] != false {
				t.Fatalf("g2 still exists: %v", line)
			}
			expect("removeUser", nil)
		},
		"group listConnections": func(line map[string]any) {
			members, _ := line["members"].([]any)
			byUser := map[string]string{}
			for _, m := range members {
				m := m.(map[string]any)
				byUser[fmt.Sprint(m["userId"])] = m["connectionId"].(string)
			}
			if len(members) != 2 || byUser["alice"] != aliceID || byUser["carol"] == "" {
				t.Fatalf("members %v", members)
			}
			peers["carol"].id = byUser["carol"]
			if paged, _ := line["paged"].([]any); len(paged) != 2 {
				t.Fatalf("pages %v", paged)
			}
			expect("list", nil) // carol's barrier now goes through her id
		},
		"exists": func(line map[string]any) {
			want := map[string]any{"alice": true, "missing": false, "userBob": true, "userNobody": false, "room": true, "empty": false}
			delete(line, "step")
			if !reflect.DeepEqual(line, want) {
				t.Fatalf("exists %v, want %v", line, want)
			}
		},
		"grantPermission": func(line map[string]any) {
			if line["granted"] != true {
				t.Fatalf("%v", line)
			}
			bob.Send(`{"type":"sendToGroup","group":"room","ackId":1,"dataType":"text","data":"bob may"}`)
			bob.ExpectAck(1, "")
			expect("grant", map[string]string{"alice": "bob may", "carol": "bob may"})
		},
		"revokePermission": func(line map[string]any) {
			if line["revoked"] != true {
				t.Fatalf("%v", line)
			}
			bob.Send(`{"type":"sendToGroup","group":"room","ackId":2,"dataType":"text","data":"bob may not"}`)
			bob.ExpectAck(2, "Forbidden")
			expect("revoke", nil)
		},
		"getClientAccessToken": func(line map[string]any) {
			c, id := wstest.DialJSON(t, line["url"].(string))
			dave = &peer{c, id, false}
			peers["dave"] = dave
			restSend(t, cs, id, "hi dave")
			if m := c.NextJSON(); m["data"] != "hi dave" {
				t.Fatalf("dave got %v", m)
			}
			c.Send(`{"type":"joinGroup","group":"daves-other","ackId":1}`)
			c.ExpectAck(1, "") // the role of the token
		},
		"errors": func(line map[string]any) {
			want := map[string]any{"badFilter": 400.0, "badTtl": 400.0, "addMissingConnection": 404.0, "grantMissing": 404.0}
			delete(line, "step")
			if !reflect.DeepEqual(line, want) {
				t.Fatalf("errors %v, want %v", line, want)
			}
			expect("errors", nil)
		},
		"dot names": func(line map[string]any) {
			// The SDK cannot address the names "." and "..": it removes
			// them as dot segments before sending, so only raw clients can
			// (TestDotNamesStayNames). Should it ever send them as written,
			// check their delivery through cmd/webpubsub here instead.
			want := []any{
				"POST /api/hubs/chat/:send",             // group("..").sendToAll
				"POST /api/hubs/chat/:send",             // sendToUser("..")
				"POST /api/hubs/chat/users/:send",       // sendToUser(".")
				"POST /api/hubs/chat/:closeConnections", // closeUserConnections("..")
				"HEAD /api/hubs/chat/",                  // userExists("..")
			}
			if !reflect.DeepEqual(line["wire"], want) {
				t.Fatalf("the SDK sent %v for dot names, not %v: it may address them now", line["wire"], want)
			}
			expect("dot names", nil)
		},
		"closeConnection":      func(map[string]any) { expectClosed("close", "anon", "anon closed") },
		"closeUserConnections": func(map[string]any) { expectClosed("closeUser", "bob", "bob closed") },
		"group closeAllConnections": func(map[string]any) {
			expectClosed("closeGroup", "alice", "room closed")
			expectClosed("closeGroup", "carol", "room closed")
		},
		"closeAllConnections": func(map[string]any) { expectClosed("closeAll", "dave", "all closed") },
	}

	ids, _ := json.Marshal(map[string]string{"alice": aliceID, "bob": bobID, "anon": anonID})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := exec.CommandContext(ctx, "node", "server-sdk.mjs", cs.String(), string(ids))
	node.Dir = dir
	node.Stderr = os.Stderr
	stdin, _ := node.StdinPipe()
	stdout, _ := node.StdoutPipe()
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	seen := map[string]bool{}
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("node printed %q", sc.Text())
		}
		step := line["step"].(string)
		if step == "done" {
			seen[step] = true
			break
		}
		check, ok := checks[step]
		if !ok {
			t.Fatalf("no check for step %q", step)
		}
		check(line)
		seen[step] = true
		fmt.Fprintln(stdin, "next")
	}
	if err := node.Wait(); err != nil {
		t.Fatalf("node: %v", err)
	}
	for step := range checks {
		if !seen[step] {
			t.Errorf("step %q never ran", step)
		}
	}
	if !seen["done"] {
		t.Fatal("the SDK script did not finish")
	}
}

// expressUpstream is cmd/webpubsub -config with an application server built
// with the official @azure/web-pubsub-express handler
// (interop/upstream-express.mjs) as the upstream of hub "chat".
type expressUpstream struct {
	dir       string                           // the interop folder
	nextLine  func(step string) map[string]any // the handler's next line, which must be step
	clientURL func(user string) string         // a client URL for user
}

// nodeLines starts a long-running Node script of interop/ (an upstream)
// and returns a function giving the next JSON line it prints, failing the
// test if none comes. The script stops when its stdin closes.
func nodeLines(t *testing.T, dir, script string) func() map[string]any {
	t.Helper()
	node := exec.Command("node", script)
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
	return func() map[string]any {
		t.Helper()
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("node %s stopped", script)
			}
			return m
		case <-time.After(wstest.WaitFor):
			t.Fatalf("node %s printed nothing more", script)
		}
		return nil
	}
}

func startExpressUpstream(t *testing.T) *expressUpstream {
	t.Helper()
	dir := wstest.Interop(t, "../../interop")
	next := nodeLines(t, dir, "upstream-express.mjs")
	nextLine := func(step string) map[string]any {
		t.Helper()
		m := next()
		if m["step"] != step {
			t.Fatalf("node printed %v, want %s", m, step)
		}
		return m
	}
	port := int(nextLine("listening")["port"].(float64))

	cfgPath := filepath.Join(t.TempDir(), "hubs.json")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`{"hubs": {"chat": {"eventHandlers": [{
		"urlTemplate": "http://127.0.0.1:%d/eventhandler/{event}",
		"userEventPattern": "*",
		"systemEvents": ["connect", "connected", "disconnected"]}]}}}`, port)), 0o600)
	cs := startServer(t, "-config", cfgPath)
	minter, _ := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	clientURL := func(user string) string {
		u, err := minter.ClientURL("chat", pubsub.TokenOptions{UserID: user})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	return &expressUpstream{dir: dir, nextLine: nextLine, clientURL: clientURL}
}

// TestExpressUpstreamConformance: an application server built with the
// official @azure/web-pubsub-express handler is the upstream of
// cmd/webpubsub -config; real WebSocket clients check each of its effects.
func TestExpressUpstreamConformance(t *testing.T) {
	up := startExpressUpstream(t)
	nextLine, clientURL := up.nextLine, up.clientURL

	// The handler authorises and rejects connects.
	if got := wstest.HandshakeStatus(t, clientURL("intruder"), nil); got != 401 {
		t.Fatalf("intruder: %d, want 401", got)
	}
	if got := wstest.HandshakeStatus(t, clientURL("malformed"), nil); got != 400 {
		t.Fatalf("malformed: %d, want 400", got)
	}

	// It sets the user, the groups and the roles.
	c := wstest.Dial(t, clientURL("alice"), nil, "json.webpubsub.azure.v1")
	m := c.NextJSON()
	if m["userId"] != "node-alice" {
		t.Fatalf("connected %v", m)
	}
	id := m["connectionId"].(string)
	conn := nextLine("connected")
	if conn["connectionId"] != id || conn["userId"] != "node-alice" || conn["state"] != "hello alice" {
		t.Fatalf("connected event %v", conn)
	}
	c.Send(`{"type":"sendToGroup","group":"from-node","ackId":1,"dataType":"text","data":"in my group"}`)
	if m := c.NextJSON(); m["group"] != "from-node" || m["data"] != "in my group" {
		t.Fatalf("got %v", m) // joined from-node, allowed to send there
	}
	c.ExpectAck(1, "")
	c.Send(`{"type":"sendToGroup","group":"elsewhere","ackId":2,"dataType":"text","data":"x"}`)
	c.ExpectAck(2, "Forbidden")

	// It answers user events, with state kept across events.
	for i, want := range []string{
		`{"type":"message","from":"server","dataType":"text","data":"hello alice, echo 1: hi"}`,
		`{"type":"message","from":"server","dataType":"text","data":"hello alice, echo 2: hi"}`,
	} {
		c.Send(fmt.Sprintf(`{"type":"event","event":"echo","ackId":%d,"dataType":"text","data":"hi"}`, 10+i))
		if f := c.Next(); string(f.Data) != want {
			t.Fatalf("reply %s, want %s", f.Data, want)
		}
		c.ExpectAck(10+i, "")
	}
	c.Send(`{"type":"event","event":"json","ackId":12,"dataType":"json","data":{"a":1}}`)
	if f := c.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"json","data":{"got":{"a":1},"type":"json"}}` {
		t.Fatalf("json reply %s", f.Data)
	}
	c.ExpectAck(12, "")
	c.Send(`{"type":"event","event":"binary","ackId":13,"dataType":"text","data":"x"}`)
	if f := c.Next(); string(f.Data) != `{"type":"message","from":"server","dataType":"binary","data":"CQgH"}` {
		t.Fatalf("binary reply %s", f.Data)
	}
	c.ExpectAck(13, "")
	c.Send(`{"type":"event","event":"fail","ackId":14,"dataType":"text","data":"x"}`)
	c.ExpectAck(14, "InternalServerError")

	// A simple client's frames are message events, answered raw.
	s := wstest.Dial(t, clientURL("bob"), nil)
	nextLine("connected")
	s.Send("raw")
	if f := s.Next(); f.Binary || string(f.Data) != "hello bob, echo 1: raw" {
		t.Fatalf("simple reply %v %q", f.Binary, f.Data)
	}

	// disconnected reaches the handler with the connection id.
	c.Conn.WriteClose(1000, []byte("leaving"))
	if d := nextLine("disconnected"); d["connectionId"] != id || d["reason"] != "leaving" {
		t.Fatalf("disconnected event %v", d)
	}
}

// TestExpressUpstreamInvoke: the official client's invokeEvent, against
// cmd/webpubsub whose upstream is an @azure/web-pubsub-express handler,
// gets that handler's reply (text, json, binary, with the connection state
// it keeps across invocations); a handler that answers res.fail fails that
// invocation only: the connection stays, and the next invocation works.
func TestExpressUpstreamInvoke(t *testing.T) {
	up := startExpressUpstream(t)
	invocations := `[
		{"event": "echo", "data": "hi", "dataType": "text"},
		{"event": "json", "data": {"a": 1}, "dataType": "json"},
		{"event": "binary", "data": [1, 2], "dataType": "binary"},
		{"event": "fail", "data": "x", "dataType": "text"},
		{"event": "echo", "data": "again", "dataType": "text"}
	]`
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client-invocations.mjs", up.clientURL("carol"), invocations)
	cmd.Dir = up.dir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("node printed %q", line)
		}
		lines = append(lines, m)
	}
	if len(lines) != 7 || lines[0]["step"] != "connected" || lines[6]["step"] != "done" {
		t.Fatalf("node printed %v", lines)
	}
	id := lines[0]["connectionId"]
	if conn := up.nextLine("connected"); conn["connectionId"] != id || conn["userId"] != "node-carol" {
		t.Fatalf("connected event %v, client connected as %v", conn, id)
	}

	result := func(dataType string, data any) map[string]any {
		return map[string]any{"result": map[string]any{"dataType": dataType, "data": data}}
	}
	want := []map[string]any{
		result("text", "hello carol, echo 1: hi"),
		result("json", map[string]any{"got": map[string]any{"a": 1.0}, "type": "json"}),
		result("binary", []any{9.0, 8.0, 7.0}),
		{"error": map[string]any{"name": "InvocationError", "errorDetail": map[string]any{
			"name": "InternalServerError", "message": "the fail event handler answered 500"}}},
		result("text", "hello carol, echo 2: again"), // the state set by the first
	}
	for i, w := range want {
		got := lines[1+i]
		delete(got, "step")
		delete(got, "i")
		if !reflect.DeepEqual(got, w) {
			t.Errorf("invocation %d: %v\nwant %v", i, got, w)
		}
	}
	done := lines[6]
	if conns, _ := done["connections"].([]any); len(conns) != 1 || conns[0] != id {
		t.Fatalf("the client saw connections %v, want one", done["connections"])
	}
	// The connection's only disconnected event is the client's stop().
	if d := up.nextLine("disconnected"); d["connectionId"] != id {
		t.Fatalf("disconnected event %v", d)
	}
}
