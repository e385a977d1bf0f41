package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// transport is one WebSocket of the logical connection. Its gws read loop
// calls the client for each frame, in order, and closes done when the
// socket ends; a reliable connection outlives its transports.
type transport struct {
	c     *Client
	r     *run
	conn  *gws.Conn
	ready chan struct{} // closed on the "connected" system message
	done  chan struct{} // closed when the socket ended; code is then set
	code  uint16        // close code; 1006 when the socket just ended
	// isNew is set, before ready is closed, when the connected message
	// names a connection other than the one before (not a recovery).
	isNew bool
	// ackedSeq is the highest sequence id acknowledged on this transport
	// (guarded by Client.mu): a new one acknowledges again what the last
	// acknowledged, which may not have arrived.
	ackedSeq uint64
	lastRecv atomic.Int64 // unix nanoseconds of the last frame of any kind
	kick     chan struct{}
}

// writeTimeout bounds a write to a socket that stopped taking data; past it
// the transport is given up, as a dropped one.
const writeTimeout = 10 * time.Second

func (t *transport) write(frame []byte) error {
	op := gws.OpcodeText
	if t.c.proto.Binary() {
		op = gws.OpcodeBinary
	}
	_ = t.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return t.conn.WriteMessage(op, frame)
}

// abort cuts the socket without a close frame, as a network failure would:
// a reliable connection then recovers.
func (t *transport) abort() { _ = t.conn.NetConn().Close() }

func (t *transport) OnOpen(*gws.Conn) {}

func (t *transport) OnClose(_ *gws.Conn, err error) {
	t.code = 1006
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		t.code = ce.Code
	}
	// Out, and done, at once for whoever looks under the client's lock:
	// a request never goes out again on a transport known dead.
	t.c.mu.Lock()
	t.c.uninstallLocked(t.r, t)
	close(t.done)
	t.c.mu.Unlock()
}

func (t *transport) OnPing(s *gws.Conn, p []byte) {
	t.lastRecv.Store(time.Now().UnixNano())
	_ = s.WritePong(p)
}

func (t *transport) OnPong(*gws.Conn, []byte) { t.lastRecv.Store(time.Now().UnixNano()) }

func (t *transport) OnMessage(_ *gws.Conn, m *gws.Message) {
	t.lastRecv.Store(time.Now().UnixNano())
	// The decoders copy what they keep, so the buffer goes back at once.
	msg, err := t.c.proto.DecodeServerMessage(m.Bytes())
	_ = m.Close()
	if err != nil {
		// A frame this client does not understand (a newer service's) is
		// skipped: the connection is still good.
		t.c.logf("skipping a frame: %v", err)
		return
	}
	t.c.handle(t, msg)
}

// dial opens a transport to rawURL. With waitConnected it returns once the
// service's "connected" message came (a new connection); without, once the
// upgrade succeeded (a recovery: the service sends no "connected" then).
func (c *Client) dial(ctx context.Context, r *run, rawURL string, waitConnected bool) (*transport, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "wss" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("client: the URL must be ws:// or wss://, not %q", u.Scheme)
	}
	d := c.opts.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if u.Scheme == "wss" {
		cfg := c.opts.TLSConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("client: %w", err)
		}
		nc = tc
	}
	t := &transport{c: c, r: r, ready: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1)}
	t.lastRecv.Store(time.Now().UnixNano())
	header := http.Header{}
	header.Set("Sec-WebSocket-Protocol", c.proto.Name())
	// gws bounds the upgrade by its own timeout only: ctx cuts it short.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	conn, resp, err := gws.NewClientFromConn(t, &gws.ClientOption{
		Addr:               rawURL,
		RequestHeader:      header,
		HandshakeTimeout:   c.opts.HandshakeTimeout,
		ReadMaxPayloadSize: 64 << 20,
	}, nc)
	stopped := stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if resp != nil {
			return nil, fmt.Errorf("client: upgrade refused with HTTP %d", resp.StatusCode)
		}
		return nil, fmt.Errorf("client: upgrade: %w", err)
	}
	t.conn = conn
	go conn.ReadLoop()
	if !stopped { // ctx ended as the upgrade completed: nc is closed
		<-t.done
		return nil, ctx.Err()
	}
	if conn.SubProtocol() != c.proto.Name() {
		t.abort()
		<-t.done
		return nil, fmt.Errorf("client: the service chose subprotocol %q, not %q", conn.SubProtocol(), c.proto.Name())
	}
	if !waitConnected {
		return t, nil
	}
	select {
	case <-t.ready:
		return t, nil
	case <-t.done:
		return nil, &closedError{t.code}
	case <-ctx.Done():
		t.abort()
		<-t.done
		return nil, ctx.Err()
	}
}

// closedError is a socket that closed before the service said "connected".
type closedError struct{ code uint16 }

func (e *closedError) Error() string {
	return "client: the service closed the connection with " + strconv.Itoa(int(e.code)) + " before it was connected"
}

// recoveryURL is the URL a reliable connection resumes on: the URL it
// connected with, and the two query parameters of spec §8.3, as the JS
// client builds it.
func recoveryURL(base, connID, token string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("awps_connection_id", connID)
	q.Set("awps_reconnection_token", token)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
