package pubsub_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// TestOfficialJSClient drives Azure's own @azure/web-pubsub-client, with its
// non-reliable WebPubSubJsonProtocol, through joining a group, sending each
// data type, receiving from the group and from the server, and a forbidden
// send.
func TestOfficialJSClient(t *testing.T) {
	dir := wstest.Interop(t, "interop")
	e := newEnv(t, pubsub.Config{})
	aliceURL := e.url(pubsub.TokenOptions{UserID: "alice", Roles: allRoles})
	bobURL := e.url(pubsub.TokenOptions{UserID: "bob", Roles: []string{"webpubsub.joinLeaveGroup.room", "webpubsub.sendToGroup.room"}})
	watcher, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}))

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client-json.mjs", aliceURL, bobURL)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AZURE_LOG_LEVEL="+os.Getenv("AZURE_LOG_LEVEL"))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	steps := map[string]map[string]any{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("node printed %q", sc.Text())
		}
		step := line["step"].(string)
		steps[step] = line
		if step == "ready-for-go" {
			must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage("from go")))
			must(t, e.hub.SendToUser(ctx, "alice", pubsub.JSONMessage([]byte(`{"direct":true}`))))
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node: %v", err)
	}
	if _, ok := steps["done"]; !ok {
		t.Fatalf("node stopped early: %v", steps)
	}

	conn := steps["connected"]
	if conn["alice"].(map[string]any)["userId"] != "alice" || conn["bob"].(map[string]any)["userId"] != "bob" {
		t.Fatalf("connected %v", conn)
	}
	wantBob := []any{
		map[string]any{"group": "room", "fromUserId": "alice", "dataType": "text", "data": "hello"},
		map[string]any{"group": "room", "fromUserId": "alice", "dataType": "json", "data": map[string]any{"n": 1.0, "list": []any{"a"}}},
		map[string]any{"group": "room", "fromUserId": "alice", "dataType": "binary", "data": []any{1.0, 2.0, 255.0}},
	}
	if got := steps["bob-received"]["messages"]; !reflect.DeepEqual(got, wantBob) {
		t.Fatalf("bob received %v\nwant %v", got, wantBob)
	}
	wantAlice := map[string]any{
		"group":  map[string]any{"group": "room", "fromUserId": nil, "dataType": "text", "data": "from go"},
		"server": map[string]any{"dataType": "json", "data": map[string]any{"direct": true}},
	}
	if got := map[string]any{"group": steps["alice-received"]["group"], "server": steps["alice-received"]["server"]}; !reflect.DeepEqual(got, wantAlice) {
		t.Fatalf("alice received %v\nwant %v", got, wantAlice)
	}
	if f := steps["forbidden"]; f["name"] != "Forbidden" {
		t.Fatalf("forbidden send: %v", f)
	}

	// A Go client in the same group saw the JS client's messages as sent.
	for _, want := range []string{
		`{"type":"message","from":"group","group":"room","fromUserId":"alice","dataType":"text","data":"hello"}`,
		`{"type":"message","from":"group","group":"room","fromUserId":"alice","dataType":"json","data":{"n":1,"list":["a"]}}`,
		`{"type":"message","from":"group","group":"room","fromUserId":"alice","dataType":"binary","data":"AQL/"}`,
		`{"type":"message","from":"group","group":"room","dataType":"text","data":"from go"}`,
	} {
		if f := watcher.Next(); string(f.Data) != want {
			t.Fatalf("watcher got %s\nwant %s", f.Data, want)
		}
	}
}

// TestOfficialJSClientRecovers: the official client in its default reliable
// mode, behind a proxy that drops the TCP connection mid-stream, recovers
// by itself with its connection id unchanged and no message lost.
func TestOfficialJSClientRecovers(t *testing.T) {
	dir := wstest.Interop(t, "interop")
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "js", Roles: allRoles}))

	const n = 400
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client-reliable.mjs", u, strconv.Itoa(n))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	send := func(from, to int) {
		for i := from; i <= to; i++ {
			must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(strconv.Itoa(i))))
		}
	}
	var done map[string]any
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("node printed %q", sc.Text())
		}
		switch line["step"] {
		case "joined":
			send(1, n/2)
		case "half":
			proxy.Drop() // the client has half; the rest is sent while it is away
			send(n/2+1, n)
		case "done":
			done = line
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node: %v", err)
	}
	if done == nil {
		t.Fatal("the client did not receive every message")
	}
	received := done["received"].([]any)
	for i, v := range received {
		if v != strconv.Itoa(i+1) {
			t.Fatalf("message %d is %v: lost, duplicated or out of order", i+1, v)
		}
	}
	if got := proxy.Accepted(); got < 2 {
		t.Fatalf("%d transports: the drop did not make the client reconnect", got)
	}
	if conns := done["connections"].([]any); len(conns) != 1 {
		t.Fatalf("connected events in the client: %v, want one connection id", conns)
	}
	rec.mu.Lock()
	connected := len(rec.connected)
	rec.mu.Unlock()
	if connected != 1 {
		t.Fatalf("%d connected events upstream, want 1", connected)
	}
}

// TestOfficialJSClientInvoke drives the official client's invokeEvent, over
// both JSON protocols, against an in-process event handler: a reply of each
// data type, a failed invocation surfacing as the SDK's InvocationError with
// the error's name, and the connection still working afterwards.
func TestOfficialJSClientInvoke(t *testing.T) {
	dir := wstest.Interop(t, "interop")
	for _, kind := range []string{"json", "reliable"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
				OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
					switch req.EventName {
					case "add":
						var in struct{ A, B int }
						if err := json.Unmarshal(req.Data, &in); err != nil {
							return nil, err
						}
						return &pubsub.UserEventResponse{DataType: pubsub.DataTypeJSON, Data: []byte(`{"sum":` + strconv.Itoa(in.A+in.B) + `}`)}, nil
					case "echo":
						return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: req.Data}, nil
					case "fail":
						return nil, errors.New("no such luck")
					}
					return nil, nil
				},
			}})
			steps := nodeSteps(t, dir, 2*waitFor, "client-invoke.mjs", e.url(pubsub.TokenOptions{UserID: "alice"}), kind)
			want := map[string]any{
				"json":   map[string]any{"dataType": "json", "data": map[string]any{"sum": 3.0}},
				"text":   map[string]any{"dataType": "text", "data": "hello"},
				"failed": map[string]any{"name": "InvocationError", "errorDetail": map[string]any{"name": "InternalServerError", "message": "no such luck"}},
				"after":  map[string]any{"dataType": "text", "data": "again"},
				"done":   map[string]any{},
			}
			if !reflect.DeepEqual(steps, want) {
				t.Fatalf("steps %v\nwant  %v", steps, want)
			}
		})
	}
}

// nodeSteps runs a Node script of interop/ that prints one JSON object per
// step ({"step": name, ...}) and returns each step's object without its
// name, failing the test if the script fails or prints anything else.
func nodeSteps(t *testing.T, dir string, timeout time.Duration, script string, args ...string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, out)
	}
	steps := map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("node printed %q", line)
		}
		step, _ := m["step"].(string)
		delete(m, "step")
		steps[step] = m
	}
	return steps
}
