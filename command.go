package pubsub

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/embedwps/pubsub/filter"
	"github.com/embedwps/pubsub/protocol"
)

// op is a hub operation. Every call of the Go API (and so of REST) and every
// client's sendToGroup is one command; exec applies it to the connections
// of this node, and a cluster (cluster.go) carries it to the other nodes.
type op uint8

const (
	opSendToAll op = iota + 1
	opSendToGroup
	opSendToUser
	opSendToConnection
	opCloseAll
	opCloseGroup
	opCloseUser
	opCloseConnection
	opAddConnectionToGroup
	opRemoveConnectionFromGroup
	opRemoveConnectionFromAllGroups
	opConnectionExists
	opGrantPermission
	opRevokePermission
	opCheckPermission
	opAddUserToGroup
	opRemoveUserFromGroup
	opRemoveUserFromAllGroups
	opUserExists
	opGroupExists
	opListConnectionsInGroup
	opAddConnectionsToGroups
	opRemoveConnectionsFromGroups
	opTakeover // handover.go
	opHandover
	opForget
	opGroupStateUpdate // groupstate.go
	opGroupStateSnapshot
)

var opNames = [...]string{"", "sendToAll", "sendToGroup", "sendToUser", "sendToConnection",
	"closeAll", "closeGroup", "closeUser", "closeConnection", "addConnectionToGroup",
	"removeConnectionFromGroup", "removeConnectionFromAllGroups", "connectionExists",
	"grantPermission", "revokePermission", "checkPermission", "addUserToGroup",
	"removeUserFromGroup", "removeUserFromAllGroups", "userExists", "groupExists",
	"listConnectionsInGroup", "addConnectionsToGroups", "removeConnectionsFromGroups",
	"takeover", "handover", "forget", "groupStateUpdate", "groupStateSnapshot"}

func (o op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", o)
}

// command is one hub operation, serialisable so that a broker can carry it
// between nodes. Field names are short: a send's envelope is encoded once
// per send.
type command struct {
	Op  op     `json:"o"`
	Hub string `json:"h"`
	// Target is the group, user or connection the operation addresses.
	Target   string   `json:"t,omitempty"`
	Excluded []string `json:"x,omitempty"`
	DataType DataType `json:"d,omitempty"`
	Data     []byte   `json:"b,omitempty"`
	// FromUserID is the publisher of a client's sendToGroup.
	FromUserID string `json:"f,omitempty"`
	// Metadata is the publisher's metadata of a client's sendToGroup.
	Metadata map[string]string `json:"m,omitempty"`
	// Stream makes a client's sendToGroup a fragment of its stream
	// (stream.go).
	Stream *protocol.StreamInfo `json:"st,omitempty"`
	// Reason is the reason of a close.
	Reason string `json:"r,omitempty"`
	// Filter is an OData filter (rest-api.md §6) that recipients must match.
	Filter string `json:"q,omitempty"`
	// ExpiresAt, in Unix nanoseconds, drops the message for any connection
	// that has not been written it by then (messageTtlSeconds). 0: never.
	ExpiresAt int64 `json:"e,omitempty"`
	// Group and Groups are what a membership or permission operation is
	// about, when Target is the connection or user.
	Group  string     `json:"g,omitempty"`
	Groups []string   `json:"gs,omitempty"`
	Perm   Permission `json:"p,omitempty"`
	// ID numbers a published command in a cluster: its node and a counter,
	// so that a connection handed from one node to another gets it once.
	ID string `json:"i,omitempty"`
	// Node is the node asking for a handover, or where a handed-over
	// connection is now (handover.go).
	Node string `json:"n,omitempty"`
	// Items are a group state update's (groupstate.go).
	Items []protocol.GroupStateItem `json:"gi,omitempty"`

	filter    *filter.Filter // Filter, compiled once per node
	pipelined bool           // the caller does not wait for the broker (Pipelined)
}

func (cmd *command) message() Message { return Message{DataType: cmd.DataType, Data: cmd.Data} }

