package pubsub_test

// The transport end to end, over TCP and TLS: frames sent with the
// handshake, half-closes and resets, takeovers while a read loop waits,
// slow clients within WriteTimeout, message timeouts on both read paths,
// panics on the write path, and Shutdown with a user event under way.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A panic on the write path ends that transport alone; the bytes the
// writer had taken from the queue (in flight) must leave BufferedBytes too.
func TestWritePanicReturnsBufferedBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		srv  func(http.Handler) *httptest.Server
	}{{"tcp", httptest.NewServer}, {"tls", httptest.NewTLSServer}} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			e := newEnvOn(t, pubsub.Config{EventHandler: rec}, tc.srv)
			pubsub.SetTestHooks(t, func([]byte) {}, func(frame []byte) {
				if strings.Contains(string(frame), "kaboom") {
					panic("write path")
				}
			})
			u := e.url(pubsub.TokenOptions{UserID: "writer"})
			var c *wstest.Client
			if tc.name == "tls" {
				c = wstest.DialTLS(t, u, e.srv.Client().Transport.(*http.Transport).TLSClientConfig, "json.webpubsub.azure.v1")
			} else {
				c = wstest.Dial(t, u, nil, "json.webpubsub.azure.v1")
			}
			m := c.NextJSON()
			id := m["connectionId"].(string)
			must(t, e.hub.SendToConnection(context.Background(), id, pubsub.TextMessage("kaboom")))
			c.ExpectClose()
			rec.nextDisconnect(t)
			statsAtRest(t, e.svc)
		})
	}
}

// rawConnWith performs the handshake by hand over TCP or TLS, sending
// extra right after the request in the same write, and returns the
// connection with a reader positioned after the 101.
func rawConnWith(t *testing.T, e *testEnv, rawURL string, useTLS bool, extra []byte, subprotocols ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	if useTLS {
		cfg := e.srv.Client().Transport.(*http.Transport).TLSClientConfig
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: waitFor}, "tcp", u.Host, cfg)
	} else {
		conn, err = net.DialTimeout("tcp", u.Host, waitFor)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	protocols := ""
	if len(subprotocols) > 0 {
		protocols = "Sec-WebSocket-Protocol: " + strings.Join(subprotocols, ", ") + "\r\n"
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n", u.RequestURI(), u.Host, protocols)
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	if _, err := conn.Write(append([]byte(req), extra...)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return conn, r
}

// readServerFrame reads one unmasked server frame.
func readServerFrame(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return h[0] & 0x0f, p, err
}

// untilClose reads server frames until a close frame (its code) or an
// error (1006).
func untilClose(t *testing.T, r *bufio.Reader) uint16 {
	t.Helper()
	for {
		op, p, err := readServerFrame(r)
		if err != nil {
			return 1006
		}
		if op == 0x8 {
			if len(p) < 2 {
				return 1005
			}
			return binary.BigEndian.Uint16(p)
		}
	}
}

type eventLog struct {
	mu     sync.Mutex
	events []string
	ch     chan string
}

func newEventLog() *eventLog { return &eventLog{ch: make(chan string, 1024)} }

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.events = append(l.events, s)
	l.mu.Unlock()
	l.ch <- s
}

func (l *eventLog) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-l.ch:
		return s
	case <-timeAfter():
		t.Fatal("no event")
	}
	return ""
}

func (l *eventLog) handler() pubsub.EventHandlerFuncs {
	return pubsub.EventHandlerFuncs{
		OnConnected: func(_ context.Context, c pubsub.ConnectionContext) { l.add("connected " + c.UserID) },
		OnDisconnected: func(_ context.Context, c pubsub.ConnectionContext, reason string) {
			l.add("disconnected " + c.UserID)
		},
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			l.add("event " + req.ConnectionContext.UserID + " " + string(req.Data))
			return nil, nil
		},
	}
}

var transports = []struct {
	name string
	tls  bool
	srv  func(http.Handler) *httptest.Server
}{{"tcp", false, httptest.NewServer}, {"tls", true, httptest.NewTLSServer}}

