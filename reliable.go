package pubsub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// Limits of a reliable connection's replay buffer (client spec §8.2).
const (
	maxUnackedMessages = 1000
	maxUnackedBytes    = 16 << 20
)

// DisconnectReliableBufferFull ends a reliable connection whose client does
// not acknowledge its messages; the session cannot be recovered.
var DisconnectReliableBufferFull = Disconnect{ClosePolicyViolation, "The reliable message buffer is full."}

// reliable is the state a reliable connection keeps across transports: the
// sequence of its data messages, those not yet acknowledged (to replay after
// a recovery), and its recovery timer while detached. Guarded by conn.mu.
type reliable struct {
	seq     uint64 // the last sequence id assigned
	unacked []unackedMessage
	bytes   int
	reason  string // why the last transport dropped
	timer   *time.Timer
	// preparedAt is when another node asked to take the connection over
	// (handover.go); zero: none did.
	preparedAt time.Time
}

// unackedMessage is a data message as its receiver's frame: the parts that
// were queued, kept until acknowledged.
type unackedMessage struct {
	seq     uint64
	parts   [][]byte
	size    int
	expires int64
	share   *sharedBytes // parts[1]'s, the body shared with other receivers; one reference
}

// own is the bytes of m that are its receiver's alone.
func (m *unackedMessage) own() int {
	if m.share == nil {
		return m.size
	}
	return m.size - len(m.parts[1])
}

// forget lets go of what m holds of the buffer budget.
func (m *unackedMessage) forget(s *Service) {
	s.buffered(-m.own())
	m.share.release(1)
}

func (r *reliable) stopTimer() {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// drop forgets every unacknowledged message.
func (r *reliable) drop(s *Service) {
	for i := range r.unacked {
		r.unacked[i].forget(s)
	}
	r.unacked, r.bytes = nil, 0
}

// replay queues every unacknowledged message on o, a recovering client's
// new transport, in sequence order; bypassing the outbound bound, since
// the replay buffer has its own. Those whose TTL passed meanwhile are left
// out.
func (r *reliable) replay(o *outbox) {
	now := time.Now().UnixNano()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range r.unacked {
		if m.expires != 0 && now > m.expires {
			continue
		}
		m.share.hold() // the replay buffer keeps its own
		o.appendLocked(m.expires, m.parts, m.size, m.share, 1)
	}
}

// deliverReliable gives a data message the connection's next sequence id,
// keeps it until the client acknowledges it, and queues it unless the
// connection is between transports. build makes the receiver's frame for a
// sequence id: a small prefix and, second, the body shared with other
// receivers, share's. It returns how many references to share it took.
func (c *conn) deliverReliable(deadline int64, share *sharedBytes, build func(seq uint64) [][]byte) (refs int64) {
	c.mu.Lock()
	refs, after := c.deliverReliableLocked(deadline, share, build)
	c.mu.Unlock()
	after.run(c)
	return refs
}

// deliverReliableLocked is deliverReliable under c.mu; the caller runs
// after once it is released.
func (c *conn) deliverReliableLocked(deadline int64, share *sharedBytes, build func(seq uint64) [][]byte) (refs int64, after afterUnlock) {
	switch c.state {
	case stateConnecting, stateOpen, stateDetached:
		r := c.rel
		r.seq++
		parts := build(r.seq)
		size := byteLen(parts)
		if len(r.unacked) >= maxUnackedMessages || r.bytes+size > maxUnackedBytes {
			c.svc.log.Warn("closing a reliable client that does not acknowledge its messages", "hub", c.hub.name, "connectionId", c.id)
			after = c.closeLocked(DisconnectReliableBufferFull, false)
			break
		}
		m := unackedMessage{seq: r.seq, parts: parts, size: size, expires: deadline, share: share}
		r.unacked = append(r.unacked, m)
		r.bytes += size
		c.svc.buffered(m.own())
		refs++
		if c.state != stateDetached {
			var queued bool
			if after, queued = c.enqueueLocked(deadline, parts, share, 1); queued {
				refs++
			}
		}
	}
	return refs, after
}

// ackSequence forgets the messages the client acknowledged: every id up to
// seq (sequenceAck is cumulative).
func (c *conn) ackSequence(seq uint64) {
	c.mu.Lock()
	r := c.rel
	if r == nil {
		c.mu.Unlock()
		return
	}
	n := 0
	for n < len(r.unacked) && r.unacked[n].seq <= seq {
		r.bytes -= r.unacked[n].size
		r.unacked[n].forget(c.svc)
		n++
	}
	clear(r.unacked[:n])
	r.unacked = r.unacked[n:]
	c.mu.Unlock()
}

// reliableJSONFrame is a json.reliable receiver's frame of a JSON message
// body: the header and `{"sequenceId":N,` are its own, the rest of the body
// is shared with every other receiver.
func reliableJSONFrame(body []byte, seq uint64) [][]byte {
	var num [20]byte
	n := strconv.AppendUint(num[:0], seq, 10)
	const open = `{"sequenceId":`
	size := len(open) + len(n) + 1 + len(body) - 1
	prefix := wsframe.AppendHeader(make([]byte, 0, wsframe.Reserve+len(open)+len(n)+1), wsframe.OpText, size)
	prefix = append(prefix, open...)
	prefix = append(append(prefix, n...), ',')
	return [][]byte{prefix, body[1:]}
}

// reliableProtobufFrame is a protobuf.reliable receiver's frame of a shared
// DataMessage: its own header and envelope, the shared message, and its own
// sequence_id field after it.
func reliableProtobufFrame(data []byte, seq uint64) [][]byte {
	seqField := protocol.AppendProtobufSequenceID(nil, seq)
	inner := len(data) + len(seqField)
	env := protocol.AppendProtobufDataEnvelope(make([]byte, 0, 12), inner)
	prefix := wsframe.AppendHeader(make([]byte, 0, wsframe.Reserve+len(env)), wsframe.OpBinary, len(env)+inner)
	return [][]byte{append(prefix, env...), data, seqField}
}

// reconnectionToken is what a reliable client presents to recover its
// connection: an HMAC of the hub and connection id under the access key, so
// it cannot be forged or used for another connection.
func (s *Service) reconnectionToken(hub, connectionID string) string {
	return reconnectionMAC(s.keys[0], hub, connectionID)
}

func reconnectionMAC(key []byte, hub, connectionID string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("awps-reconnection\x00" + hub + "\x00" + connectionID))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *Service) validReconnectionToken(hub, connectionID, token string) bool {
	for _, k := range s.keys {
		if hmac.Equal([]byte(token), []byte(reconnectionMAC(k, hub, connectionID))) {
			return true
		}
	}
	return false
}
