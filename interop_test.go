package pubsub_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

var npmOnce sync.Once

// nodeInterop returns the interop folder with its pinned npm packages
// installed (npm ci, once), or skips the test where Node is not installed.
// Under CI a missing Node is a failure, not a skip.
func nodeInterop(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs("interop")
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed")
		}
		t.Skip("node is not installed")
	}
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@azure", "web-pubsub-client")); err == nil {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("npm ci: %v\n%s", err, out)
		}
	})
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@azure", "web-pubsub-client")); err != nil {
		t.Fatalf("the pinned npm packages are not installed in %s", dir)
	}
	return dir
}

// TestOfficialJSClient drives Azure's own @azure/web-pubsub-client, with its
// non-reliable WebPubSubJsonProtocol, through joining a group, sending each
// data type, receiving from the group and from the server, and a forbidden
// send.
func TestOfficialJSClient(t *testing.T) {
	dir := nodeInterop(t)
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
