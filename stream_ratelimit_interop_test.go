package pubsub_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// The official client writes a stream faster than
// MaxMessagesPerSecond. The client takes a streamNack as an ack of its
// expectedSequenceId and never sends the refused fragment again (it only
// replays after a recovery), so the stream must not end cleanly for its
// receivers with fragments missing while every write of the publisher
// succeeded: either every fragment arrives, or someone sees an error.
func TestOfficialJSClientStreamOverTheRateLimitIsNotSilentlyTruncated(t *testing.T) {
	dir := wstest.Interop(t, "interop")
	e := newEnv(t, pubsub.Config{MaxMessagesPerSecond: 5})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client-stream-ratelimit.mjs",
		e.url(pubsub.TokenOptions{UserID: "bob", Roles: allRoles}),
		e.url(pubsub.TokenOptions{UserID: "alice", Roles: allRoles}))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var pub struct {
		Written int
		Errors  []string
	}
	var recv struct {
		Chunks []string
		End    map[string]any
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("node printed %q", line)
		}
		switch string(m["step"]) {
		case `"publisher"`:
			json.Unmarshal([]byte(line), &pub)
		case `"receiver"`:
			json.Unmarshal([]byte(line), &recv)
		}
	}
	t.Logf("publisher: %+v; receiver: %+v", pub, recv)
	if len(recv.Chunks) < pub.Written && len(pub.Errors) == 0 && recv.End["done"] == true {
		t.Fatalf("silent truncation: the publisher wrote %d fragments with no error, the receiver read %d (%v) and a clean end",
			pub.Written, len(recv.Chunks), recv.Chunks)
	}
	// The burst of 5 takes the start and four fragments; the fifth ends the
	// stream, visibly on both sides.
	if want := []string{"c1", "c2", "c3", "c4"}; !slices.Equal(recv.Chunks, want) ||
		recv.End["name"] != "Cancelled" || recv.End["message"] != "The publisher sent more than 5 messages per second." {
		t.Fatalf("receiver: %+v, want chunks %v and a Cancelled end", recv, want)
	}
	if !slices.Contains(pub.Errors, "TooManyRequests") {
		t.Fatalf("publisher errors %v, want TooManyRequests", pub.Errors)
	}
}
