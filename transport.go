package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/embedwps/pubsub/protocol"
	"github.com/lxzan/gws"
)

// This file is the edge between the service and the gws WebSocket transport:
// the client endpoint's handshake, and gws's callbacks.

// ClientHandler returns the handler of the client endpoint. Mount it at
// "/client/" of the server's mux: it serves /client/hubs/{hub} and
// /client/?hub={hub}.
func (s *Service) ClientHandler() http.Handler { return http.HandlerFunc(s.serveClient) }

// predefinedKinds maps the predefined subprotocols to client kinds.
var predefinedKinds = map[string]clientKind{
	protocol.JSONSubprotocol:             kindJSON,
	protocol.JSONReliableSubprotocol:     kindJSONReliable,
	protocol.ProtobufSubprotocol:         kindProtobuf,
	protocol.ProtobufReliableSubprotocol: kindProtobufReliable,
}

var predefinedSubprotocols = []string{
	protocol.JSONSubprotocol, protocol.JSONReliableSubprotocol,
	protocol.ProtobufSubprotocol, protocol.ProtobufReliableSubprotocol,
}

func predefined(name string) (string, bool) {
	for _, p := range predefinedSubprotocols {
		if strings.EqualFold(p, name) {
			return p, true
		}
	}
	return "", false
}

func (s *Service) serveClient(w http.ResponseWriter, r *http.Request) {
	if s.isClosed() {
		http.Error(w, "the service is shutting down", http.StatusServiceUnavailable)
		return
	}
	hubName, ok := clientHubName(r)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if !hubNamePattern.MatchString(hubName) {
		http.Error(w, "invalid hub name", http.StatusBadRequest)
		return
	}
	hubName = strings.ToLower(hubName)
	if r.Method != http.MethodGet || !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		http.Error(w, "the client endpoint takes WebSocket upgrade requests only", http.StatusBadRequest)
		return
	}
	q := r.URL.Query() // once: an access token makes it the longest part of the request
	if q.Has("awps_connection_id") {
		s.serveRecovery(w, r, hubName, q.Get("awps_connection_id"), q.Get("awps_reconnection_token"))
		return
	}

	id, err := s.authenticateClient(r, q, hubName)
	switch {
	case errors.Is(err, errNoToken) && s.allowAnonymous(hubName):
		id = &identity{}
	case errors.Is(err, errTokenGroupName):
		http.Error(w, "The token contains an invalid group name.", http.StatusBadRequest) // the emulator's words
		return
	case err != nil:
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "Unauthorized: "+err.Error(), http.StatusUnauthorized)
		return
	}

	offered := offeredSubprotocols(r.Header)
	connID := newConnectionID()
	userID, roles, groups, state := id.userID, id.roles, id.groups, ""
	chosen := ""
	resp, err := s.handler.Connect(r.Context(), &ConnectRequest{
		ConnectionContext:  ConnectionContext{Hub: hubName, ConnectionID: connID, UserID: userID},
		Claims:             id.claims,
		Query:              queryWithout(q, "access_token"),
		Headers:            headersWithout(r.Header, "Authorization"),
		Subprotocols:       offered,
		ClientCertificates: clientCertificates(r),
		Roles:              roles,
		Groups:             groups,
	})
	var refused *ConnectError
	switch {
	case errors.As(err, &refused):
		s.log.Info("connect refused by the event handler", "hub", hubName, "status", refused.Status, "reason", refused.Reason)
		http.Error(w, refused.Reason, refused.Status)
		return
	case err != nil && !errors.Is(err, ErrNoEventHandler):
		s.log.Error("connect event failed", "hub", hubName, "err", err)
		http.Error(w, "the connect event handler failed", http.StatusInternalServerError)
		return
	case err == nil && resp != nil:
		if resp.UserID != nil {
			userID = *resp.UserID
		}
		if resp.Roles != nil {
			roles = resp.Roles
		}
		if resp.Groups != nil {
			groups = resp.Groups
		}
		if resp.ConnectionState != nil {
			state = *resp.ConnectionState
		}
		if resp.Subprotocol != "" {
			for _, o := range offered {
				if o == resp.Subprotocol {
					chosen = o
				}
			}
			if chosen == "" {
				s.log.Error("the connect event handler chose a subprotocol the client did not offer", "hub", hubName, "subprotocol", resp.Subprotocol)
				http.Error(w, "the connect event handler chose a subprotocol the client did not offer", http.StatusInternalServerError)
				return
			}
		}
		for _, g := range groups {
			if !protocol.ValidGroupName(g) {
				http.Error(w, "the connect event handler returned an invalid group name", http.StatusInternalServerError)
				return
			}
		}
	}
	perms, err := newPermissions(roles)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}

	kind, chosen := negotiate(offered, chosen)
	if chosen != "" {
		r.Header.Set("Sec-WebSocket-Protocol", chosen)
	} else {
		r.Header.Del("Sec-WebSocket-Protocol")
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		hub:           s.hub(hubName),
		id:            connID,
		userID:        userID,
		subprotocol:   chosen,
		kind:          kind,
		perms:         perms,
		ctx:           ctx,
		cancel:        cancel,
		state:         state,
		initialGroups: groups,
	}
	c.lastSeen.Store(time.Now().UnixNano())
	// The connection is registered, in its groups, before the client sees
	// the 101: a client that has connected can be sent to. Its outbox is held
	// until the upgrade is done, and "connected" is queued first so that no
	// message overtakes it.
	c.out = newOutbox()
	if kind.reliable() {
		c.rel = &reliable{}
	}
	if kind != kindSimple {
		token := ""
		if kind.reliable() {
			token = s.reconnectionToken(hubName, connID)
		}
		c.send(c.encodeConnected(token))
	}
	if !s.register(c) {
		cancel()
		http.Error(w, "the service is shutting down", http.StatusServiceUnavailable)
		return
	}
	socket, err := s.upgrader(chosen).Upgrade(w, r)
	if err != nil {
		s.log.Debug("websocket upgrade failed", "hub", hubName, "err", err)
		s.release(c, "")
		return
	}
	socket.Session().(*session).conn = c
	c.start(c.out, socket)
	go socket.ReadLoop()
}

