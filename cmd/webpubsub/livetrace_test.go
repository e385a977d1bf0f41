package main

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/livetrace"
)

// lockedBuffer is a process's stderr, read while it writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLiveTraceServer starts cmd/webpubsub as startServer does and returns
// the two lines it printed, the connection string and the live trace URL,
// and its stderr so far.
func startLiveTraceServer(t *testing.T) (pubsub.ConnectionString, string, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(buildServer(t), "-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "WEBPUBSUB_CONNECTION_STRING=", "WEBPUBSUB_NATS_URL=")
	stdout, _ := cmd.StdoutPipe()
	stderr := &lockedBuffer{}
	cmd.Stderr = io.MultiWriter(stderr, os.Stderr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	r := bufio.NewReader(stdout)
	first, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	cs, err := pubsub.ParseConnectionString(strings.TrimSpace(first))
	if err != nil {
		t.Fatalf("first line %q: %v", first, err)
	}
	second, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return cs, strings.TrimSpace(second), stderr
}

// TestLiveTraceURL: the second line of stdout is the live trace page with
// a token in its fragment, which opens the stream; stderr never shows it.
func TestLiveTraceURL(t *testing.T) {
	cs, u, stderr := startLiveTraceServer(t)
	page, tok, ok := strings.Cut(u, "#access_token=")
	if !ok || page != cs.Endpoint+livetrace.Path || tok == "" {
		t.Fatalf("second line %q", u)
	}
	req, _ := http.NewRequest(http.MethodGet, page+"events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(line, `"kind":"ready"`) {
		t.Fatalf("stream: %d %q", resp.StatusCode, line)
	}
	if strings.Contains(stderr.String(), tok) || !strings.Contains(stderr.String(), "live trace") {
		t.Fatalf("stderr:\n%s", stderr)
	}
}

// TestLiveTraceBrowser: the page in headless Chromium shows the traffic
// the official SDKs make against the server, without message data, and
// its filter, pause and clear work (interop/livetrace-browser.mjs). The
// screenshot is left at /tmp/livetrace.png for a person to look at.
func TestLiveTraceBrowser(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("no headless browser: " + chromium + " is missing (apt-get install chromium)")
		}
		t.Fatalf("%s is missing: .ci/run installs it", chromium)
	}
	dir := wstest.Interop(t, "../../interop")
	cs, u, stderr := startLiveTraceServer(t)
	shot := t.TempDir() + "/livetrace.png"
	t.Setenv("LIVETRACE_URL", u)
	t.Setenv("CONNECTION_STRING", cs.String())
	t.Setenv("SCREENSHOT", shot)
	t.Setenv("CHROMIUM", chromium)
	next := nodeLines(t, dir, "livetrace-browser.mjs")
	step := func(name string) map[string]any {
		t.Helper()
		m := next()
		if m["step"] != name {
			t.Fatalf("node printed %v, want step %s", m, name)
		}
		return m
	}
	str := func(v any) string { s, _ := v.(string); return s }

	if m := step("unauthorized"); !strings.Contains(str(m["notice"]), "Unauthorized: live trace needs an access token") {
		t.Errorf("without a token the page says %v", m)
	}
	if m := step("client-token"); !strings.Contains(str(m["notice"]), "not a live trace token") {
		t.Errorf("with a client token the page says %v", m)
	}
	if m := step("live"); m["status"] != "Live" || m["urlHasToken"] != false {
		t.Errorf("live: %v", m)
	}
	m := step("traffic")
	if m["hasSecret"] != false {
		t.Errorf("the page shows a message's data")
	}
	lines, _ := m["lines"].(map[string]any)
	for name, want := range map[string][]string{
		"aliceOpened": {"Connected", "chat", "alice"},
		"joined":      {"Message received", "joinGroup", "room"},
		"received":    {"sendToGroup", "size"},
		"event":       {"event typing"},
		"sent":        {"Message sent", "recipients 1", "26 B"},
		"restSent":    {"sendToGroup", "35 B"},
		"rest":        {"REST request", "operation sendToGroup", "status 202", "POST /api/hubs/chat/groups/room/:send"},
		"closed":      {"Disconnected", "reason normal", "after"},
	} {
		for _, w := range want {
			if !strings.Contains(str(lines[name]), w) {
				t.Errorf("%s line %q lacks %q", name, lines[name], w)
			}
		}
	}
	m = step("filter")
	hubs, _ := m["shownHubs"].([]any)
	if len(hubs) == 0 {
		t.Errorf("filtered on hub other, the page shows nothing")
	}
	for _, h := range hubs {
		if h != "other" {
			t.Errorf("filtered on hub other, the page shows %v", hubs)
			break
		}
	}
	m = step("pause")
	paused, _ := m["paused"].(map[string]any)
	if paused["rows"] != m["before"] || paused["button"] != "Resume" || !strings.Contains(str(paused["notice"]), "new events are held") ||
		m["after"].(float64) <= m["before"].(float64) || m["status"] != "Live" {
		t.Errorf("pause: %v", m)
	}
	step("screenshot")
	if png, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("screenshot: %v", err)
	} else {
		_ = os.WriteFile("/tmp/livetrace.png", png, 0o644) // for a person to look at
	}
	if m := step("clear"); m["rows"] != 0.0 || m["counts"] != "0 events" {
		t.Errorf("clear: %v", m)
	}
	step("done")
	if _, tok, _ := strings.Cut(u, "#access_token="); strings.Contains(stderr.String(), tok) {
		t.Error("the token is in the server's log")
	}
}
