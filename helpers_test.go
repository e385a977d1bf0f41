package pubsub_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/lxzan/gws"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait in these tests: a failure, never a sync point.
const waitFor = 10 * time.Second

// testEnv is a service mounted in an httptest server, the way an application
// embeds it.
type testEnv struct {
	t   *testing.T
	svc *pubsub.Service
	srv *httptest.Server
	hub *pubsub.Hub
}

func newEnv(t *testing.T, cfg pubsub.Config) *testEnv {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	if cfg.AccessKey == "" {
		cfg.AccessKey = "primary-access-key-0123456789abcdef"
	}
	cfg.Endpoint = srv.URL
	svc, err := pubsub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/client/", svc.ClientHandler())
	hub, err := svc.Hub("chat")
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, svc: svc, srv: srv, hub: hub}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return e
}

// url returns a client URL for hub "chat" with a token of opts.
func (e *testEnv) url(opts pubsub.TokenOptions) string {
	e.t.Helper()
	u, err := e.svc.ClientURL("chat", opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return u
}

func (e *testEnv) token(opts pubsub.TokenOptions) string {
	e.t.Helper()
	tok, err := e.svc.ClientToken("chat", opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// wsURL is the server's ws:// base.
func (e *testEnv) wsURL() string { return "ws" + strings.TrimPrefix(e.srv.URL, "http") }

// frame is one message a test client received.
type frame struct {
	binary bool
	data   []byte
}

type closeInfo struct {
	code   uint16
	reason string
}

// client is a real WebSocket client (gws) that records what it receives.
type client struct {
	t      *testing.T
	conn   *gws.Conn
	frames chan frame
	done   chan struct{} // closed when the connection is
	info   closeInfo     // how it closed; read after done
	once   sync.Once
}

func (c *client) OnOpen(*gws.Conn)             {}
func (c *client) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *client) OnPong(*gws.Conn, []byte)     {}
func (c *client) OnMessage(_ *gws.Conn, m *gws.Message) {
	c.frames <- frame{binary: m.Opcode == gws.OpcodeBinary, data: append([]byte(nil), m.Bytes()...)}
	m.Close()
}
func (c *client) OnClose(_ *gws.Conn, err error) {
	info := closeInfo{code: 1006}
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		info = closeInfo{code: ce.Code, reason: string(ce.Reason)}
	}
	c.once.Do(func() { c.info = info; close(c.done) })
}

// dial connects to url offering the subprotocols; it fails the test unless
// the handshake succeeds.
func dial(t *testing.T, url string, header http.Header, subprotocols ...string) *client {
	t.Helper()
	c, resp, err := tryDial(url, header, subprotocols...)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	c.t = t
	t.Cleanup(func() { c.conn.NetConn().Close(); <-c.done })
	return c
}

func tryDial(url string, header http.Header, subprotocols ...string) (*client, *http.Response, error) {
	c := &client{frames: make(chan frame, 4096), done: make(chan struct{})}
	if header == nil {
		header = http.Header{}
	}
	if len(subprotocols) > 0 {
		header.Set("Sec-WebSocket-Protocol", strings.Join(subprotocols, ", "))
	}
	conn, resp, err := gws.NewClient(c, &gws.ClientOption{Addr: url, RequestHeader: header, ReadMaxPayloadSize: 32 << 20})
	if err != nil {
		return nil, resp, err
	}
	c.conn = conn
	go conn.ReadLoop()
	return c, resp, nil
}

// dialJSON connects a json.webpubsub.azure.v1 client and reads its
// "connected" message.
func dialJSON(t *testing.T, url string) (*client, string) {
	t.Helper()
	c := dial(t, url, nil, "json.webpubsub.azure.v1")
	if got := c.conn.SubProtocol(); got != "json.webpubsub.azure.v1" {
		t.Fatalf("negotiated subprotocol %q", got)
	}
	m := c.nextJSON()
	if m["type"] != "system" || m["event"] != "connected" {
		t.Fatalf("first message is not connected: %v", m)
	}
	return c, m["connectionId"].(string)
}

func (c *client) next() frame {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-c.done:
		select {
		case f := <-c.frames: // frames that arrived before the close come first
			return f
		default:
		}
		c.t.Fatalf("connection closed (%d %q) while waiting for a frame", c.info.code, c.info.reason)
	case <-time.After(waitFor):
		c.t.Fatal("timed out waiting for a frame")
	}
	return frame{}
}

func (c *client) nextJSON() map[string]any {
	c.t.Helper()
	f := c.next()
	if f.binary {
		c.t.Fatalf("binary frame on a JSON client: %x", f.data)
	}
	var m map[string]any
	if err := json.Unmarshal(f.data, &m); err != nil {
		c.t.Fatalf("frame is not JSON: %q", f.data)
	}
	return m
}

func (c *client) send(s string) {
	c.t.Helper()
	if err := c.conn.WriteString(s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) sendBinary(b []byte) {
	c.t.Helper()
	if err := c.conn.WriteMessage(gws.OpcodeBinary, b); err != nil {
		c.t.Fatal(err)
	}
}

// expectAck reads the next frame and checks it is the ack of ackID with the
// given error name ("" for success).
func (c *client) expectAck(ackID int, errName string) map[string]any {
	c.t.Helper()
	m := c.nextJSON()
	if m["type"] != "ack" || m["ackId"] != float64(ackID) {
		c.t.Fatalf("want ack %d, got %v", ackID, m)
	}
	if errName == "" {
		if m["success"] != true || m["error"] != nil {
			c.t.Fatalf("want a successful ack, got %v", m)
		}
		return m
	}
	e, _ := m["error"].(map[string]any)
	if m["success"] != false || e == nil || e["name"] != errName {
		c.t.Fatalf("want ack error %s, got %v", errName, m)
	}
	return m
}

// expectClose waits for the server to close the connection, draining frames.
func (c *client) expectClose() (closeInfo, []frame) {
	c.t.Helper()
	var got []frame
	for {
		select {
		case f := <-c.frames:
			got = append(got, f)
		case <-c.done:
			for {
				select {
				case f := <-c.frames:
					got = append(got, f)
				default:
					return c.info, got
				}
			}
		case <-time.After(waitFor):
			c.t.Fatal("timed out waiting for the close")
		}
	}
}

// barrier proves a client has received everything sent to it before: the
// marker sent through the Go API now must be the next frame it reads.
func (e *testEnv) barrier(c *client, connID string) {
	e.t.Helper()
	if err := e.hub.SendToConnection(context.Background(), connID, pubsub.TextMessage("barrier")); err != nil {
		e.t.Fatal(err)
	}
	f := c.next()
	if !strings.Contains(string(f.data), "barrier") {
		e.t.Fatalf("expected nothing before the barrier, got %q", f.data)
	}
}

// handshakeStatus attempts an upgrade with a plain HTTP request and returns
// the status, for the refusals that happen before any upgrade.
func handshakeStatus(t *testing.T, rawURL string, header http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, strings.Replace(rawURL, "ws", "http", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections() // no idle connection outlives the test
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func timeAfter() <-chan time.Time { return time.After(waitFor) }

func itoa(i int) string { return strconv.Itoa(i) }

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }
