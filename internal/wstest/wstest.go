// Package wstest holds the WebSocket clients the tests drive the service
// with: a gws client that records what it receives, and a hand-made raw
// client that can stop reading or never answer pings.
package wstest

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

// WaitFor bounds every wait of a test: a failure, never a synchronisation.
const WaitFor = 10 * time.Second

// Frame is one message a client received.
type Frame struct {
	Binary bool
	Data   []byte
}

// CloseInfo is how the server closed a connection; 1006 when it sent no
// close frame.
type CloseInfo struct {
	Code   uint16
	Reason string
}

// Client is a real WebSocket client (gws) that records what it receives.
type Client struct {
	t      testing.TB
	Conn   *gws.Conn
	frames chan Frame
	done   chan struct{} // closed when the connection is
	info   CloseInfo     // how it closed; read after done
	once   sync.Once
}

func (c *Client) OnOpen(*gws.Conn)             {}
func (c *Client) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *Client) OnPong(*gws.Conn, []byte)     {}

func (c *Client) OnMessage(_ *gws.Conn, m *gws.Message) {
	c.frames <- Frame{Binary: m.Opcode == gws.OpcodeBinary, Data: append([]byte(nil), m.Bytes()...)}
	m.Close()
}

func (c *Client) OnClose(_ *gws.Conn, err error) {
	info := CloseInfo{Code: 1006}
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		info = CloseInfo{Code: ce.Code, Reason: string(ce.Reason)}
	}
	c.once.Do(func() { c.info = info; close(c.done) })
}

// Dial connects to url offering the subprotocols; it fails the test unless
// the handshake succeeds. The connection is closed when the test ends.
func Dial(t testing.TB, url string, header http.Header, subprotocols ...string) *Client {
	t.Helper()
	c, resp, err := TryDial(url, header, subprotocols...)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (status %d)", err, status)
	}
	c.t = t
	t.Cleanup(func() { c.Conn.NetConn().Close(); <-c.done })
	return c
}

// DialTLS connects to a wss:// url, trusting what cfg trusts, and reads
// nothing itself; the connection is closed when the test ends.
func DialTLS(t testing.TB, url string, cfg *tls.Config, subprotocols ...string) *Client {
	t.Helper()
	c, _, err := dial(url, nil, cfg, subprotocols)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.t = t
	t.Cleanup(func() { c.Conn.NetConn().Close(); <-c.done })
	return c
}

// TryDial connects without failing the test.
func TryDial(url string, header http.Header, subprotocols ...string) (*Client, *http.Response, error) {
	return dial(url, header, nil, subprotocols)
}

func dial(url string, header http.Header, tlsConfig *tls.Config, subprotocols []string) (*Client, *http.Response, error) {
	c := &Client{frames: make(chan Frame, 4096), done: make(chan struct{})}
	if header == nil {
		header = http.Header{}
	}
	if len(subprotocols) > 0 {
		header.Set("Sec-WebSocket-Protocol", strings.Join(subprotocols, ", "))
	}
	conn, resp, err := gws.NewClient(c, &gws.ClientOption{Addr: url, RequestHeader: header, ReadMaxPayloadSize: 32 << 20, TlsConfig: tlsConfig})
	if err != nil {
		return nil, resp, err
	}
	c.Conn = conn
	go conn.ReadLoop()
	return c, resp, nil
}

// DialJSON connects a json.webpubsub.azure.v1 client and reads its
// "connected" message; it returns the connection id.
func DialJSON(t testing.TB, url string) (*Client, string) {
	t.Helper()
	c := Dial(t, url, nil, "json.webpubsub.azure.v1")
	if got := c.Conn.SubProtocol(); got != "json.webpubsub.azure.v1" {
		t.Fatalf("negotiated subprotocol %q", got)
	}
	m := c.NextJSON()
	if m["type"] != "system" || m["event"] != "connected" {
		t.Fatalf("first message is not connected: %v", m)
	}
	return c, m["connectionId"].(string)
}

// Frames delivers the frames received, for a test that reads them itself.
func (c *Client) Frames() <-chan Frame { return c.frames }

// Done is closed when the connection is.
func (c *Client) Done() <-chan struct{} { return c.done }

// CloseInfo is how the connection closed; valid once Done is closed.
func (c *Client) CloseInfo() CloseInfo {
	<-c.done
	return c.info
}

// Next returns the next frame, failing the test if none comes.
func (c *Client) Next() Frame {
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
		c.t.Fatalf("connection closed (%d %q) while waiting for a frame", c.info.Code, c.info.Reason)
	case <-time.After(WaitFor):
		c.t.Fatal("timed out waiting for a frame")
	}
	return Frame{}
}

// NextJSON returns the next frame as a JSON object.
func (c *Client) NextJSON() map[string]any {
	c.t.Helper()
	f := c.Next()
	if f.Binary {
		c.t.Fatalf("binary frame on a JSON client: %x", f.Data)
	}
	var m map[string]any
	if err := json.Unmarshal(f.Data, &m); err != nil {
		c.t.Fatalf("frame is not JSON: %q", f.Data)
	}
	return m
}

// Send sends a text frame.
func (c *Client) Send(s string) {
	c.t.Helper()
	if err := c.Conn.WriteString(s); err != nil {
		c.t.Fatal(err)
	}
}

// SendBinary sends a binary frame.
func (c *Client) SendBinary(b []byte) {
	c.t.Helper()
	if err := c.Conn.WriteMessage(gws.OpcodeBinary, b); err != nil {
		c.t.Fatal(err)
	}
}

// ExpectAck reads the next frame and checks it is the ack of ackID with the
// given error name ("" for success).
func (c *Client) ExpectAck(ackID int, errName string) map[string]any {
	c.t.Helper()
	m := c.NextJSON()
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

// ExpectClose waits for the server to close the connection and returns how,
// with the frames that came before.
func (c *Client) ExpectClose() (CloseInfo, []Frame) {
	c.t.Helper()
	var got []Frame
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
		case <-time.After(WaitFor):
			c.t.Fatal("timed out waiting for the close")
		}
	}
}

// HandshakeStatus attempts an upgrade with a plain HTTP request and returns
// the status, for the refusals that happen before any upgrade.
func HandshakeStatus(t testing.TB, rawURL string, header http.Header) int {
	t.Helper()
	status, _ := HandshakeResponse(t, rawURL, header)
	return status
}

// HandshakeResponse is HandshakeStatus with the response's body (none
// after a 101).
func HandshakeResponse(t testing.TB, rawURL string, header http.Header) (status int, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, strings.Replace(rawURL, "ws", "http", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	for k, v := range header { // the test's headers win
		req.Header[k] = v
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections() // no idle connection outlives the test
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() // after a 101, the WebSocket
	if resp.StatusCode < 200 {
		return resp.StatusCode, ""
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// RawClient is a WebSocket client made by hand over TCP, so that a test can
// stop reading (a slow client) or never answer pings (a dead one).
type RawClient struct {
	conn net.Conn
	r    *bufio.Reader
}

// RawDial performs the handshake, offering the subprotocols, and reads
// nothing more.
func RawDial(t testing.TB, rawURL string, subprotocols ...string) *RawClient {
	t.Helper()
	c, err := TryRawDial(rawURL, RawOptions{Subprotocols: subprotocols})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// RawOptions are what TryRawDial offers and how it sets its socket up.
type RawOptions struct {
	// Subprotocols are offered in Sec-WebSocket-Protocol; none: a simple
	// client.
	Subprotocols []string
	// ReadBuffer, when set, is the socket's receive buffer (SO_RCVBUF),
	// set before the connection is made so that the window the client
	// advertises stays that small: a client that stops reading then holds
	// little, and the server's outbound queue fills soon.
	ReadBuffer int
}

// TryRawDial is RawDial without a test to fail: it returns the client once
// the server answered 101, or an error. The caller closes the client. The
// dial and the handshake are bounded by WaitFor.
func TryRawDial(rawURL string, opts RawOptions) (*RawClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := DialTCP(u.Host, opts.ReadBuffer)
	if err != nil {
		return nil, err
	}
	protocols := ""
	if len(opts.Subprotocols) > 0 {
		protocols = "Sec-WebSocket-Protocol: " + strings.Join(opts.Subprotocols, ", ") + "\r\n"
	}
	_ = conn.SetDeadline(time.Now().Add(WaitFor))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n", u.RequestURI(), u.Host, protocols)
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("handshake status %d", resp.StatusCode)
	}
	_ = conn.SetDeadline(time.Time{})
	return &RawClient{conn: conn, r: r}, nil
}

// DialTCP connects to addr with a receive buffer (SO_RCVBUF) of readBuffer
// bytes when it is positive, set before the connection is made so that the
// window it advertises stays that small: a reader that stops then holds
// little, and the server's writes block soon.
func DialTCP(addr string, readBuffer int) (net.Conn, error) {
	d := net.Dialer{Timeout: WaitFor}
	if readBuffer > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = setReadBuffer(fd, readBuffer)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.Dial("tcp", addr)
}

// Close closes the connection (with unread bytes, the kernel resets it).
func (c *RawClient) Close() error { return c.conn.Close() }

// CloseWrite half-closes the connection: the server reads the end of the
// stream after what was written, and can still answer.
func (c *RawClient) CloseWrite() error {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("wstest: the connection cannot be half-closed")
}

// SetWriteDeadline bounds the writes to come.
func (c *RawClient) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// DiscardUntilClosed reads and drops whatever the server sends until it
// ends the connection (EOF or a reset: nil), or fails when timeout passes
// first.
func (c *RawClient) DiscardUntilClosed(timeout time.Duration) error {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c.r)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the server did not end the connection within %v", timeout)
	}
	return nil
}

// Write sends raw bytes: frames the test builds itself, well-formed or not.
func (c *RawClient) Write(b []byte) error {
	_, err := c.conn.Write(b)
	return err
}

// WriteFrame sends one masked client frame (ClientFrame).
func (c *RawClient) WriteFrame(fin bool, opcode byte, payload []byte) error {
	return c.Write(ClientFrame(fin, opcode, payload))
}

// ClientFrame is one whole client frame, masked with a zero key so that the
// payload goes as it is, its length in the shortest form.
func ClientFrame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	h := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		h = append(h, 0x80|byte(n))
	case n < 1<<16:
		h = append(h, 0x80|126)
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h = append(h, 0x80|127)
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	h = append(h, 0, 0, 0, 0)
	return append(h, payload...)
}

// Closed reads the server's frames on a goroutine of its own, discarding
// them, until the close frame or an error (code 1006, the error as reason),
// which it then delivers. The test reads nothing else from c meanwhile.
func (c *RawClient) Closed() <-chan CloseInfo {
	ch := make(chan CloseInfo, 1)
	go func() {
		for {
			op, p, err := c.ReadFrame()
			switch {
			case err != nil:
				ch <- CloseInfo{Code: 1006, Reason: err.Error()}
				return
			case op == 0x8 && len(p) >= 2:
				ch <- CloseInfo{Code: binary.BigEndian.Uint16(p), Reason: string(p[2:])}
				return
			case op == 0x8:
				ch <- CloseInfo{Code: 1005}
				return
			}
		}
	}()
	return ch
}

// ReadFrame reads one unmasked server frame.
func (c *RawClient) ReadFrame() (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		_, err = io.ReadFull(c.r, b[:])
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		_, err = io.ReadFull(c.r, b[:])
		n = binary.BigEndian.Uint64(b[:])
	}
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.r, payload)
	return h[0] & 0x0f, payload, err
}

