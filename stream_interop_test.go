package pubsub_test

import (
	"encoding/json"
	"reflect"
	"slices"
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
			steps := nodeSteps(t, dir, 3*waitFor, "client-stream.mjs",
				e.url(pubsub.TokenOptions{UserID: "bob", Roles: allRoles}),
				e.url(pubsub.TokenOptions{UserID: "alice", Roles: allRoles}), kind)
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

// The official client writes a stream faster than
// MaxMessagesPerSecond. The client takes a streamNack as an ack of its
// expectedSequenceId and never sends the refused fragment again (it only
// replays after a recovery), so the stream must not end cleanly for its
// receivers with fragments missing while every write of the publisher
// succeeded: either every fragment arrives, or someone sees an error.
func TestOfficialJSClientStreamOverTheRateLimitIsNotSilentlyTruncated(t *testing.T) {
	dir := wstest.Interop(t, "interop")
	e := newEnv(t, pubsub.Config{MaxMessagesPerSecond: 5})
	steps := nodeSteps(t, dir, 3*waitFor, "client-stream-ratelimit.mjs",
		e.url(pubsub.TokenOptions{UserID: "bob", Roles: allRoles}),
		e.url(pubsub.TokenOptions{UserID: "alice", Roles: allRoles}))
	var pub struct {
		Written int
		Errors  []string
	}
	var recv struct {
		Chunks []string
		End    map[string]any
	}
	for name, v := range map[string]any{"publisher": &pub, "receiver": &recv} {
		b, _ := json.Marshal(steps[name])
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("step %s: %v", name, err)
		}
	}
	t.Logf("publisher: %+v; receiver: %+v", pub, recv)
	if len(recv.Chunks) < pub.Written && len(pub.Errors) == 0 && recv.End["done"] == true {
		t.Fatalf("silent truncation: the publisher wrote %d fragments with no error, the receiver read %d (%v) and a clean end",
			pub.Written, len(recv.Chunks), recv.Chunks)
	}
	// The burst of 5 takes the start and four fragments (more if the
	// writes took long enough for the limit to refill, as on a loaded
	// machine); the next ends the stream, visibly on both sides.
	want := []string{"c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10"}
	if n := len(recv.Chunks); n < 4 || n == len(want) || !slices.Equal(recv.Chunks, want[:n]) ||
		recv.End["name"] != "Cancelled" || recv.End["message"] != "The publisher sent more than 5 messages per second." {
		t.Fatalf("receiver: %+v, want chunks c1 to c4 or a few more, then a Cancelled end", recv)
	}
	if !slices.Contains(pub.Errors, "TooManyRequests") {
		t.Fatalf("publisher errors %v, want TooManyRequests", pub.Errors)
	}
}
