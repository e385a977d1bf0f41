package pubsub

import (
	"context"
	"errors"
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
	live   int // registered connections; changed only inside Service.hubs' Compute
}

func newHubState(name string) *hubState {
	return &hubState{
		name:   name,
		conns:  xsync.NewMapOf[string, *conn](),
		groups: newIndex(),
		users:  newIndex(),
	}
}

// register makes c visible to sends and exists checks, and joins its
// initial groups (within MaxGroupsPerConnection, checked at the handshake).
func (h *hubState) register(c *conn) {
	h.conns.Store(c.id, c)
	if c.userID != "" {
		h.users.add(c.userID, c)
	}
	for _, g := range c.initialGroups {
		_ = c.joinGroup(g)
	}
	c.initialGroups = nil
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
	c.svc.pruneHub(h)
}

// SendOption modifies a send.
type SendOption func(*Command)

// Excluding leaves the given connections out of a send.
func Excluding(connectionIDs ...string) SendOption {
	return func(cmd *Command) { cmd.Excluded = append(cmd.Excluded, connectionIDs...) }
}

// WithFilter sends only to the connections matching an OData filter
// (rest-api.md §6), such as "userId ne 'bob' and 'vip' in groups". An invalid
// filter makes the send fail with ErrInvalidFilter, wrapping a *filter.Error
// that gives the position.
func WithFilter(odata string) SendOption {
	return func(cmd *Command) { cmd.Filter = odata }
}

// WithTTL drops the message for every connection to which it could not be
// written within ttl (messageTtlSeconds), rather than delivering it late.
func WithTTL(ttl time.Duration) SendOption {
	return func(cmd *Command) {
		if ttl > 0 {
			cmd.ExpiresAt = time.Now().Add(ttl).UnixNano()
		}
	}
}

func (h *Hub) send(ctx context.Context, op Op, target string, msg Message, opts []SendOption) error {
	if err := msg.validate(); err != nil {
		return err
	}
	cmd := &Command{Op: op, Hub: h.name, Target: target, Message: msg}
	for _, o := range opts {
		o(cmd)
	}
	if err := cmd.compile(); err != nil {
		return err
	}
	return h.publish(ctx, cmd)
}

func (h *Hub) publish(ctx context.Context, cmd *Command) error { return h.svc.publish(ctx, cmd) }

func (s *Service) publish(ctx context.Context, cmd *Command) error {
	if s.isClosed() {
		return ErrServiceClosed
	}
	return s.broker.Publish(ctx, cmd)
}

// SendToAll sends msg to every connection of the hub.
func (h *Hub) SendToAll(ctx context.Context, msg Message, opts ...SendOption) error {
	return h.send(ctx, OpSendToAll, "", msg, opts)
}

// SendToGroup sends msg to every connection in group. JSON clients see it as
// a message from the group, with no fromUserId.
func (h *Hub) SendToGroup(ctx context.Context, group string, msg Message, opts ...SendOption) error {
	if err := validGroup(group); err != nil {
		return err
	}
	return h.send(ctx, OpSendToGroup, group, msg, opts)
}

// SendToUser sends msg to every connection of userID.
func (h *Hub) SendToUser(ctx context.Context, userID string, msg Message, opts ...SendOption) error {
	if userID == "" {
		return ErrInvalidUser
	}
	return h.send(ctx, OpSendToUser, userID, msg, opts)
}

// SendToConnection sends msg to one connection.
func (h *Hub) SendToConnection(ctx context.Context, connectionID string, msg Message, opts ...SendOption) error {
	if connectionID == "" {
		return ErrInvalidConnection
	}
	return h.send(ctx, OpSendToConnection, connectionID, msg, opts)
}

func (h *Hub) closeMany(ctx context.Context, op Op, target, reason string, excluded []string) error {
	return h.publish(ctx, &Command{Op: op, Hub: h.name, Target: target, Reason: reason, Excluded: excluded})
}

// CloseConnection closes one connection. A PubSub client first gets a
// "disconnected" message with the reason. An empty reason means
// DisconnectClosedByAppServer's.
func (h *Hub) CloseConnection(ctx context.Context, connectionID, reason string) error {
	if connectionID == "" {
		return ErrInvalidConnection
	}
	return h.closeMany(ctx, OpCloseConnection, connectionID, reason, nil)
}