// Proxy forwards TCP connections to a server until Drop cuts every one of
// them at once, as a network failure would: no close frame, no FIN from the
// other side first. SetTarget makes it a load balancer that sends the
// connections to come to another server.
type Proxy struct {
	ln       net.Listener
	target   string // the server URL rewrites
	mu       sync.Mutex
	dialTo   string // where new connections go: target until SetTarget
	conns    []net.Conn
	accepted int
	wg       sync.WaitGroup
}

// Accepted counts the connections the proxy has forwarded.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// NewProxy listens on a free loopback port and forwards to target
// (host:port). It stops when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, dialTo: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.Drop(); p.wg.Wait() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL rewrites a ws:// URL of the target to go through the proxy.
func (p *Proxy) URL(u string) string { return strings.Replace(u, p.target, p.Addr(), 1) }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		to := p.dialTo
		p.mu.Unlock()
		out, err := net.Dial("tcp", to) // "": an error, at once
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.accepted++
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// SetTarget sends the connections the proxy accepts from now on to target
// (host:port), as a load balancer moving clients to another server would;
// those already made stay where they are until Drop. An empty target
// closes them at once, as a balancer with no server to send them to. URL
// still rewrites the first target's URLs.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.dialTo = target
	p.mu.Unlock()
}

// Drop cuts every connection through the proxy. New ones are still
// accepted.
func (p *Proxy) Drop() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not an orderly close
		}
		c.Close()
	}
}

var npmMu sync.Mutex

// interopPackages are the pinned npm packages of interop/.
var interopPackages = []string{"@azure/web-pubsub-client", "@azure/web-pubsub", "@azure/web-pubsub-express", "playwright-core"}

// Interop returns the interop folder at dir (relative to the test's package)
// with its pinned npm packages installed (npm ci when one is missing), or
// skips the test where Node is not installed; under CI that is a failure.
func Interop(t testing.TB, dir string) string {
	t.Helper()
	dir, _ = filepath.Abs(dir)
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed")
		}
		t.Skip("node is not installed")
	}
	installed := func() bool {
		for _, p := range interopPackages {
			if _, err := os.Stat(filepath.Join(dir, "node_modules", p)); err != nil {
				return false
			}
		}
		return true
	}
	npmMu.Lock()
	defer npmMu.Unlock()
	unlock, err := lockFile(filepath.Join(dir, ".npm-install.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if !installed() {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return dir
}
