package pubsub

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/puzpuzpuz/xsync/v3"
)

// Hub is a hub of the service, by name, and the Go API that mirrors the
// data-plane REST operations on it. Sends and closes go through the
// service's Broker, so they reach connections in every process; sending to
// nobody is not an error. A Hub value is a name: it stays valid while the
// hub's connections come and go.
type Hub struct {
	svc  *Service
	name string
}

// Name returns the hub's (lower-cased) name.
func (h *Hub) Name() string { return h.name }

// state returns the hub's registry, nil while it has no connection.
func (h *Hub) state() *hubState {
	st, _ := h.svc.hubs.Load(h.name)
	return st
}

// hubState is the registry of a hub with connections: its connections, and
// its groups and users as indexes of them.
type hubState struct {
	name   string
	conns  *xsync.MapOf[string, *conn]
	groups index
	users  index
	// stateSubs maps a group to the connections subscribed to its state
	// (groupstate.go). They are members: the node subscribes to the
	// group's subject for them already.
	stateSubs index
	live      int // registered connections; changed only inside Service.hubs' Compute
	// streams counts the open group streams of this node per group.
	streams groupStreams
}

func newHubState(name string, cl *cluster) *hubState {
	key := subjectKey(name)
	return &hubState{
		name:      name,
		conns:     xsync.NewMapOf[string, *conn](),
		groups:    newIndex(cl, func(group string) string { return groupSubject(key, group) }),
		users:     newIndex(cl, func(user string) string { return userSubject(key, user) }),
		stateSubs: newIndex(nil, nil),
	}
}

// register makes c visible to sends and exists checks, and joins its
// initial groups (within MaxGroupsPerConnection, checked at the handshake).
// A connection handed over from another node was in its groups already:
// they raise no presence event.
func (h *hubState) register(c *conn) {
	h.conns.Store(c.id, c)
	if c.userID != "" {
		h.users.add(c.userID, c)
	}
	for _, g := range c.initialGroups {
		_ = c.join(g, c.movedFrom == "")
	}
	c.initialGroups = nil
	if c.movedFrom != "" {
		c.registerGroupState() // its subscriptions came with it
	}
}

// unregister removes a released connection, which was in groups, from
// every index, and its hub when it was the last.
func (h *hubState) unregister(c *conn, groups map[string]struct{}) {
	for g := range groups {
		h.groups.remove(g, c)
	}
	if c.userID != "" {
		h.users.remove(c.userID, c)
	}
	h.conns.Delete(c.id)
	if c.movedFrom != "" && !c.svc.cluster.namedBy(c.id) {
		c.svc.cluster.unsubscribe(connectionSubject(c.id))
	}
	c.svc.pruneHub(h)
}

// lookup returns a connection of this node that the service has not
// ended: one being closed is gone already, for the Go API and REST. h may
// be nil, a hub with no connection here.
func (h *hubState) lookup(connectionID string) *conn {
	if h == nil {
		return nil
	}
	if c, ok := h.conns.Load(connectionID); ok && !c.ending() {
		return c
	}
	return nil
}

// anyLive reports whether one of conns is not being closed.
func anyLive(conns []*conn) bool {
	for _, c := range conns {
		if !c.ending() {
			return true
		}
	}
	return false
}

// SendOption modifies a send.
type SendOption func(*sendOptions)

type sendOptions struct {
	excluded  []string
	filter    string
	ttl       time.Duration
	pipelined bool
}

// Excluding leaves the given connections out of a send.
func Excluding(connectionIDs ...string) SendOption {
	return func(o *sendOptions) { o.excluded = append(o.excluded, connectionIDs...) }
}

// WithFilter sends only to the connections matching an OData filter
// (rest-api.md §6), such as "userId ne 'bob' and 'vip' in groups". An invalid
// filter makes the send fail with ErrInvalidFilter, wrapping a *filter.Error
// that gives the position.
func WithFilter(odata string) SendOption {
	return func(o *sendOptions) { o.filter = odata }
}

// WithTTL drops the message for every connection to which it could not be
// written within ttl (messageTtlSeconds), rather than delivering it late.
func WithTTL(ttl time.Duration) SendOption {
	return func(o *sendOptions) { o.ttl = ttl }
}