// serveRecovery resumes a reliable connection on a new transport (client spec
// §8.3): no access token, the connection id and its reconnection token. The
// unacknowledged messages are replayed first, in order. A recovery that is
// impossible gets a WebSocket closed with 1008, which tells the client to
// start a new connection.
func (s *Service) serveRecovery(w http.ResponseWriter, r *http.Request, hubName, connID, token string) {
	var c *conn
	if h, ok := s.hubs.Load(hubName); ok && s.validReconnectionToken(hubName, connID, token) {
		if found, ok := h.conns.Load(connID); ok && found.rel != nil {
			c = found
		}
	}
	o := newOutbox()
	if c == nil || !c.resume(o) {
		offered := offeredSubprotocols(r.Header)
		chosen := ""
		if len(offered) > 0 {
			chosen = offered[0]
			r.Header.Set("Sec-WebSocket-Protocol", chosen)
		}
		socket, err := s.upgrader(chosen).Upgrade(w, r)
		if err == nil {
			_ = socket.WriteClose(DisconnectNotRecovered.Code, []byte(DisconnectNotRecovered.Reason))
		}
		return
	}
	// A reliable connection keeps its subprotocol across transports.
	r.Header.Set("Sec-WebSocket-Protocol", c.subprotocol)
	socket, err := s.upgrader(c.subprotocol).Upgrade(w, r)
	if err != nil {
		s.log.Debug("websocket upgrade failed during recovery", "hub", hubName, "err", err)
		c.detach(o, "the recovery handshake failed")
		return
	}
	c.lastSeen.Store(time.Now().UnixNano())
	c.closing.Store(false)
	socket.Session().(*session).conn = c
	c.start(o, socket)
	go socket.ReadLoop()
}

func (s *Service) allowAnonymous(hub string) bool {
	if s.cfg.AllowAnonymous {
		return true
	}
	p, ok := s.cfg.EventHandler.(AnonymousPolicy)
	return ok && p.AllowAnonymous(hub)
}

// negotiate picks the subprotocol (spec §3): the connect handler's choice,
// or else the first predefined one the client offered. Predefined names
// match case-insensitively; anything else makes a simple client.
func negotiate(offered []string, chosen string) (clientKind, string) {
	if chosen == "" {
		for _, o := range offered {
			if _, ok := predefined(o); ok {
				chosen = o
				break
			}
		}
	}
	if p, ok := predefined(chosen); ok {
		return predefinedKinds[p], chosen
	}
	return kindSimple, chosen // none, or a custom subprotocol
}

