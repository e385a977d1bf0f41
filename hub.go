package pubsub

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/puzpuzpuz/xsync/v3"
)

// Hub is a hub of the service: its connections, users and groups, and the Go
// API that mirrors the data-plane REST operations on it. Sends and closes go
// through the service's Broker, so they reach connections in every process;
// sending to nobody is not an error.
type Hub struct {
	svc    *Service
	name   string
	conns  *xsync.MapOf[string, *conn]
	groups index
	users  index
}

func newHub(s *Service, name string) *Hub {
	return &Hub{
		svc:    s,
		name:   name,
		conns:  xsync.NewMapOf[string, *conn](),
		groups: newIndex(),
		users:  newIndex(),
	}
}

// Name returns the hub's (lower-cased) name.
func (h *Hub) Name() string { return h.name }

// register makes c visible to sends and exists checks, and joins its initial
// groups.
func (h *Hub) register(c *conn) {
	h.conns.Store(c.id, c)
	if c.userID != "" {
		h.users.add(c.userID, c)
	}
	for _, g := range c.initialGroups {
		h.joinGroup(c, g)
	}
	c.initialGroups = nil
}

// unregister removes c from every index; after it, joins of c fail.
func (h *Hub) unregister(c *conn) {
	c.mu.Lock()
	c.gone = true
	for g := range c.groups {
		h.groups.remove(g, c)
	}
	c.groups = nil
	c.mu.Unlock()
	if c.userID != "" {
		h.users.remove(c.userID, c)
	}
	h.conns.Delete(c.id)
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

func (h *Hub) publish(ctx context.Context, cmd *Command) error {
	if h.svc.isClosed() {
		return ErrServiceClosed
	}
	return h.svc.broker.Publish(ctx, cmd)
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

// lookup returns a live connection of this process.
func (h *Hub) lookup(connectionID string) (*conn, error) {
	if connectionID == "" {
		return nil, ErrInvalidConnection
	}
	c, ok := h.conns.Load(connectionID)
	if !ok {
		return nil, ErrConnectionNotFound
	}
	return c, nil
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
	if !h.joinGroup(c, group) {
		return ErrConnectionNotFound
	}
	return nil
}

// RemoveConnectionFromGroup removes a connection from group; a connection
// that does not exist or is not in the group is not an error.
func (h *Hub) RemoveConnectionFromGroup(_ context.Context, group, connectionID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if c, err := h.lookup(connectionID); err == nil {
		h.leaveGroup(c, group)
	} else if err == ErrInvalidConnection {
		return err
	}
	return nil
}

// RemoveConnectionFromAllGroups removes a connection from every group.
func (h *Hub) RemoveConnectionFromAllGroups(_ context.Context, connectionID string) error {
	if c, err := h.lookup(connectionID); err == nil {
		h.leaveAllGroups(c)
	} else if err == ErrInvalidConnection {
		return err
	}
	return nil
}

// AddUserToGroup adds every current connection of userID to group (later
// connections of the user are not added, as in Azure's emulator). It returns
// ErrUserNotFound when the user has no connection.
func (h *Hub) AddUserToGroup(_ context.Context, group, userID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if userID == "" {
		return ErrInvalidUser
	}
	added := false
	for _, c := range h.users.members(userID) {
		added = h.joinGroup(c, group) || added
	}
	if !added {
		return ErrUserNotFound
	}
	return nil
}

// RemoveUserFromGroup removes every connection of userID from group.
func (h *Hub) RemoveUserFromGroup(_ context.Context, group, userID string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if userID == "" {
		return ErrInvalidUser
	}
	for _, c := range h.users.members(userID) {
		h.leaveGroup(c, group)
	}
	return nil
}

// RemoveUserFromAllGroups removes every connection of userID from every group.
func (h *Hub) RemoveUserFromAllGroups(_ context.Context, userID string) error {
	if userID == "" {
		return ErrInvalidUser
	}
	for _, c := range h.users.members(userID) {
		h.leaveAllGroups(c)
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
// returns true (every connection, when match is nil) to every group.
func (h *Hub) AddConnectionsToGroups(_ context.Context, groups []string, match func(ConnectionInfo) bool) error {
	return h.eachSelected(groups, match, func(c *conn, g string) { h.joinGroup(c, g) })
}

// RemoveConnectionsFromGroups removes every connection of the hub for which
// match returns true (every connection, when match is nil) from every group.
func (h *Hub) RemoveConnectionsFromGroups(_ context.Context, groups []string, match func(ConnectionInfo) bool) error {
	return h.eachSelected(groups, match, func(c *conn, g string) { h.leaveGroup(c, g) })
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
	h.conns.Range(func(_ string, c *conn) bool {
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

// GroupExists reports whether group has at least one connection.
func (h *Hub) GroupExists(_ context.Context, group string) (bool, error) {
	if err := validGroup(group); err != nil {
		return false, err
	}
	return h.groups.exists(group), nil
}

// UserExists reports whether userID has at least one connection.
func (h *Hub) UserExists(_ context.Context, userID string) (bool, error) {
	if userID == "" {
		return false, ErrInvalidUser
	}
	return h.users.exists(userID), nil
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
	h.groups.each(group, func(c *conn) {
		out = append(out, GroupMember{ConnectionID: c.id, UserID: c.userID})
	})
	slices.SortFunc(out, func(a, b GroupMember) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	return out, nil
}
