package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
)

// The in-process servers start goroutines; none may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sdkDo calls the REST API as a server SDK that sends paths as written
// would (Go's net/http does), signing a token for each URL, and follows a
// 307/308 redirect with a token signed for the new URL.
func sdkDo(t *testing.T, cs pubsub.ConnectionString, method, path, contentType, body string) *http.Response {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	u := cs.Endpoint + "/api/" + path + "?api-version=2024-12-01"
	for range 5 {
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(cs.AccessKey))
		req, err := http.NewRequest(method, u, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTemporaryRedirect && resp.StatusCode != http.StatusPermanentRedirect {
			return resp
		}
		next, err := req.URL.Parse(resp.Header.Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		u = next.String()
	}
	t.Fatal("too many redirects")
	return nil
}

// TestDotNamesStayNames: through cmd/webpubsub, the user and group ".."
// are names. Behind http.ServeMux, /users/../:send was redirected to the
// hub's /:send, and a client that signs again on redirects reached
// everyone.
func TestDotNamesStayNames(t *testing.T) {
	cs := startServer(t)
	minter, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(user, group string) (*wstest.Client, string) {
		u, err := minter.ClientURL("chat", pubsub.TokenOptions{UserID: user, Groups: []string{group}})
		if err != nil {
			t.Fatal(err)
		}
		return wstest.DialJSON(t, u)
	}
	dots, dotsID := dial("..", "..")
	alice, aliceID := dial("alice", "room")
	quiet := func(step string) {
		t.Helper()
		for _, c := range []struct {
			c  *wstest.Client
			id string
		}{{dots, dotsID}, {alice, aliceID}} {
			restSend(t, cs, c.id, "barrier:"+step)
			if f := c.c.Next(); !strings.Contains(string(f.Data), "barrier:"+step) {
				t.Fatalf("%s: unexpected %s", step, f.Data)
			}
		}
	}

	for _, path := range []string{"hubs/chat/users/../:send", "hubs/chat/groups/../:send", "hubs/chat/users/%2E%2E/:send"} {
		if resp := sdkDo(t, cs, "POST", path, "text/plain", path); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		if m := dots.NextJSON(); m["data"] != path {
			t.Fatalf("%s: .. got %v", path, m)
		}
		quiet(url.PathEscape(path)) // alice got nothing
	}
	if resp := sdkDo(t, cs, "HEAD", "hubs/chat/users/..", "", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("userExists(..): %d", resp.StatusCode)
	}
	if resp := sdkDo(t, cs, "POST", "hubs/chat/users/../:closeConnections", "", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("closeUserConnections(..): %d", resp.StatusCode)
	}
	if info, _ := dots.ExpectClose(); info.Code != 1000 {
		t.Fatalf(".. closed with %+v", info)
	}
	restSend(t, cs, aliceID, "still here")
	if m := alice.NextJSON(); m["data"] != "still here" {
		t.Fatalf("alice got %v", m)
	}
}

// inProcess runs newServer for a fresh service on a free port, with limits
// a test can wait out; both stop when the test ends.
type inProcess struct {
	svc  *pubsub.Service
	cs   pubsub.ConnectionString
	addr string
}

func startInProcess(t *testing.T, l limits) *inProcess {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cs := pubsub.ConnectionString{Endpoint: "http://" + ln.Addr().String(), AccessKey: "an-access-key-of-at-least-32-bytes!"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(svc, log, l)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
		defer cancel()
		if err := errors.Join(svc.Shutdown(ctx), srv.Shutdown(ctx)); err != nil {
			t.Error(err)
		}
		<-done
	})
	return &inProcess{svc: svc, cs: cs, addr: ln.Addr().String()}
}

// raw opens a TCP connection to the server; reads give up after WaitFor.
func (p *inProcess) raw(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(wstest.WaitFor))
	return c, bufio.NewReader(c)
}

// response reads one response and checks its status.
func response(t *testing.T, r *bufio.Reader, method string, status int) {
	t.Helper()
	resp, err := http.ReadResponse(r, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d", resp.StatusCode, status)
	}
}

// closedByServer waits for the server to close the connection.
func closedByServer(t *testing.T, r *bufio.Reader, what string) {
	t.Helper()
	if b, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("%s: read %q, %v; want the server to close the connection (EOF)", what, b, err)
	}
}

// testLimits are short enough to wait out, long enough for a request
// written at once to arrive within them.
var testLimits = limits{readHeader: 300 * time.Millisecond, idle: 300 * time.Millisecond, body: 300 * time.Millisecond}