// clientHubName reads the hub from /client/hubs/{hub} or /client/?hub={hub}.
func clientHubName(r *http.Request) (string, bool) {
	p := r.URL.EscapedPath()
	if i := strings.LastIndex(p, "/client/hubs/"); i >= 0 {
		hub, err := url.PathUnescape(p[i+len("/client/hubs/"):])
		return strings.TrimSuffix(hub, "/"), err == nil && hub != "" && !strings.Contains(strings.TrimSuffix(hub, "/"), "/")
	}
	if strings.HasSuffix(p, "/client") || strings.HasSuffix(p, "/client/") {
		hub := r.URL.Query().Get("hub")
		return hub, hub != ""
	}
	return "", false
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func offeredSubprotocols(h http.Header) []string {
	out := []string{}
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func queryWithout(q url.Values, drop string) map[string][]string {
	q.Del(drop)
	return q
}

func headersWithout(h http.Header, drop string) map[string][]string {
	out := h.Clone()
	out.Del(drop)
	return out
}

func clientCertificates(r *http.Request) []ClientCertificate {
	if r.TLS == nil {
		return nil
	}
	var out []ClientCertificate
	for _, cert := range r.TLS.PeerCertificates {
		out = append(out, ClientCertificate{Thumbprint: sha1Thumbprint(cert.Raw)})
	}
	return out
}

func newConnectionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// readBufferSize is each connection's read buffer. gws's default is 4 KiB,
// the largest part of an idle connection's memory; clients of a pub/sub
// service mostly send small frames, and a payload larger than the buffer is
// read straight into its own buffer anyway, so 1 KiB costs a few more read
// syscalls only to a client that sends many small frames at once.
const readBufferSize = 1 << 10

// upgrader returns a gws upgrader that accepts exactly the chosen subprotocol
// (gws negotiates from a fixed list per upgrader). Upgraders are cached per
// subprotocol, up to a bound so that clients offering random names cannot
// grow the cache.
func (s *Service) upgrader(subprotocol string) *gws.Upgrader {
	if u, ok := s.upgraders.Load(subprotocol); ok {
		return u
	}
	opt := &gws.ServerOption{
		ReadMaxPayloadSize: s.cfg.MaxMessageSize,
		ReadBufferSize:     readBufferSize,
		CheckUtf8Enabled:   true,
		Recovery:           gws.Recovery, // a panicking handler must not take the process down
		Logger:             gwsLogger{s},
		HandshakeTimeout:   s.cfg.HandshakeTimeout,
		NewSession:         func() gws.SessionStorage { return &session{} },
	}
	if subprotocol != "" {
		opt.SubProtocols = []string{subprotocol}
	}
	u := gws.NewUpgrader(s.transport, opt)
	if s.upgraders.Size() < 64 {
		s.upgraders.Store(subprotocol, u)
	}
	return u
}

type gwsLogger struct{ s *Service }

func (l gwsLogger) Error(v ...any) { l.s.log.Error(fmt.Sprint(v...)) }

// session is gws's per-connection storage, holding only our conn: gws's
// default storage is a map per connection.
type session struct{ conn *conn }

func (s *session) Len() int                             { return 1 }
func (s *session) Load(string) (any, bool)              { return s.conn, s.conn != nil }
func (s *session) Delete(string)                        {}
func (s *session) Store(string, any)                    {}
func (s *session) Range(f func(key string, v any) bool) { f("conn", s.conn) }

func connOf(socket *gws.Conn) *conn { return socket.Session().(*session).conn }

// transport receives gws's callbacks for every connection.
type transport struct{ svc *Service }

func (t *transport) OnOpen(socket *gws.Conn) {
	c := connOf(socket)
	if c.connected.CompareAndSwap(false, true) { // once per logical connection
		t.svc.handler.Connected(c.ctx, c.context())
	}
}

func (t *transport) OnClose(socket *gws.Conn, err error) {
	c := connOf(socket)
	c.outMu.Lock()
	o := c.out
	current := o.socket == socket
	recoverable := current && c.rel != nil && !c.ended && !closedNormally(err)
	c.outMu.Unlock()
	switch {
	case !current:
		// A transport a recovery replaced: the connection lives on.
	case recoverable:
		c.detach(o, clientCloseReason(err))
	default:
		t.svc.release(c, clientCloseReason(err))
	}
}

// closedNormally: a client that closes with 1000 ends its session; any other
// end of a reliable transport may be recovered.
func closedNormally(err error) bool {
	var ce *gws.CloseError
	return errors.As(err, &ce) && ce.Code == CloseNormal
}

// release ends a registered connection once: it leaves every index, and a
// connection that was opened gets its disconnected event with the service's
// reason for closing it, or else clientReason.
func (s *Service) release(c *conn, clientReason string) {
	c.outMu.Lock()
	if c.released {
		c.outMu.Unlock()
		return
	}
	c.released = true
	c.ended = true
	o := c.out
	o.closed = true
	clear(o.frames)
	o.frames, o.expires = nil, nil
	if c.rel != nil {
		if c.rel.timer != nil {
			c.rel.timer.Stop()
		}
		c.rel.unacked = nil
	}
	reason := c.disconnect.Reason
	c.outMu.Unlock()
	c.cancel()
	c.closing.Store(true)
	c.hub.unregister(c)
	s.connections.Add(-1)
	if reason == "" {
		reason = clientReason
	}
	if c.connected.Load() {
		s.handler.Disconnected(context.Background(), c.context(), reason)
	}
	s.conns.Done() // Shutdown waits for the disconnected event too
}

// clientCloseReason describes a close the service did not initiate.
func clientCloseReason(err error) string {
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		if len(ce.Reason) > 0 {
			return string(ce.Reason)
		}
		if ce.Code == CloseNormal || ce.Code == CloseGoingAway || ce.Code == 0 {
			return ""
		}
		return fmt.Sprintf("The client closed the connection with code %d.", ce.Code)
	case err == nil:
		return ""
	}
	return err.Error()
}

func (t *transport) OnPing(socket *gws.Conn, payload []byte) {
	c := connOf(socket)
	c.lastSeen.Store(time.Now().UnixNano())
	c.send(pongFrame(payload))
}

func (t *transport) OnPong(socket *gws.Conn, _ []byte) {
	connOf(socket).lastSeen.Store(time.Now().UnixNano())
}

func (t *transport) OnMessage(socket *gws.Conn, m *gws.Message) {
	defer m.Close()
	c := connOf(socket)
	c.lastSeen.Store(time.Now().UnixNano())
	c.handleFrame(m.Opcode == gws.OpcodeBinary, m.Bytes())
}