// CloseAllConnections closes every connection of the hub but the excluded ones.
func (h *Hub) CloseAllConnections(ctx context.Context, reason string, excluded ...string) error {
	return h.closeMany(ctx, OpCloseAll, "", reason, excluded)
}

// CloseGroupConnections closes every connection in group but the excluded ones.
func (h *Hub) CloseGroupConnections(ctx context.Context, group, reason string, excluded ...string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	return h.closeMany(ctx, OpCloseGroup, group, reason, excluded)
}

// CloseUserConnections closes every connection of userID but the excluded ones.
func (h *Hub) CloseUserConnections(ctx context.Context, userID, reason string, excluded ...string) error {
	if userID == "" {
		return ErrInvalidUser
	}
	return h.closeMany(ctx, OpCloseUser, userID, reason, excluded)
}

// lookup returns a connection of this process that the service has not
// ended: one being closed is gone already, for the Go API and REST.
func (h *Hub) lookup(connectionID string) (*conn, error) {
	if connectionID == "" {
		return nil, ErrInvalidConnection
	}
	if st := h.state(); st != nil {
		if c, ok := st.conns.Load(connectionID); ok && !c.ending() {
			return c, nil
		}
	}
	return nil, ErrConnectionNotFound
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

// userConns returns a snapshot of the user's connections in this process.
func (h *Hub) userConns(userID string) []*conn {
	if st := h.state(); st != nil {
		return st.users.members(userID)
	}
	return nil
}

// AddConnectionToGroup adds a connection to group. No permission is needed.
func (h *Hub) AddConnectionToGroup(_ context.Context, group, connectionID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	c, err := h.lookup(connectionID)
	if err != nil {
		return err
	}
	return c.joinGroup(group)
}

// RemoveConnectionFromGroup removes a connection from group; a connection
// that does not exist or is not in the group is not an error.
func (h *Hub) RemoveConnectionFromGroup(_ context.Context, group, connectionID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if c, err := h.lookup(connectionID); err == nil {
		c.leaveGroup(group)
	} else if err == ErrInvalidConnection {
		return err
	}
	return nil
}

// RemoveConnectionFromAllGroups removes a connection from every group.
func (h *Hub) RemoveConnectionFromAllGroups(_ context.Context, connectionID string) error {
	if c, err := h.lookup(connectionID); err == nil {
		c.leaveAllGroups()
	} else if err == ErrInvalidConnection {
		return err
	}
	return nil
}

// AddUserToGroup adds every current connection of userID to group (later
// connections of the user are not added, as in Azure's emulator). It returns
// ErrUserNotFound when the user has no connection, or ErrTooManyGroups
// when every connection of the user is in as many groups as it may be.
func (h *Hub) AddUserToGroup(_ context.Context, group, userID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if userID == "" {
		return ErrInvalidUser
	}
	result := ErrUserNotFound
	for _, c := range h.userConns(userID) {
		switch err := c.joinGroup(group); {
		case err == nil:
			result = nil
		case errors.Is(err, ErrTooManyGroups) && result != nil:
			result = err
		}
	}
	return result
}

// RemoveUserFromGroup removes every connection of userID from group.
func (h *Hub) RemoveUserFromGroup(_ context.Context, group, userID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if userID == "" {
		return ErrInvalidUser
	}
	for _, c := range h.userConns(userID) {
		c.leaveGroup(group)
	}
	return nil
}

// RemoveUserFromAllGroups removes every connection of userID from every group.
func (h *Hub) RemoveUserFromAllGroups(_ context.Context, userID string) error {
	if userID == "" {
		return ErrInvalidUser
	}
	for _, c := range h.userConns(userID) {
		c.leaveAllGroups()
	}
	return nil
}

// ConnectionInfo is what a selector sees of a connection.
type ConnectionInfo struct{ c *conn }

// ConnectionID returns the connection's id.
func (i ConnectionInfo) ConnectionID() string { return i.c.id }

// UserID returns the connection's user id, empty when anonymous.
func (i ConnectionInfo) UserID() string { return i.c.userID }

// Protocol returns the connection's subprotocol, empty for none.
func (i ConnectionInfo) Protocol() string { return i.c.subprotocol }

// InGroup reports whether the connection is in group now.
func (i ConnectionInfo) InGroup(group string) bool {
	i.c.mu.Lock()
	defer i.c.mu.Unlock()
	_, ok := i.c.groups[group]
	return ok
}

// GroupCount returns how many groups the connection is in now.
func (i ConnectionInfo) GroupCount() int {
	i.c.mu.Lock()
	defer i.c.mu.Unlock()
	return len(i.c.groups)
}

// Groups returns the groups the connection is in now, sorted.
func (i ConnectionInfo) Groups() []string { return i.c.groupNames() }

// AddConnectionsToGroups adds every connection of the hub for which match
// returns true (every connection, when match is nil) to every group; a
// connection in as many groups as it may be joins only those it can.
func (h *Hub) AddConnectionsToGroups(_ context.Context, groups []string, match func(ConnectionInfo) bool) error {
	return h.eachSelected(groups, match, func(c *conn, g string) { _ = c.joinGroup(g) })
}

// RemoveConnectionsFromGroups removes every connection of the hub for which
// match returns true (every connection, when match is nil) from every group.
func (h *Hub) RemoveConnectionsFromGroups(_ context.Context, groups []string, match func(ConnectionInfo) bool) error {
	return h.eachSelected(groups, match, func(c *conn, g string) { c.leaveGroup(g) })
}

func (h *Hub) eachSelected(groups []string, match func(ConnectionInfo) bool, f func(*conn, string)) error {
	if len(groups) == 0 {
		return ErrInvalidGroup
	}
	for _, g := range groups {
		if err := validGroup(g); err != nil {
			return err
		}
	}
	st := h.state()
	if st == nil {
		return nil
	}
	// Range calls back with no lock held: it copies each bucket first.
	st.conns.Range(func(_ string, c *conn) bool {
		if match == nil || match(ConnectionInfo{c}) {
			for _, g := range groups {
				f(c, g)
			}
		}
		return true
	})
	return nil
}

// ConnectionExists reports whether the connection is open.
func (h *Hub) ConnectionExists(_ context.Context, connectionID string) (bool, error) {
	_, err := h.lookup(connectionID)
	if err == ErrInvalidConnection {
		return false, err
	}
	return err == nil, nil
}

// GroupExists reports whether group has at least one connection (not
// being closed).
func (h *Hub) GroupExists(_ context.Context, group string) (bool, error) {
	if err := validGroup(group); err != nil {
		return false, err
	}
	st := h.state()
	return st != nil && anyLive(st.groups.members(group)), nil
}

// UserExists reports whether userID has at least one connection (not being
// closed).
func (h *Hub) UserExists(_ context.Context, userID string) (bool, error) {
	if userID == "" {
		return false, ErrInvalidUser
	}
	st := h.state()
	return st != nil && anyLive(st.users.members(userID)), nil
}

// GrantPermission grants a connection perm on group, or on every group when
// group is empty.
func (h *Hub) GrantPermission(_ context.Context, connectionID string, perm Permission, group string) error {
	c, err := h.lookup(connectionID)
	if err != nil {
		return err
	}
	return c.perms.grant(perm, group)
}

// RevokePermission revokes perm on group: the group is denied even where a
// broader role allows it, until granted again. An empty group revokes perm on
// every group. Revoking does not remove existing membership.
func (h *Hub) RevokePermission(_ context.Context, connectionID string, perm Permission, group string) error {
	c, err := h.lookup(connectionID)
	if err != nil {
		return err
	}
	return c.perms.revoke(perm, group)
}

// CheckPermission reports whether a connection has perm on group (or on every
// group, when group is empty).
func (h *Hub) CheckPermission(_ context.Context, connectionID string, perm Permission, group string) (bool, error) {
	if perm >= numPermissions {
		return false, ErrInvalidPermission
	}
	c, err := h.lookup(connectionID)
	if err != nil {
		return false, err
	}
	if group == "" {
		return c.perms.allowsAll(perm), nil
	}
	return c.perms.allows(perm, group), nil
}

// GroupMember is a connection of a group.
type GroupMember struct {
	ConnectionID string `json:"connectionId"`
	UserID       string `json:"userId,omitempty"`
}

// ListConnectionsInGroup returns the connections in group, ordered by
// connection id.
func (h *Hub) ListConnectionsInGroup(_ context.Context, group string) ([]GroupMember, error) {
	if err := validGroup(group); err != nil {
		return nil, err
	}
	var out []GroupMember
	if st := h.state(); st != nil {
		for _, c := range st.groups.members(group) {
			if !c.ending() {
				out = append(out, GroupMember{ConnectionID: c.id, UserID: c.userID})
			}
		}
	}
	slices.SortFunc(out, func(a, b GroupMember) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	return out, nil
}