// TestIdleConnectionsAreClosed: a kept-alive connection left idle after an
// unauthenticated request is closed after the idle timeout; they filled the
// server's file descriptors when nothing closed them.
func TestIdleConnectionsAreClosed(t *testing.T) {
	p := startInProcess(t, testLimits)
	for _, tc := range []struct {
		request string
		method  string
		status  int
	}{
		{"HEAD /api/health HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD", 200},
		{"POST /api/hubs/chat/:send?api-version=2024-12-01 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "POST", 401},
	} {
		c, r := p.raw(t)
		fmt.Fprint(c, tc.request)
		response(t, r, tc.method, tc.status)
		closedByServer(t, r, tc.method+" then idle")
	}
}

// TestEndlessBodyIsAnswered: a :send whose chunked body never ends gets 408
// (the request did not arrive in time; RFC 9110 §15.5.9) and its
// connection is closed, instead of being held with no answer.
func TestEndlessBodyIsAnswered(t *testing.T) {
	p := startInProcess(t, testLimits)
	u := p.cs.Endpoint + "/api/hubs/chat/:send?api-version=2024-12-01"
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(p.cs.AccessKey))
	c, r := p.raw(t)
	fmt.Fprintf(c, "POST /api/hubs/chat/:send?api-version=2024-12-01 HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", p.addr, tok)
	response(t, r, "POST", http.StatusRequestTimeout)
	closedByServer(t, r, "after the 408")
}

// TestHeaderLimits: headers that never end are cut off, and headers past
// maxHeaderBytes get 431.
func TestHeaderLimits(t *testing.T) {
	p := startInProcess(t, testLimits)
	c, r := p.raw(t)
	fmt.Fprint(c, "GET /api/health HTTP/1.1\r\nHost: x\r\n")
	closedByServer(t, r, "unfinished headers")

	c, r = p.raw(t)
	fmt.Fprintf(c, "GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", maxHeaderBytes+4096))
	response(t, r, "GET", http.StatusRequestHeaderFieldsTooLarge)
}

// TestWebSocketOutlivesLimits: a WebSocket connection is not an HTTP
// request in progress: it stays up after every limit has cut off the HTTP
// connections opened after it.
func TestWebSocketOutlivesLimits(t *testing.T) {
	p := startInProcess(t, testLimits)
	u, err := p.svc.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup"}})
	if err != nil {
		t.Fatal(err)
	}
	ws, id := wstest.DialJSON(t, u)

	// Each limit fires on a connection opened after the WebSocket.
	idle, idleR := p.raw(t)
	fmt.Fprint(idle, "HEAD /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
	response(t, idleR, "HEAD", 200)
	header, headerR := p.raw(t)
	fmt.Fprint(header, "GET /api/health HTTP/1.1\r\n")
	body, bodyR := p.raw(t)
	fmt.Fprint(body, "POST /client/hubs/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	closedByServer(t, idleR, "idle")
	closedByServer(t, headerR, "unfinished headers")
	response(t, bodyR, "POST", http.StatusBadRequest)
	closedByServer(t, bodyR, "endless body")

	// The WebSocket still works both ways.
	ws.Send(`{"type":"joinGroup","group":"g","ackId":1}`)
	ws.ExpectAck(1, "")
	hub, _ := p.svc.Hub("chat")
	if err := hub.SendToConnection(t.Context(), id, pubsub.TextMessage("still here")); err != nil {
		t.Fatal(err)
	}
	if m := ws.NextJSON(); m["data"] != "still here" {
		t.Fatalf("got %v", m)
	}
}

// TestKeyOnlyOnStdout: the server prints its connection string, key
// included, on stdout, where a user gets it; its logs and errors (stderr)
// never show the key, even when the connection string is malformed.
func TestKeyOnlyOnStdout(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "webpubsub")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const key = "SECRET-key-0123456789abcdefghijklmnopqrstuvwxyz"

	// Malformed: the key without its name. An error, and no key.
	var stderr bytes.Buffer
	bad := exec.Command(bin, "-addr", "127.0.0.1:0", "-connection-string", "Endpoint=http://localhost;"+key)
	bad.Stderr = &stderr
	if err := bad.Run(); err == nil {
		t.Fatal("a malformed connection string was accepted")
	}
	if !strings.Contains(stderr.String(), "invalid connection string") || strings.Contains(stderr.String(), "SECRET") {
		t.Fatalf("stderr: %s", stderr.String())
	}

	// Valid: the key on stdout only.
	stderr.Reset()
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "WEBPUBSUB_NATS_URL=", "WEBPUBSUB_CONNECTION_STRING=Endpoint=http://localhost;AccessKey="+key+";Version=1.0;")
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if want := "Endpoint=http://localhost;AccessKey=" + key + ";Version=1.0;\n"; line != want {
		t.Fatalf("stdout %q, want %q", line, want)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(stderr.String(), "AccessKey=***") || strings.Contains(stderr.String(), "SECRET") {
		t.Fatalf("stderr: %s", stderr.String())
	}
}
