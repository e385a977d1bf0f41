package pubsub

import (
	"slices"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// fanOut delivers a send to the connections of this node it addresses.
// Every message fans out here: it is encoded once per client kind, and the
// same frame bytes are queued for each recipient. The recipients are a
// snapshot, taken before any of them is touched: no set's lock is held
// while a connection is filtered, delivered to or closed.
func (s *Service) fanOut(h *hubState, cmd *command) {
	d := delivery{svc: s, cmd: cmd}
	defer d.settle()
	h.selectConns(cmd, func(c *conn) { c.deliver(&d) })
	s.messageSent(cmd, d.recipients)
}

// selectConns calls f for each connection a command addresses, minus the
// excluded ones and those its filter does not match.
func (h *hubState) selectConns(cmd *command, f func(*conn)) {
	each := f
	if len(cmd.Excluded) > 0 || cmd.filter != nil {
		each = func(c *conn) {
			if slices.Contains(cmd.Excluded, c.id) || cmd.filter != nil && !cmd.filter.Match(connInfo{c}) {
				return
			}
			f(c)
		}
	}
	switch cmd.Op {
	case opSendToAll, opCloseAll, opAddConnectionsToGroups, opRemoveConnectionsFromGroups:
		// Range calls back with no lock held: it copies each bucket first.
		h.conns.Range(func(_ string, c *conn) bool { each(c); return true })
	case opSendToGroup, opCloseGroup:
		for _, c := range h.groups.members(cmd.Target) {
			each(c)
		}
	case opSendToUser, opCloseUser:
		for _, c := range h.users.members(cmd.Target) {
			each(c)
		}
	case opSendToConnection, opCloseConnection:
		if c, ok := h.conns.Load(cmd.Target); ok {
			each(c)
		}
	}
}

// delivery is one message on its way out, encoded lazily, once per client
// kind: a whole frame for the simple, JSON and protobuf kinds; for the
// reliable kinds, a body that every receiver shares and that each completes
// with a few bytes of its own sequence id.
type delivery struct {
	svc       *Service
	cmd       *command
	simple    []byte
	jsonFrame []byte
	jsonBody  []byte // jsonFrame without its header
	pbData    []byte // the DataMessage, without sequence id
	pbFrame   []byte

	// Each encoding counts against the buffer budget once; held counts
	// the references queues and replay buffers take during the fan-out,
	// settled when it is done.
	shares [numEncodings]*sharedBytes
	held   [numEncodings]int64

	recipients int // the connections it was for
}

// The encodings of a delivery. The JSON frame's buffer holds the body that
// reliable JSON receivers share.
const (
	encSimple = iota
	encJSON
	encProtobuf
	encProtobufData
	numEncodings
)

// encoded records a new encoding of d.
func (d *delivery) encoded(enc int, b []byte) { d.shares[enc] = newSharedBytes(d.svc, len(b)) }

// settle hands each encoding the references the fan-out took.
func (d *delivery) settle() {
	for enc, sh := range d.shares {
		if sh != nil {
			sh.settle(d.held[enc])
		}
	}
}

// deliver queues d for c in c's encoding.
func (c *conn) deliver(d *delivery) {
	if !d.cmd.reaches(c.kind) {
		return
	}
	deadline := d.cmd.ExpiresAt
	d.recipients++
	switch c.kind {
	case kindSimple:
		d.take(encSimple, c.enqueueShared(deadline, d.simpleFrame(), d.shares[encSimple]))
	case kindJSON:
		d.take(encJSON, c.enqueueShared(deadline, d.json(), d.shares[encJSON]))
	case kindProtobuf:
		d.take(encProtobuf, c.enqueueShared(deadline, d.protobuf(), d.shares[encProtobuf]))
	case kindJSONReliable:
		d.json()
		d.held[encJSON] += c.deliverReliable(deadline, d.shares[encJSON], func(seq uint64) [][]byte { return reliableJSONFrame(d.jsonBody, seq) })
	case kindProtobufReliable:
		d.protobufData()
		d.held[encProtobufData] += c.deliverReliable(deadline, d.shares[encProtobufData], func(seq uint64) [][]byte { return reliableProtobufFrame(d.pbData, seq) })
	}
}

// reaches reports whether a send is for clients of kind k: a stream's
// terminal fragment is for JSON clients only. The other kinds have no way
// to tell a stream apart, and get its data fragments as group messages.
func (cmd *command) reaches(k clientKind) bool {
	return cmd.Stream == nil || !cmd.Stream.End || k == kindJSON || k == kindJSONReliable
}

// take counts a reference to an encoding, if one was taken.
func (d *delivery) take(enc int, taken bool) {
	if taken {
		d.held[enc]++
	}
}

func (d *delivery) simpleFrame() []byte {
	if d.simple == nil {
		d.simple = simpleFrame(d.cmd.DataType, d.cmd.Data)
		d.encoded(encSimple, d.simple)
	}
	return d.simple
}

// json encodes the JSON frame, in place after room for its header, so that
// the body and the frame share their bytes.
func (d *delivery) json() []byte {
	if d.jsonFrame == nil {
		buf := appendJSONBody(d.cmd)
		d.jsonBody = buf[wsframe.Reserve:]
		d.jsonFrame = wsframe.Finish(buf, wsframe.OpText)
		d.encoded(encJSON, d.jsonFrame)
	}
	return d.jsonFrame
}

// appendJSONBody encodes a send as the JSON message its receivers get,
// after room for a frame header.
func appendJSONBody(cmd *command) []byte {
	buf := wsframe.Begin(len(cmd.Data)*4/3 + 96 + len(cmd.Target))
	if cmd.Op == opGroupStateUpdate {
		return protocol.AppendGroupStateUpdate(buf, cmd.Target, cmd.Items)
	}
	if cmd.Stream != nil {
		return protocol.AppendGroupStreamMessage(buf, cmd.Target, cmd.FromUserID, cmd.Stream, cmd.DataType, cmd.Data)
	}
	if cmd.Op == opSendToGroup {
		return protocol.AppendGroupMessageWithMetadata(buf, cmd.Target, cmd.FromUserID, cmd.Metadata, cmd.DataType, cmd.Data)
	}
	return protocol.AppendServerMessage(buf, cmd.DataType, cmd.Data)
}

// appendProtobufData encodes a send as the DataMessage its protobuf
// receivers get, without a sequence id.
func appendProtobufData(cmd *command) []byte {
	from, group := "server", ""
	if cmd.Op == opSendToGroup {
		from, group = "group", cmd.Target
	}
	buf := protocol.AppendProtobufDataMessage(make([]byte, 0, len(cmd.Data)+len(group)+24), from, group, cmd.DataType, cmd.Data)
	if len(cmd.Metadata) > 0 {
		buf = protocol.AppendProtobufMetadata(buf, cmd.Metadata)
	}
	return buf
}

func (d *delivery) protobufData() []byte {
	if d.pbData == nil {
		d.pbData = appendProtobufData(d.cmd)
		d.encoded(encProtobufData, d.pbData)
	}
	return d.pbData
}

func (d *delivery) protobuf() []byte {
	if d.pbFrame == nil {
		data := d.protobufData()
		buf := protocol.AppendProtobufDataEnvelope(wsframe.Begin(len(data)+8), len(data))
		d.pbFrame = protobufFrame(append(buf, data...))
		d.encoded(encProtobuf, d.pbFrame)
	}
	return d.pbFrame
}
