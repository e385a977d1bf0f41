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
	if !s.begin() {
		http.Error(w, "the service is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.active.done()
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
	// webpubsub_mode is a simple client's: checked before the connect event
	// unless the client offers a PubSub subprotocol, for which it means
	// nothing (rawpub.go).
	raw, rawErr := parseRawPublish(q)
	if rawErr != nil && !offersPredefined(offered) {
		http.Error(w, rawErr.Error(), http.StatusBadRequest)
		return
	}
	connID := s.newConnectionID()
	userID, roles, groups, state := id.userID, id.roles, id.groups, ""
	chosen := ""
	connCtx := ConnectionContext{Hub: hubName, ConnectionID: connID, UserID: userID}
	resp, err := s.handler.Connect(r.Context(), &ConnectRequest{
		ConnectionContext:  connCtx,
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
	}
	// The connect event accepted the client: from here on, a refusal is
	// followed by a disconnected event, so that the handler's view of the
	// connection ends (events.go).
	refuse := func(status int, reason string) {
		if status >= 500 {
			s.log.Error("refusing an accepted connection", "hub", hubName, "status", status, "reason", reason)
		}
		http.Error(w, reason, status)
		connCtx.UserID, connCtx.Subprotocol, connCtx.ConnectionState = userID, chosen, state
		s.handler.Disconnected(context.Background(), connCtx, reason)
	}
	if err == nil && resp != nil {
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
				refuse(http.StatusInternalServerError, "the connect event handler chose a subprotocol the client did not offer")
				return
			}
		}
		for _, g := range groups {
			if !protocol.ValidGroupName(g) {
				refuse(http.StatusInternalServerError, "the connect event handler returned an invalid group name")
				return
			}
		}
	}
	if groups = uniqueGroups(groups); len(groups) > s.cfg.MaxGroupsPerConnection {
		refuse(http.StatusBadRequest, fmt.Sprintf("the connection would join %d groups, more than the %d allowed", len(groups), s.cfg.MaxGroupsPerConnection))
		return
	}
	perms, err := newPermissions(roles)
	if err != nil {
		refuse(http.StatusBadRequest, err.Error())
		return
	}

	kind, chosen := negotiate(offered, chosen)
	switch {
	case kind != kindSimple:
		raw = nil
	case rawErr != nil: // a connect handler chose a custom subprotocol
		refuse(http.StatusBadRequest, rawErr.Error())
		return
	case raw != nil && !perms.allows(PermissionSendToGroup, raw.group):
		refuse(http.StatusForbidden, raw.forbidden())
		return
	}
	if chosen != "" {
		r.Header.Set("Sec-WebSocket-Protocol", chosen)
	} else {
		r.Header.Del("Sec-WebSocket-Protocol")
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		since:         time.Now(),
		svc:           s,
		id:            connID,
		userID:        userID,
		subprotocol:   chosen,
		kind:          kind,
		perms:         perms,
		rawPublish:    raw,
		ctx:           ctx,
		cancel:        cancel,
		connState:     state,
		initialGroups: groups,
	}
	c.rate.init(s.cfg.MaxMessagesPerSecond)
	c.lastSeen.Store(time.Now().UnixNano())
	// The connection is registered, in its groups, before the client sees
	// the 101: a client that has connected can be sent to. Its transport's
	// outbox holds what is queued until the upgrade is done, and
	// "connected" is queued first so that no message overtakes it.
	wi := newWire(c)
	c.w, c.lastRead = wi, wi.readDone
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
	if err := s.register(c, hubName); err != nil {
		cancel()
		wi.out.closeSocket() // drops what was queued, "connected" included
		if errors.Is(err, ErrTooManyHubs) {
			refuse(http.StatusServiceUnavailable, fmt.Sprintf("the service holds %d hubs, the most it may", s.cfg.MaxHubs))
		} else {
			refuse(http.StatusServiceUnavailable, "the service is shutting down")
		}
		return
	}
	if s.cluster != nil {
		s.cluster.sync(r.Context()) // its subscriptions, before it can be sent to
	}
	if err := s.upgradeWire(wi, chosen, w, r); err != nil {
		s.log.Debug("websocket upgrade failed", "hub", hubName, "err", err)
		c.transportEnded(wi)
		close(wi.readDone)
		return
	}
	s.active.add()
	go wi.readLoop()
}

// upgradeWire hijacks the request's connection and completes the
// WebSocket handshake on it for wi.
func (s *Service) upgradeWire(wi *wire, subprotocol string, w http.ResponseWriter, r *http.Request) error {
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "the client endpoint needs a connection it can take over (HTTP/1.1)", http.StatusInternalServerError)
		return err
	}
	// The server's deadlines (ReadTimeout, WriteTimeout) are for HTTP
	// requests, not for a WebSocket that lives for hours.
	_ = nc.SetDeadline(time.Time{})
	return wi.upgrade(s.upgrader(subprotocol), nc, brw.Reader, r)
}