// compile parses the command's filter unless it already was.
func (cmd *command) compile() error {
	if cmd.Filter == "" || cmd.filter != nil {
		return nil
	}
	f, err := filter.Parse(cmd.Filter)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidFilter, err)
	}
	cmd.filter = f
	return nil
}

// result is one node's answer to a command.
type result struct {
	Found   bool          `json:"f,omitempty"` // exists; a permission allowed
	Members []GroupMember `json:"m,omitempty"`
	Err     string        `json:"e,omitempty"` // errCode's
	Node    string        `json:"n,omitempty"` // who answers, in a survey
	// A handover's: the session, or the groups to subscribe to first.
	Session *handedSession `json:"s,omitempty"`
	Retry   []string       `json:"r,omitempty"`
	// Items are a group's state, on this node.
	Items []protocol.GroupStateItem `json:"gi,omitempty"`
}

// resultErrors are the errors a node's answer can carry, by name.
var resultErrors = []error{
	ErrConnectionNotFound, ErrUserNotFound, ErrTooManyGroups, ErrInvalidPermission,
	ErrTooManyPermissions, ErrInvalidGroup, ErrInvalidFilter, ErrServiceClosed, errNotRecoverable,
}

func errCode(err error) string {
	if err == nil {
		return ""
	}
	for _, e := range resultErrors {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return err.Error()
}

func (r *result) err() error {
	if r.Err == "" {
		return nil
	}
	for _, e := range resultErrors {
		if e.Error() == r.Err {
			return e
		}
	}
	return errors.New(r.Err)
}

// exec applies cmd to this node's connections. This is where an operation
// meets the registry; fan-out is in fanout.go.
func (s *Service) exec(cmd *command) result {
	h, ok := s.hubs.Load(cmd.Hub)
	if !ok {
		h = nil // no connection of this hub on this node: every answer is "none"
	}
	if err := cmd.compile(); err != nil { // a command from another node
		return result{Err: errCode(err)}
	}
	switch cmd.Op {
	case opSendToAll, opSendToGroup, opSendToUser, opSendToConnection:
		if h != nil {
			s.fanOut(h, cmd)
		}
	case opCloseAll, opCloseGroup, opCloseUser, opCloseConnection:
		if h == nil {
			break
		}
		reason := DisconnectClosedByAppServer
		if cmd.Reason != "" {
			reason.Reason = cmd.Reason
		}
		h.selectConns(cmd, func(c *conn) { c.close(reason) })
	case opAddConnectionToGroup, opRemoveConnectionFromGroup, opRemoveConnectionFromAllGroups,
		opConnectionExists, opGrantPermission, opRevokePermission, opCheckPermission:
		if c := h.lookup(cmd.Target); c != nil {
			return execOnConn(c, cmd)
		}
		return connectionNotFound(cmd.Op)
	case opTakeover, opHandover:
		if c := h.lookup(cmd.Target); c != nil && c.rel != nil {
			if cmd.Op == opTakeover {
				return c.prepareHandover()
			}
			return c.handOver(cmd.Node, cmd.Groups)
		}
		return result{Err: errCode(errNotRecoverable)}
	case opForget:
		if s.cluster != nil {
			s.cluster.setMoved(cmd.Target, cmd.Node)
		}
	case opAddUserToGroup:
		if h == nil {
			return result{Err: errCode(ErrUserNotFound)}
		}
		return result{Err: errCode(addUserToGroup(h.users.members(cmd.Target), cmd.Group))}
	case opRemoveUserFromGroup, opRemoveUserFromAllGroups:
		if h == nil {
			break
		}
		for _, c := range h.users.members(cmd.Target) {
			if cmd.Op == opRemoveUserFromGroup {
				c.leaveGroup(cmd.Group)
			} else {
				c.leaveAllGroups()
			}
		}
	case opUserExists:
		return result{Found: h != nil && anyLive(h.users.members(cmd.Target))}
	case opGroupExists:
		return result{Found: h != nil && anyLive(h.groups.members(cmd.Target))}
	case opListConnectionsInGroup:
		if h == nil {
			break
		}
		var out []GroupMember
		for _, c := range h.groups.members(cmd.Target) {
			if !c.ending() {
				out = append(out, GroupMember{ConnectionID: c.id, UserID: c.userID})
			}
		}
		return result{Members: out}
	case opGroupStateUpdate:
		if h != nil {
			s.fanOutGroupState(h, cmd)
		}
	case opGroupStateSnapshot:
		return result{Items: h.groupStateItems(cmd.Target)}
	case opAddConnectionsToGroups, opRemoveConnectionsFromGroups:
		if h == nil {
			break
		}
		h.selectConns(cmd, func(c *conn) {
			for _, g := range cmd.Groups {
				if cmd.Op == opAddConnectionsToGroups {
					_ = c.joinGroup(g) // one in as many groups as it may be joins what it can
				} else {
					c.leaveGroup(g)
				}
			}
		})
	default:
		s.log.Error("unknown hub operation", "op", cmd.Op)
	}
	return result{}
}

// connectionNotFound is the answer to a connection-targeted operation on
// a connection that no node holds.
func connectionNotFound(o op) result {
	if o == opConnectionExists || o == opRemoveConnectionFromGroup || o == opRemoveConnectionFromAllGroups {
		return result{} // false; removing what is not there is done
	}
	return result{Err: errCode(ErrConnectionNotFound)}
}

// execOnConn applies a connection-targeted operation to c.
func execOnConn(c *conn, cmd *command) result {
	switch cmd.Op {
	case opAddConnectionToGroup:
		return result{Err: errCode(c.joinGroup(cmd.Group))}
	case opRemoveConnectionFromGroup:
		c.leaveGroup(cmd.Group)
	case opRemoveConnectionFromAllGroups:
		c.leaveAllGroups()
	case opConnectionExists:
		return result{Found: true}
	case opGrantPermission:
		return result{Err: errCode(c.perms.grant(cmd.Perm, cmd.Group))}
	case opRevokePermission:
		return result{Err: errCode(c.perms.revoke(cmd.Perm, cmd.Group))}
	case opCheckPermission:
		if cmd.Group == "" {
			return result{Found: c.perms.allowsAll(cmd.Perm)}
		}
		return result{Found: c.perms.allows(cmd.Perm, cmd.Group)}
	}
	return result{}
}

// addUserToGroup adds each of a user's connections to group: nil if one
// joined, else ErrTooManyGroups if one could not, else ErrUserNotFound.
func addUserToGroup(conns []*conn, group string) error {
	result := ErrUserNotFound
	for _, c := range conns {
		switch err := c.joinGroup(group); {
		case err == nil:
			result = nil
		case errors.Is(err, ErrTooManyGroups) && result != nil:
			result = err
		}
	}
	return result
}

// merge combines the answers of several nodes into the one the service
// gives: what one node holding all their connections would have answered.
func merge(o op, rs []result) result {
	var out result
	switch o {
	case opUserExists, opGroupExists:
		for _, r := range rs {
			out.Found = out.Found || r.Found
		}
	case opListConnectionsInGroup:
		for _, r := range rs {
			out.Members = append(out.Members, r.Members...)
		}
		slices.SortFunc(out.Members, func(a, b GroupMember) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	case opGroupStateSnapshot:
		for _, r := range rs {
			out.Items = append(out.Items, r.Items...)
		}
		sortGroupStateItems(out.Items)
	case opAddUserToGroup:
		out.Err = errCode(ErrUserNotFound)
		for _, r := range rs {
			switch {
			case r.Err == "":
				out.Err = ""
			case r.Err == errCode(ErrTooManyGroups) && out.Err != "":
				out.Err = r.Err
			}
		}
	default:
		for _, r := range rs {
			if r.Err != "" {
				out.Err = r.Err
			}
		}
	}
	return out
}

// decided reports whether answers so far settle a survey whatever the
// others say: a "yes" to an exists question.
func decided(o op, rs []result) bool {
	if o != opUserExists && o != opGroupExists {
		return false
	}
	return slices.ContainsFunc(rs, func(r result) bool { return r.Found })
}