// Frames a client sends with its handshake request (the HTTP server reads
// them into its buffer) are read first, in order, and then the rest from
// the socket, a message split between the two included; a close frame
// among them ends the connection in order.
func TestFramesSentWithTheHandshake(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			log := newEventLog()
			e := newEnvOn(t, pubsub.Config{EventHandler: log.handler(), MessageTimeout: 2 * time.Second}, tr.srv)
			var extra []byte
			extra = append(extra, wstest.ClientFrame(true, 0x1, []byte("one"))...)
			extra = append(extra, wstest.ClientFrame(true, 0x1, []byte("two"))...)
			third := wstest.ClientFrame(false, 0x1, []byte("thr"))
			third = append(third, wstest.ClientFrame(true, 0x0, []byte("ee"))...)
			extra = append(extra, third[:5]...)
			conn, r := rawConnWith(t, e, e.url(pubsub.TokenOptions{UserID: "u"}), tr.tls, extra)
			if s := log.next(t); s != "connected u" {
				t.Fatalf("got %q", s)
			}
			for _, want := range []string{"event u one", "event u two"} {
				if s := log.next(t); s != want {
					t.Fatalf("got %q want %q", s, want)
				}
			}
			time.Sleep(50 * time.Millisecond)
			rest := append(third[5:], wstest.ClientFrame(true, 0x1, []byte("four"))...)
			rest = append(rest, wstest.ClientFrame(true, 0x8, []byte{0x03, 0xe8})...)
			if _, err := conn.Write(rest); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"event u three", "event u four", "disconnected u"} {
				if s := log.next(t); s != want {
					t.Fatalf("got %q want %q", s, want)
				}
			}
			if code := untilClose(t, r); code != 1000 {
				t.Fatalf("close %d", code)
			}
			statsAtRest(t, e.svc)
			if st := e.svc.Stats(); st.MessageTimeouts != 0 || st.Panics != 0 {
				t.Fatalf("%+v", st)
			}
		})
	}
}

// A client that sends its last frames and then half-closes its side (FIN)
// has those frames handled, then its connection ends: the server reads EOF
// after them, as net.Conn.Read reports it.
func TestFramesThenHalfClose(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			log := newEventLog()
			e := newEnvOn(t, pubsub.Config{EventHandler: log.handler()}, tr.srv)
			conn, r := rawConnWith(t, e, e.url(pubsub.TokenOptions{UserID: "u"}), tr.tls, nil)
			if s := log.next(t); s != "connected u" {
				t.Fatalf("got %q", s)
			}
			var b []byte
			for i := range 50 {
				b = append(b, wstest.ClientFrame(true, 0x1, []byte(fmt.Sprint(i)))...)
			}
			if _, err := conn.Write(b); err != nil {
				t.Fatal(err)
			}
			switch c := conn.(type) {
			case *net.TCPConn:
				must(t, c.CloseWrite())
			case *tls.Conn:
				must(t, c.CloseWrite())
			}
			for i := range 50 {
				if s := log.next(t); s != "event u "+fmt.Sprint(i) {
					t.Fatalf("got %q", s)
				}
			}
			if s := log.next(t); s != "disconnected u" {
				t.Fatalf("got %q", s)
			}
			untilClose(t, r)
			statsAtRest(t, e.svc)
		})
	}
}

// A client reset (RST) in the middle of a large message: the transport
// ends, and its reservation of the inbound budget is given back.
func TestResetMidMessage(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			log := newEventLog()
			e := newEnvOn(t, pubsub.Config{EventHandler: log.handler()}, tr.srv)
			conn, _ := rawConnWith(t, e, e.url(pubsub.TokenOptions{UserID: "u"}), tr.tls, nil)
			if s := log.next(t); s != "connected u" {
				t.Fatalf("got %q", s)
			}
			frame := wstest.ClientFrame(true, 0x2, make([]byte, 512<<10))
			if _, err := conn.Write(frame[:200<<10]); err != nil {
				t.Fatal(err)
			}
			eventually(t, "inbound bytes reserved", func() bool { return e.svc.Stats().InboundBytes > 0 })
			var tc *net.TCPConn
			switch c := conn.(type) {
			case *net.TCPConn:
				tc = c
			case *tls.Conn:
				tc = c.NetConn().(*net.TCPConn)
			}
			must(t, tc.SetLinger(0))
			conn.Close()
			if s := log.next(t); s != "disconnected u" {
				t.Fatalf("got %q", s)
			}
			statsAtRest(t, e.svc)
		})
	}
}

