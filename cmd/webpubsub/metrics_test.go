package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// serverLogs are the lines a server logged so far.
type serverLogs struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced at each line
}

// startServerLogs runs the built server with args, copying its stderr to
// the test's, and returns its connection string and its logs.
func startServerLogs(t *testing.T, args ...string) (pubsub.ConnectionString, *serverLogs) {
	t.Helper()
	bin := buildServer(t)
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), "WEBPUBSUB_CONNECTION_STRING=", "WEBPUBSUB_NATS_URL=")
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := &serverLogs{more: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			os.Stderr.WriteString(sc.Text() + "\n")
			logs.mu.Lock()
			logs.lines = append(logs.lines, sc.Text())
			close(logs.more)
			logs.more = make(chan struct{})
			logs.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); <-done })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	cs, err := pubsub.ParseConnectionString(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return cs, logs
}

// await returns the first submatch of the first log line matching re.
func (l *serverLogs) await(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timeout := time.After(wstest.WaitFor)
	for i := 0; ; {
		l.mu.Lock()
		for ; i < len(l.lines); i++ {
			if m := rx.FindStringSubmatch(l.lines[i]); m != nil {
				l.mu.Unlock()
				return m
			}
		}
		more := l.more
		l.mu.Unlock()
		select {
		case <-more:
		case <-timeout:
			t.Fatalf("no log line matches %s", re)
		}
	}
}

func (l *serverLogs) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServerMetricsAndLogs: the server's /metrics, on an address of its
// own, follows a client's connect, messages and close and a REST call; its
// logs say who connected and why they left, and never a key or token.
func TestServerMetricsAndLogs(t *testing.T) {
	cs, logs := startServerLogs(t, "-metrics-addr", "127.0.0.1:0")
	metricsURL := logs.await(t, `msg=metrics url=(\S+)`)[1]
	if st, _ := get(t, cs.Endpoint+"/metrics"); st != http.StatusNotFound {
		t.Fatalf("/metrics on the service's address: %d", st)
	}

	svc, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := svc.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup"}})
	c, id := wstest.DialJSON(t, u)
	c.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	c.ExpectAck(1, "")
	restSend(t, cs, id, "secret-body-text")
	if f := c.Next(); !strings.Contains(string(f.Data), "secret-body-text") {
		t.Fatalf("got %s", f.Data)
	}
	opened := logs.await(t, `level=INFO msg="connection opened" hub=chat connectionId=(\S+) userId=alice subprotocol=json.webpubsub.azure.v1`)
	if opened[1] != id {
		t.Fatalf("opened %s, connected as %s", opened[1], id)
	}
	c.Conn.WriteClose(1000, nil)
	<-c.Done()
	logs.await(t, `level=INFO msg="connection closed" hub=chat connectionId=`+regexp.QuoteMeta(id)+` userId=alice subprotocol=json.webpubsub.azure.v1 duration=\S+ closeReason=normal`)

	deadline := time.Now().Add(wstest.WaitFor)
	var body string
	for {
		_, body = get(t, metricsURL)
		if strings.Contains(body, `webpubsub_connections_closed_total{hub="chat",reason="normal"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the close never counted:\n%s", body)
		}
		time.Sleep(20 * time.Millisecond) // a scrape poll
	}
	for _, want := range []string{
		`webpubsub_connections_opened_total{hub="chat"} 1`,
		`webpubsub_inbound_messages_total{hub="chat"} 1`,
		`webpubsub_outbound_messages_total{hub="chat"} 1`,
		`webpubsub_outbound_bytes_total{hub="chat"} 16`,
		`webpubsub_rest_requests_total{operation="sendToConnection",status="202"} 1`,
		`webpubsub_rest_request_duration_seconds_count{operation="sendToConnection"} 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %s in\n%s", want, body)
		}
	}
	all := logs.all()
	for _, secret := range []string{cs.AccessKey, "secret-body-text", "access_token"} {
		if strings.Contains(all, secret) {
			t.Errorf("the logs hold %q", secret)
		}
	}
}
