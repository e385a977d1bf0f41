package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embedwps/pubsub/internal/wstest"
)

// TestShutdownGraceWithADeadUpstream: an upstream that took a client's
// connected event and then went down does not hold SIGTERM for the retry
// delays of the client's disconnected event (1 s, 3 s and 5 s): the process
// exits well within -shutdown-grace, and says it dropped the event.
func TestShutdownGraceWithADeadUpstream(t *testing.T) {
	connected := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set("WebHook-Allowed-Origin", "*")
			return
		}
		if r.Header.Get("ce-eventName") == "connected" {
			select {
			case connected <- struct{}{}:
			default:
			}
		}
	}))
	defer up.Close()
	config := filepath.Join(t.TempDir(), "hubs.json")
	hubs := `{"hubs": {"chat": {"eventHandlers": [{"urlTemplate": "` + up.URL + `/{event}", "systemEvents": ["connected", "disconnected"]}]}}}`
	if err := os.WriteFile(config, []byte(hubs), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, buildServer(t), []string{"WEBPUBSUB_CONNECTION_STRING=" + clusterCS}, "-config", config, "-shutdown-grace", "2s")
	n.dial(t, "u")
	select {
	case <-connected: // the upstream passed abuse protection and took an event
	case <-time.After(wstest.WaitFor):
		t.Fatal("no connected event reached the upstream")
	}
	up.Close() // down: the disconnected event meets a closed port

	start := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		n.exited <- err // for the cleanup
		if d := time.Since(start); d > 6*time.Second {
			t.Fatalf("exited %v after SIGTERM, with a grace of 2 s", d)
		}
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(wstest.WaitFor):
		t.Fatal("no exit on SIGTERM")
	}
	var dropped []string
	for _, l := range strings.Split(n.log.String(), "\n") {
		if strings.Contains(l, "dropped=") {
			dropped = append(dropped, l)
		}
	}
	if len(dropped) != 1 || !strings.Contains(dropped[0], "dropped=1 ") || !strings.Contains(dropped[0], "droppedPerHub.chat=1") {
		t.Fatalf("want one line counting the dropped disconnected event, got %q", dropped)
	}
}

func TestShutdownGraceMustBePositive(t *testing.T) {
	for _, v := range []string{"0", "-1s"} {
		err := run([]string{"-addr", "127.0.0.1:0", "-shutdown-grace", v}, os.Stdout)
		if err == nil || !strings.Contains(err.Error(), "-shutdown-grace must be more than 0") {
			t.Errorf("-shutdown-grace %s: %v", v, err)
		}
	}
}