// A chain of takeovers: the first transport's read loop is busy in a slow
// event; a second transport waits for it in OnOpen; a third takes the
// second over while it waits. Once the event returns, every old loop ends,
// the third transport is read, connected was raised once, and nothing is
// left behind.
func TestTakeoverChainWhileWaitingInOnOpen(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var connected, disconnected atomic.Int64
	e := newEnv(t, pubsub.Config{RecoveryWindow: time.Minute, EventHandler: pubsub.EventHandlerFuncs{
		OnConnected:    func(context.Context, pubsub.ConnectionContext) { connected.Add(1) },
		OnDisconnected: func(context.Context, pubsub.ConnectionContext, string) { disconnected.Add(1) },
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			if req.EventName == "slow" {
				close(entered)
				<-release
			}
			return nil, nil
		},
	}})
	r := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "r"}))
	r.c.Send(`{"type":"event","event":"slow","ackId":1,"dataType":"text","data":"x"}`)
	<-entered
	for range 5 { // each takes the previous over while it waits in OnOpen
		r.recover()
	}
	r.c.Send(`{"type":"event","event":"fast","ackId":2,"dataType":"text","data":"y"}`)
	time.Sleep(100 * time.Millisecond)
	close(release)
	r.c.ExpectAck(1, "") // the slow one's ack goes to the current transport
	r.c.ExpectAck(2, "")
	if n := connected.Load(); n != 1 {
		t.Fatalf("connected %d times", n)
	}
	r.c.Conn.WriteClose(1000, nil)
	eventually(t, "disconnected", func() bool { return disconnected.Load() == 1 })
	statsAtRest(t, e.svc)
}

// Over TLS: a reliable client that drops recovers and loses nothing; a
// client that stops reading is cut as a slow client without delaying the
// others, and its transport ends once its write times out (WriteTimeout),
// not 5 s later.
func TestTLSSlowClientEndsWithinWriteTimeout(t *testing.T) {
	rec := newRecorder()
	e := newEnvOn(t, pubsub.Config{EventHandler: rec, RecoveryWindow: time.Minute, OutboundBufferSize: 256 << 10, WriteTimeout: time.Second}, httptest.NewTLSServer)
	cfg := e.srv.Client().Transport.(*http.Transport).TLSClientConfig
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "https://"))
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Groups: []string{"room"}}))
	c := wstest.DialTLS(t, u, cfg, reliableJSON)
	r := &reliableClient{t: t, url: u, c: c}
	m := c.NextJSON()
	r.connID, r.token = m["connectionId"].(string), m["reconnectionToken"].(string)
	ctx := t.Context()
	for i := range 10 {
		must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage(fmt.Sprint(i))))
	}
	r.readUntil(5)
	detached(t, e, proxy, r)
	for i := 10; i < 20; i++ {
		must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage(fmt.Sprint(i))))
	}
	r.c = wstest.DialTLS(t, r.recoveryURL(r.connID, r.token), cfg, reliableJSON)
	r.readUntil(20)
	for i, d := range r.data {
		if d != fmt.Sprint(i) {
			t.Fatalf("data %v", r.data)
		}
	}

	// A TLS client that reads nothing.
	u2, _ := url.Parse(e.url(pubsub.TokenOptions{UserID: "slow", Groups: []string{"room"}}))
	slowConn, _ := rawConnWith(t, e, u2.String(), true, nil)
	_ = slowConn
	payload := strings.Repeat("x", 16<<10)
	for i := 0; e.svc.Stats().SlowClientDisconnects == 0; i++ {
		if i > 4000 {
			t.Fatal("the slow client was never cut")
		}
		must(t, e.hub.SendToGroup(ctx, "room", pubsub.TextMessage(payload)))
		r.ack()
		for r.c != nil {
			f := r.c.Next()
			if r.take(f) {
				break
			}
		}
	}
	cut := time.Now()
	if d := rec.nextDisconnect(t); d.Conn.UserID != "slow" {
		t.Fatalf("disconnected %+v", d)
	}
	// WriteTimeout is 1 s: its write timed out, the socket is closed and
	// its read loop ends. Closing a tls.Conn first writes close_notify
	// under a 5 s deadline of its own, to the socket that is full.
	if took := time.Since(cut); took > 3*time.Second {
		t.Errorf("the slow TLS client's disconnected event came %v after it was cut (WriteTimeout 1s)", took)
	}
	r.c.Conn.WriteClose(1000, nil)
	if d := rec.nextDisconnect(t); d.Conn.UserID != "r" {
		t.Fatalf("disconnected %+v", d)
	}
	statsAtRest(t, e.svc)
}