// serveRecovery resumes a reliable connection on a new transport (client spec
// §8.3): no access token, the connection id and its reconnection token. The
// unacknowledged messages are replayed first, in order. A recovery that is
// impossible gets a WebSocket closed with 1008, which tells the client to
// start a new connection.
func (s *Service) serveRecovery(w http.ResponseWriter, r *http.Request, hubName, connID, token string) {
	var c *conn
	valid := s.validReconnectionToken(hubName, connID, token)
	if h, ok := s.hubs.Load(hubName); ok && valid {
		if found, ok := h.conns.Load(connID); ok && found.rel != nil {
			c = found
		}
	}
	if c == nil && valid && s.cluster != nil {
		var err error
		if c, err = s.cluster.takeover(r.Context(), hubName, connID); err != nil {
			s.log.Info("a recovery on this node failed", "hub", hubName, "connectionId", connID, "err", err)
		}
	}
	if c == nil {
		s.refuseRecovery(w, r)
		return
	}
	wi := newWire(c)
	previous, err := c.resume(wi)
	if err != nil {
		s.refuseRecovery(w, r)
		return
	}
	// A reliable connection keeps its subprotocol across transports.
	r.Header.Set("Sec-WebSocket-Protocol", c.subprotocol)
	if err := s.upgradeWire(wi, c.subprotocol, w, r); err != nil {
		s.log.Debug("websocket upgrade failed during recovery", "hub", hubName, "err", err)
		s.active.add()
		go func() { // after the previous read loop, as a read loop would
			defer s.active.done()
			<-previous
			c.transportEnded(wi)
			close(wi.readDone)
		}()
		return
	}
	wi.previous = previous
	s.active.add()
	go wi.readLoop()
}

// refuseRecovery completes the handshake and closes the WebSocket at once
// with 1008, as the spec tells a client to read a failed recovery.
func (s *Service) refuseRecovery(w http.ResponseWriter, r *http.Request) {
	offered := offeredSubprotocols(r.Header)
	chosen := ""
	if len(offered) > 0 {
		chosen = offered[0]
		r.Header.Set("Sec-WebSocket-Protocol", chosen)
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, DisconnectNotRecovered.Reason, http.StatusInternalServerError)
		return
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if _, err := s.upgrader(chosen).UpgradeFromConn(nc, brw.Reader, r); err == nil {
		_, _ = nc.Write(closeFrame(DisconnectNotRecovered))
	}
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

// offersPredefined reports whether the client offered a PubSub subprotocol.
func offersPredefined(offered []string) bool {
	for _, o := range offered {
		if _, ok := predefined(o); ok {
			return true
		}
	}
	return false
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

// newConnectionID returns a random id; in a cluster, prefixed with the
// node's id and a dot, so that any node knows where to find it.
func (s *Service) newConnectionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	if s.cluster != nil {
		return s.cluster.node + "." + hex.EncodeToString(b[:])
	}
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
		Recovery:           s.recoverCallback, // a panicking callback must not take the process down
		Logger:             gwsLogger{s},
		HandshakeTimeout:   s.cfg.HandshakeTimeout,
		NewSession:         func() gws.SessionStorage { return &session{} },
	}
	if subprotocol != "" {
		opt.SubProtocols = []string{subprotocol}
	}
	u := gws.NewUpgrader(transport{}, opt)
	if s.upgraders.Size() < 64 {
		s.upgraders.Store(subprotocol, u)
	}
	return u
}

// recoverCallback is gws's recovery around our callbacks (OnPing, OnPong,
// OnClose; OnMessage recovers for itself): counted like any other panic.
func (s *Service) recoverCallback(gws.Logger) {
	if r := recover(); r != nil {
		s.panicked("callback", r)
	}
}

type gwsLogger struct{ s *Service }

func (l gwsLogger) Error(v ...any) { l.s.log.Error(fmt.Sprint(v...)) }

// session is gws's per-connection storage, holding only our wire: gws's
// default storage is a map per connection.
type session struct{ wire *wire }

func (s *session) Len() int                             { return 1 }
func (s *session) Load(string) (any, bool)              { return s.wire, s.wire != nil }
func (s *session) Delete(string)                        {}
func (s *session) Store(string, any)                    {}
func (s *session) Range(f func(key string, v any) bool) { f("wire", s.wire) }

func wireOf(socket *gws.Conn) *wire { return socket.Session().(*session).wire }

// transport receives gws's callbacks for every connection, all on the
// transport's read loop (wire.readLoop), which runs gws's ReadLoop.
type transport struct{}

func (transport) OnOpen(socket *gws.Conn) { wireOf(socket).readStarted() }

func (transport) OnMessage(socket *gws.Conn, m *gws.Message) { wireOf(socket).handle(m) }

// OnClose records how the transport ended, for the read loop to act on.
func (transport) OnClose(socket *gws.Conn, err error) { wireOf(socket).closeErr = err }

func (transport) OnPing(socket *gws.Conn, payload []byte) {
	c := wireOf(socket).c
	c.lastSeen.Store(time.Now().UnixNano())
	c.send(pongFrame(payload))
}

func (transport) OnPong(socket *gws.Conn, _ []byte) {
	wireOf(socket).c.lastSeen.Store(time.Now().UnixNano())
}

// uniqueGroups drops repeated group names, keeping the first of each.
func uniqueGroups(groups []string) []string {
	seen := make(map[string]struct{}, len(groups))
	out := groups[:0:0]
	for _, g := range groups {
		if _, ok := seen[g]; !ok {
			seen[g] = struct{}{}
			out = append(out, g)
		}
	}
	return out
}