// Pipelined lets a send return as soon as it is on its way, in a cluster:
// without it, a send returns once its command has reached the broker, so
// that whatever the caller does next, on any node, is ordered after it.
// Pipelined sends made from one node stay in the order they were made
// (they go the same way), as a client's own sends do; what the caller does
// next elsewhere (a call on another node) may overtake them. For an event
// handler that sends on behalf of a client, one send per event. Without a
// Broker it changes nothing.
func Pipelined() SendOption {
	return func(o *sendOptions) { o.pipelined = true }
}

func (h *Hub) send(ctx context.Context, o op, target string, msg Message, opts []SendOption) error {
	if err := msg.validate(); err != nil {
		return err
	}
	var so sendOptions
	for _, f := range opts {
		f(&so)
	}
	cmd := &command{Op: o, Hub: h.name, Target: target, DataType: msg.DataType, Data: msg.Data, Excluded: so.excluded, Filter: so.filter, pipelined: so.pipelined}
	if so.ttl > 0 {
		cmd.ExpiresAt = time.Now().Add(so.ttl).UnixNano()
	}
	_, err := h.run(ctx, cmd)
	return err
}

// run performs cmd on every node and returns the service's answer.
func (h *Hub) run(ctx context.Context, cmd *command) (result, error) {
	if err := cmd.compile(); err != nil {
		return result{}, err
	}
	r, err := h.svc.run(ctx, cmd)
	if err != nil {
		return r, err
	}
	return r, r.err()
}

// run performs cmd on this node or, with a broker, on every node it
// concerns (cluster.go).
func (s *Service) run(ctx context.Context, cmd *command) (result, error) {
	if s.isClosed() {
		return result{}, ErrServiceClosed
	}
	if s.cluster != nil {
		return s.cluster.run(ctx, cmd)
	}
	return s.exec(cmd), nil
}

// publishFromClient sends a client's message. Unlike a Go API call, it
// does not wait for the broker: the next message of the same client goes
// the same way, in order.
func (s *Service) publishFromClient(cmd *command) error {
	if s.isClosed() {
		return ErrServiceClosed
	}
	if s.cluster != nil {
		s.cluster.publish(cmd)
		return nil
	}
	s.exec(cmd)
	return nil
}

// SendToAll sends msg to every connection of the hub.
func (h *Hub) SendToAll(ctx context.Context, msg Message, opts ...SendOption) error {
	return h.send(ctx, opSendToAll, "", msg, opts)
}

// SendToGroup sends msg to every connection in group. JSON clients see it as
// a message from the group, with no fromUserId.
func (h *Hub) SendToGroup(ctx context.Context, group string, msg Message, opts ...SendOption) error {
	if err := validGroup(group); err != nil {
		return err
	}
	return h.send(ctx, opSendToGroup, group, msg, opts)
}

// SendToUser sends msg to every connection of userID.
func (h *Hub) SendToUser(ctx context.Context, userID string, msg Message, opts ...SendOption) error {
	if userID == "" {
		return ErrInvalidUser
	}
	return h.send(ctx, opSendToUser, userID, msg, opts)
}

// SendToConnection sends msg to one connection.
func (h *Hub) SendToConnection(ctx context.Context, connectionID string, msg Message, opts ...SendOption) error {
	if connectionID == "" {
		return ErrInvalidConnection
	}
	return h.send(ctx, opSendToConnection, connectionID, msg, opts)
}

func (h *Hub) closeMany(ctx context.Context, o op, target, reason string, excluded []string) error {
	_, err := h.run(ctx, &command{Op: o, Hub: h.name, Target: target, Reason: reason, Excluded: excluded})
	return err
}

// CloseConnection closes one connection. A PubSub client first gets a
// "disconnected" message with the reason. An empty reason means
// DisconnectClosedByAppServer's.
func (h *Hub) CloseConnection(ctx context.Context, connectionID, reason string) error {
	if connectionID == "" {
		return ErrInvalidConnection
	}
	return h.closeMany(ctx, opCloseConnection, connectionID, reason, nil)
}

