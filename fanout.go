package pubsub

import (
	"slices"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// apply performs a command on this process's connections. Every message fans
// out here: it is encoded once per client kind, and the same frame bytes are
// queued for each recipient.
func (s *Service) apply(cmd *Command) {
	h, ok := s.hubs.Load(cmd.Hub)
	if !ok {
		return // no connection of this hub ever came to this process
	}
	if err := cmd.compile(); err != nil { // a command from another process
		s.log.Error("dropping a broker command with an invalid filter", "err", err)
		return
	}
	switch cmd.Op {
	case OpSendToAll, OpSendToGroup, OpSendToUser, OpSendToConnection:
		d := delivery{cmd: cmd}
		h.selectConns(cmd, func(c *conn) { c.enqueue(d.frame(c.kind), cmd.ExpiresAt) })
	case OpCloseAll, OpCloseGroup, OpCloseUser, OpCloseConnection:
		reason := DisconnectClosedByAppServer
		if cmd.Reason != "" {
			reason.Reason = cmd.Reason
		}
		h.selectConns(cmd, func(c *conn) { c.close(reason) })
	default:
		s.log.Error("unknown broker command", "op", cmd.Op)
	}
}

// selectConns calls f for each connection a command addresses, minus the
// excluded ones and those its filter does not match.
func (h *Hub) selectConns(cmd *Command, f func(*conn)) {
	each := f
	if len(cmd.Excluded) > 0 || cmd.filter != nil {
		each = func(c *conn) {
			if slices.Contains(cmd.Excluded, c.id) || cmd.filter != nil && !cmd.filter.Match(ConnectionInfo{c}) {
				return
			}
			f(c)
		}
	}
	switch cmd.Op {
	case OpSendToAll, OpCloseAll:
		h.conns.Range(func(_ string, c *conn) bool { each(c); return true })
	case OpSendToGroup, OpCloseGroup:
		h.groups.each(cmd.Target, each)
	case OpSendToUser, OpCloseUser:
		h.users.each(cmd.Target, each)
	case OpSendToConnection, OpCloseConnection:
		if c, ok := h.conns.Load(cmd.Target); ok {
			each(c)
		}
	}
}

// delivery is one message on its way out, with its frame encoded lazily, once
// per client kind.
type delivery struct {
	cmd    *Command
	frames [numKinds][]byte
}

func (d *delivery) frame(k clientKind) []byte {
	if f := d.frames[k]; f != nil {
		return f
	}
	m := d.cmd.Message
	var f []byte
	switch k {
	case kindSimple:
		f = simpleFrame(m.DataType, m.Data)
	case kindJSON:
		buf := wsframe.Begin(len(m.Data)*4/3 + 96 + len(d.cmd.Target))
		if d.cmd.Op == OpSendToGroup {
			buf = protocol.AppendGroupMessage(buf, d.cmd.Target, d.cmd.FromUserID, m.DataType, m.Data)
		} else {
			buf = protocol.AppendServerMessage(buf, m.DataType, m.Data)
		}
		f = wsframe.Finish(buf, wsframe.OpText)
	}
	d.frames[k] = f
	return f
}
