package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/lxzan/gws"
)

// closeRecorder is a gws client that reports how the server closed it.
type closeRecorder struct {
	gws.BuiltinEventHandler
	first  chan string
	closed chan *gws.CloseError
}

func (c *closeRecorder) OnMessage(_ *gws.Conn, m *gws.Message) {
	select {
	case c.first <- m.Data.String():
	default:
	}
	m.Close()
}

func (c *closeRecorder) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	errors.As(err, &ce)
	c.closed <- ce
}

// TestServerBinary builds the command, runs it on a free port with a fresh
// key, connects a client with a token for the connection string it printed,
// and stops it with SIGTERM.
func TestServerBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "webpubsub")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "WEBPUBSUB_CONNECTION_STRING=", "WEBPUBSUB_NATS_URL=")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	cs, err := pubsub.ParseConnectionString(strings.TrimSpace(line))
	if err != nil || len(cs.AccessKey) < 32 || !strings.HasPrefix(cs.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("printed %q: %v", line, err)
	}

	svc, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	if err != nil {
		t.Fatal(err)
	}
	url, err := svc.ClientURL("chat", pubsub.TokenOptions{UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	rec := &closeRecorder{first: make(chan string, 1), closed: make(chan *gws.CloseError, 1)}
	hdr := map[string][]string{"Sec-Websocket-Protocol": {"json.webpubsub.azure.v1"}}
	conn, _, err := gws.NewClient(rec, &gws.ClientOption{Addr: url, RequestHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	go conn.ReadLoop()
	select {
	case m := <-rec.first:
		if !strings.Contains(m, `"event":"connected"`) || !strings.Contains(m, `"userId":"u"`) {
			t.Fatalf("first message %s", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connected message")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case ce := <-rec.closed:
		if ce == nil || ce.Code != 1001 {
			t.Fatalf("close %+v, want 1001", ce)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client not closed on SIGTERM")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func TestConnectionStringSources(t *testing.T) {
	t.Setenv("WEBPUBSUB_CONNECTION_STRING", "Endpoint=http://env-host;Port=9000;AccessKey=env-key;Version=1.0;")
	cs, err := connectionString("", "http", "127.0.0.1:8080")
	if err != nil || cs.Endpoint != "http://env-host:9000" || cs.AccessKey != "env-key" {
		t.Fatalf("from the environment: %+v %v", cs, err)
	}
	cs, err = connectionString("Endpoint=https://flag-host;AccessKey=flag-key", "http", "127.0.0.1:8080")
	if err != nil || cs.Endpoint != "https://flag-host" || cs.AccessKey != "flag-key" {
		t.Fatalf("the flag wins: %+v %v", cs, err)
	}
	if _, err := connectionString("Endpoint=http://x", "http", "127.0.0.1:8080"); !errors.Is(err, pubsub.ErrInvalidConnectionString) {
		t.Fatalf("no AccessKey: %v", err)
	}
	t.Setenv("WEBPUBSUB_CONNECTION_STRING", "")
	cs, err = connectionString("", "http", "127.0.0.1:8080")
	if err != nil || cs.Endpoint != "http://127.0.0.1:8080" || len(cs.AccessKey) < 32 {
		t.Fatalf("generated: %+v %v", cs, err)
	}
	cs, err = connectionString("", "https", "127.0.0.1:8443")
	if err != nil || cs.Endpoint != "https://127.0.0.1:8443" {
		t.Fatalf("generated, TLS: %+v %v", cs, err)
	}
}
