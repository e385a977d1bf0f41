package pubsub_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// TestOfficialJSClientGroupStreams drives the official client's
// openGroupStream and onGroupStream, over both JSON protocols: parallel
// streams of several fragments, JSON and binary fragments, an aborted
// stream whose error reaches the receiver, and an idle stream the service
// closes for the publisher and the receiver.
func TestOfficialJSClientGroupStreams(t *testing.T) {
	dir := wstest.Interop(t, "interop")
	for _, kind := range []string{"json", "reliable"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, pubsub.Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
			defer cancel()
			cmd := exec.CommandContext(ctx, "node", "client-stream.mjs",
				e.url(pubsub.TokenOptions{UserID: "bob", Roles: allRoles}),
				e.url(pubsub.TokenOptions{UserID: "alice", Roles: allRoles}), kind)
			cmd.Dir = dir
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("node: %v\n%s", err, out)
			}
			steps := map[string]any{}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("node printed %q", line)
				}
				step := m["step"].(string)
				delete(m, "step")
				steps[step] = m
			}
			chunks := func(id string) []any {
				var out []any
				for i := 1; i <= 10; i++ {
					out = append(out, id+"-"+itoa(i))
				}
				return out
			}
			done := map[string]any{"done": true}
			want := map[string]any{
				"received p1": map[string]any{"group": "room", "chunks": chunks("p1"), "end": done},
				"received p2": map[string]any{"group": "room", "chunks": chunks("p2"), "end": done},
				"received p3": map[string]any{"group": "room", "chunks": chunks("p3"), "end": done},
				"received typed": map[string]any{"group": "room", "chunks": []any{map[string]any{"n": 1.0}, "010203"},
					"end": map[string]any{"name": "UserError", "message": "gave up", "userErrorCode": "E42"}},
				"received idle": map[string]any{"group": "room", "chunks": []any{"only"},
					"end": map[string]any{"name": "IdleTimeout", "message": "The stream had no frame for 300 ms.", "userErrorCode": nil}},
				"publisher idle": map[string]any{"name": "IdleTimeout", "message": "The stream had no frame for 300 ms."},
				"done":           map[string]any{},
			}
			if !reflect.DeepEqual(steps, want) {
				t.Fatalf("steps %v\nwant  %v", steps, want)
			}
		})
	}
}