// CloseAllConnections closes every connection of the hub but the excluded ones.
func (h *Hub) CloseAllConnections(ctx context.Context, reason string, excluded ...string) error {
	return h.closeMany(ctx, opCloseAll, "", reason, excluded)
}

// CloseGroupConnections closes every connection in group but the excluded ones.
func (h *Hub) CloseGroupConnections(ctx context.Context, group, reason string, excluded ...string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	return h.closeMany(ctx, opCloseGroup, group, reason, excluded)
}

// CloseUserConnections closes every connection of userID but the excluded ones.
func (h *Hub) CloseUserConnections(ctx context.Context, userID, reason string, excluded ...string) error {
	if userID == "" {
		return ErrInvalidUser
	}
	return h.closeMany(ctx, opCloseUser, userID, reason, excluded)
}

// The membership and permission operations take the connection or user
// they act on first, then the permission, then the group.

// AddConnectionToGroup adds a connection to group. No permission is needed.
func (h *Hub) AddConnectionToGroup(ctx context.Context, connectionID, group string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if connectionID == "" {
		return ErrInvalidConnection
	}
	_, err := h.run(ctx, &command{Op: opAddConnectionToGroup, Hub: h.name, Target: connectionID, Group: group})
	return err
}

// RemoveConnectionFromGroup removes a connection from group; a connection
// that does not exist or is not in the group is not an error.
func (h *Hub) RemoveConnectionFromGroup(ctx context.Context, connectionID, group string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if connectionID == "" {
		return ErrInvalidConnection
	}
	_, err := h.run(ctx, &command{Op: opRemoveConnectionFromGroup, Hub: h.name, Target: connectionID, Group: group})
	return err
}

// RemoveConnectionFromAllGroups removes a connection from every group.
func (h *Hub) RemoveConnectionFromAllGroups(ctx context.Context, connectionID string) error {
	if connectionID == "" {
		return ErrInvalidConnection
	}
	_, err := h.run(ctx, &command{Op: opRemoveConnectionFromAllGroups, Hub: h.name, Target: connectionID})
	return err
}

// AddUserToGroup adds every current connection of userID to group (later
// connections of the user are not added, as in Azure's emulator). It returns
// ErrUserNotFound when the user has no connection, or ErrTooManyGroups
// when every connection of the user is in as many groups as it may be.
func (h *Hub) AddUserToGroup(ctx context.Context, userID, group string) error {
	return h.userGroupOp(ctx, opAddUserToGroup, userID, group)
}

// RemoveUserFromGroup removes every connection of userID from group.
func (h *Hub) RemoveUserFromGroup(ctx context.Context, userID, group string) error {
	return h.userGroupOp(ctx, opRemoveUserFromGroup, userID, group)
}

func (h *Hub) userGroupOp(ctx context.Context, o op, userID, group string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if userID == "" {
		return ErrInvalidUser
	}
	_, err := h.run(ctx, &command{Op: o, Hub: h.name, Target: userID, Group: group})
	return err
}

// RemoveUserFromAllGroups removes every connection of userID from every group.
func (h *Hub) RemoveUserFromAllGroups(ctx context.Context, userID string) error {
	if userID == "" {
		return ErrInvalidUser
	}
	_, err := h.run(ctx, &command{Op: opRemoveUserFromAllGroups, Hub: h.name, Target: userID})
	return err
}

// connInfo is what a filter sees of a connection.
type connInfo struct{ c *conn }

func (i connInfo) ConnectionID() string { return i.c.id }
func (i connInfo) UserID() string       { return i.c.userID }
func (i connInfo) Protocol() string     { return i.c.subprotocol }

func (i connInfo) GroupCount() int {
	i.c.mu.Lock()
	defer i.c.mu.Unlock()
	return len(i.c.groups)
}

func (i connInfo) InGroup(group string) bool {
	i.c.mu.Lock()
	defer i.c.mu.Unlock()
	_, ok := i.c.groups[group]
	return ok
}