// A client that reads nothing is cut as a slow client; once its blocked
// write times out (WriteTimeout), its transport ends and the disconnected
// event follows. Over TLS that used to take 5 s more: closing a tls.Conn
// first sends close_notify, with a 5 s write deadline, to a socket that is
// full.
func TestSlowClientEndsWithinWriteTimeout(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			rec := newRecorder()
			const writeTimeout = time.Second
			e := newEnvOn(t, pubsub.Config{EventHandler: rec, OutboundBufferSize: 256 << 10, WriteTimeout: writeTimeout}, tr.srv)
			// A client that reads everything paces the sends.
			u := e.url(pubsub.TokenOptions{UserID: "reader", Groups: []string{"room"}})
			var reader *wstest.Client
			if tr.tls {
				reader = wstest.DialTLS(t, u, e.srv.Client().Transport.(*http.Transport).TLSClientConfig, "json.webpubsub.azure.v1")
			} else {
				reader = wstest.Dial(t, u, nil, "json.webpubsub.azure.v1")
			}
			reader.NextJSON()
			rawConnWith(t, e, e.url(pubsub.TokenOptions{UserID: "slow", Groups: []string{"room"}}), tr.tls, nil)
			payload := strings.Repeat("x", 16<<10)
			for i := 0; e.svc.Stats().SlowClientDisconnects == 0; i++ {
				if i > 4000 {
					t.Fatal("the slow client was never cut")
				}
				must(t, e.hub.SendToGroup(t.Context(), "room", pubsub.TextMessage(payload)))
				reader.Next()
			}
			start := time.Now()
			if d := rec.nextDisconnect(t); d.Conn.UserID != "slow" {
				t.Fatalf("disconnected %+v", d)
			}
			if took := time.Since(start); took > writeTimeout+2*time.Second {
				t.Fatalf("disconnected %v after the slow client was cut (WriteTimeout %v)", took, writeTimeout)
			} else {
				t.Logf("took %v", took)
			}
			reader.Conn.WriteClose(1000, nil)
			rec.nextDisconnect(t)
			statsAtRest(t, e.svc)
		})
	}
}

// MessageTimeout over both read paths (read(2) under RawConn.Read for TCP,
// tls.Conn.Read for TLS), with the unfinished message begun in the bytes
// sent with the handshake: the client is closed with 1008 and what it
// reserved of the inbound budget is given back.
func TestMessageTimeoutOnBothReadPaths(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			log := newEventLog()
			e := newEnvOn(t, pubsub.Config{EventHandler: log.handler(), MessageTimeout: 300 * time.Millisecond}, tr.srv)
			frame := wstest.ClientFrame(true, 0x2, make([]byte, 64<<10))
			whole := wstest.ClientFrame(true, 0x1, []byte("whole"))
			conn, r := rawConnWith(t, e, e.url(pubsub.TokenOptions{UserID: "u"}), tr.tls, append(whole, frame[:100]...))
			if s := log.next(t); s != "connected u" {
				t.Fatalf("got %q", s)
			}
			if s := log.next(t); s != "event u whole" {
				t.Fatalf("got %q", s)
			}
			start := time.Now()
			if _, err := conn.Write(frame[100 : 32<<10]); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(waitFor))
			code := untilClose(t, r)
			if code != 1008 {
				t.Fatalf("close %d", code)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("closed after %v", took)
			}
			if s := log.next(t); s != "disconnected u" {
				t.Fatalf("got %q", s)
			}
			statsAtRest(t, e.svc)
			if n := e.svc.Stats().MessageTimeouts; n != 1 {
				t.Fatalf("MessageTimeouts %d", n)
			}
		})
	}
}

// A connection's context "is cancelled when the connection is released,
// aborting its user events" (conn.ctx), but a connection is released only
// once its read loop has ended, and its user events run on that loop: the
// context is never cancelled while one runs. A user event that waits on
// its context then holds Shutdown (and any close) until its own timeout.
func TestShutdownCancelsARunningUserEvent(t *testing.T) {
	entered := make(chan struct{})
	cancelled := make(chan bool, 1)
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(ctx context.Context, _ *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			close(entered)
			select {
			case <-ctx.Done():
				cancelled <- true
				return nil, ctx.Err()
			case <-time.After(6 * time.Second): // the handler's own bound
				cancelled <- false
				return nil, nil
			}
		},
	}})
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "u"}))
	c.Send(`{"type":"event","event":"wait","ackId":1,"dataType":"text","data":"x"}`)
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := e.svc.Shutdown(ctx)
	if ok := <-cancelled; !ok || err != nil {
		t.Fatalf("Shutdown: %v; the running user event's context cancelled: %v", err, ok)
	}
}
