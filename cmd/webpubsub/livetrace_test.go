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
	"syscall"
	"testing"
	"time"

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

// liveServer is cmd/webpubsub with what it printed: the connection string
// and the live trace URL on stdout, and its log.
type liveServer struct {
	cmd    *exec.Cmd
	exited chan error // the exit, once
	cs     pubsub.ConnectionString
	url    string
	stderr *lockedBuffer
}

// startLiveTraceServer starts cmd/webpubsub as startServer does and reads
// the two lines it prints.
func startLiveTraceServer(t *testing.T) *liveServer {
	t.Helper()
	cmd := exec.Command(buildServer(t), "-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "WEBPUBSUB_CONNECTION_STRING=", "WEBPUBSUB_NATS_URL=")
	stdout, _ := cmd.StdoutPipe()
	stderr := &lockedBuffer{}
	cmd.Stderr = io.MultiWriter(stderr, os.Stderr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
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
	return &liveServer{cmd: cmd, exited: exited, cs: cs, url: strings.TrimSpace(second), stderr: stderr}
}

// TestLiveTraceURL: the second line of stdout is the live trace page with
// a token in its fragment, which opens the stream; stderr never shows it.
// SIGTERM ends the stream, and does not wait for it.
func TestLiveTraceURL(t *testing.T) {
	srv := startLiveTraceServer(t)
	page, tok, ok := strings.Cut(srv.url, "#access_token=")
	if !ok || page != srv.cs.Endpoint+livetrace.Path || tok == "" {
		t.Fatalf("second line %q", srv.url)
	}
	req, _ := http.NewRequest(http.MethodGet, page+"events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := bufio.NewReader(resp.Body)
	line, _ := body.ReadString('\n')
	if resp.StatusCode != http.StatusOK || !strings.Contains(line, `"kind":"ready"`) {
		t.Fatalf("stream: %d %q", resp.StatusCode, line)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(body) // until the server ends the stream
	if !strings.Contains(string(rest), `"kind":"closed"`) {
		t.Fatalf("the stream ended with %q", rest)
	}
	select {
	case err := <-srv.exited:
		srv.exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(wstest.WaitFor):
		t.Fatal("the server did not stop")
	}
	if log := srv.stderr.String(); strings.Contains(log, tok) || !strings.Contains(log, "live trace") {
		t.Fatalf("stderr:\n%s", log)
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
	srv := startLiveTraceServer(t)
	shot := t.TempDir() + "/livetrace.png"
	t.Setenv("LIVETRACE_URL", srv.url)
	t.Setenv("CONNECTION_STRING", srv.cs.String())
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
	if _, tok, _ := strings.Cut(srv.url, "#access_token="); strings.Contains(srv.stderr.String(), tok) {
		t.Error("the token is in the server's log")
	}
}