// AddConnectionsToGroups adds every connection of the hub that matches an
// OData filter (rest-api.md §6; empty: every connection) to every group; a
// connection in as many groups as it may be joins only those it can.
func (h *Hub) AddConnectionsToGroups(ctx context.Context, filter string, groups ...string) error {
	return h.connectionsGroupsOp(ctx, opAddConnectionsToGroups, filter, groups)
}

// RemoveConnectionsFromGroups removes every connection of the hub that
// matches an OData filter (empty: every connection) from every group.
func (h *Hub) RemoveConnectionsFromGroups(ctx context.Context, filter string, groups ...string) error {
	return h.connectionsGroupsOp(ctx, opRemoveConnectionsFromGroups, filter, groups)
}

func (h *Hub) connectionsGroupsOp(ctx context.Context, o op, filter string, groups []string) error {
	if len(groups) == 0 {
		return ErrInvalidGroup
	}
	for _, g := range groups {
		if err := validGroup(g); err != nil {
			return err
		}
	}
	_, err := h.run(ctx, &command{Op: o, Hub: h.name, Filter: filter, Groups: groups})
	return err
}

// ConnectionExists reports whether the connection is open.
func (h *Hub) ConnectionExists(ctx context.Context, connectionID string) (bool, error) {
	if connectionID == "" {
		return false, ErrInvalidConnection
	}
	r, err := h.run(ctx, &command{Op: opConnectionExists, Hub: h.name, Target: connectionID})
	return r.Found, err
}

// GroupExists reports whether group has at least one connection (not
// being closed).
func (h *Hub) GroupExists(ctx context.Context, group string) (bool, error) {
	if err := validGroup(group); err != nil {
		return false, err
	}
	r, err := h.run(ctx, &command{Op: opGroupExists, Hub: h.name, Target: group})
	return r.Found, err
}

// UserExists reports whether userID has at least one connection (not being
// closed).
func (h *Hub) UserExists(ctx context.Context, userID string) (bool, error) {
	if userID == "" {
		return false, ErrInvalidUser
	}
	r, err := h.run(ctx, &command{Op: opUserExists, Hub: h.name, Target: userID})
	return r.Found, err
}

// GrantPermission grants a connection perm on group, or on every group when
// group is empty.
func (h *Hub) GrantPermission(ctx context.Context, connectionID string, perm Permission, group string) error {
	return h.permissionOp(ctx, opGrantPermission, connectionID, perm, group)
}

// RevokePermission revokes perm on group: the group is denied even where a
// broader role allows it, until granted again. An empty group revokes perm on
// every group. Revoking does not remove existing membership.
func (h *Hub) RevokePermission(ctx context.Context, connectionID string, perm Permission, group string) error {
	return h.permissionOp(ctx, opRevokePermission, connectionID, perm, group)
}

// CheckPermission reports whether a connection has perm on group (or on every
// group, when group is empty).
func (h *Hub) CheckPermission(ctx context.Context, connectionID string, perm Permission, group string) (bool, error) {
	if perm >= numPermissions {
		return false, ErrInvalidPermission
	}
	if connectionID == "" {
		return false, ErrInvalidConnection
	}
	r, err := h.run(ctx, &command{Op: opCheckPermission, Hub: h.name, Target: connectionID, Perm: perm, Group: group})
	return r.Found, err
}

func (h *Hub) permissionOp(ctx context.Context, o op, connectionID string, perm Permission, group string) error {
	if perm >= numPermissions {
		return ErrInvalidPermission
	}
	if connectionID == "" {
		return ErrInvalidConnection
	}
	_, err := h.run(ctx, &command{Op: o, Hub: h.name, Target: connectionID, Perm: perm, Group: group})
	return err
}

// GroupMember is a connection of a group.
type GroupMember struct {
	ConnectionID string `json:"connectionId"`
	UserID       string `json:"userId,omitempty"`
}

// ListConnectionsInGroup returns the connections in group, ordered by
// connection id.
func (h *Hub) ListConnectionsInGroup(ctx context.Context, group string) ([]GroupMember, error) {
	if err := validGroup(group); err != nil {
		return nil, err
	}
	r, err := h.run(ctx, &command{Op: opListConnectionsInGroup, Hub: h.name, Target: group})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(r.Members, func(a, b GroupMember) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	return r.Members, nil
}
