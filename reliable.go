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
// a recovery), and whether it is between transports. Guarded by outMu.
type reliable struct {
	seq      uint64 // the last sequence id assigned
	unacked  []unackedMessage
	bytes    int
	detached bool
	reason   string // why the last transport dropped
	timer    *time.Timer
}

// unackedMessage is a data message as its receiver's frame: the parts that
// were queued, kept until acknowledged.
type unackedMessage struct {
	seq     uint64
	parts   [][]byte
	size    int
	expires int64
}

// detached reports whether c is a reliable connection between transports.
// Caller holds outMu.
func (c *conn) detached() bool { return c.rel != nil && c.rel.detached }

func (c *conn) isDetached() bool {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	return c.detached()
}

// deliverReliable gives a data message the connection's next sequence id,
// keeps it until the client acknowledges it, and queues it unless the
// connection is between transports. build makes the receiver's frame for a
// sequence id: a small prefix and the body shared with other receivers.
func (c *conn) deliverReliable(deadline int64, build func(seq uint64) [][]byte) {
	c.outMu.Lock()
	if c.ended {
		c.outMu.Unlock()
		return
	}
	r := c.rel
	r.seq++
	parts := build(r.seq)
	size := byteLen(parts)
	if len(r.unacked) >= maxUnackedMessages || r.bytes+size > maxUnackedBytes {
		flush, release := c.closeLocked(DisconnectReliableBufferFull)
		c.outMu.Unlock()
		c.hub.svc.log.Warn("closing a reliable client that does not acknowledge its messages", "hub", c.hub.name, "connectionId", c.id)
		c.afterClose(flush, release)
		return
	}
	r.unacked = append(r.unacked, unackedMessage{seq: r.seq, parts: parts, size: size, expires: deadline})
	r.bytes += size
	start := false
	if !r.detached {
		start = c.enqueueLocked(c.out, deadline, parts)
	}
	o := c.out
	c.outMu.Unlock()
	if start {
		c.kick(o)
	}
}

// ackSequence forgets the messages the client acknowledged: every id up to
// seq (sequenceAck is cumulative).
func (c *conn) ackSequence(seq uint64) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	r := c.rel
	if r == nil {
		return
	}
	n := 0
	for n < len(r.unacked) && r.unacked[n].seq <= seq {
		r.bytes -= r.unacked[n].size
		n++
	}
	clear(r.unacked[:n])
	r.unacked = r.unacked[n:]
}

// detach keeps a reliable connection alive after its transport o dropped,
// for the recovery window: its groups, permissions and unacknowledged
// messages wait for the client to come back.
func (c *conn) detach(o *outbox, reason string) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	o.closed = true
	clear(o.frames)
	o.frames, o.expires = nil, nil
	if c.ended || c.out != o || c.rel.detached {
		return
	}
	c.rel.detached = true
	c.rel.reason = reason
	c.rel.timer = time.AfterFunc(c.hub.svc.cfg.RecoveryWindow, c.recoveryExpired)
}

// recoveryExpired ends a connection whose client did not come back in time.
func (c *conn) recoveryExpired() {
	c.outMu.Lock()
	if c.ended || !c.detached() {
		c.outMu.Unlock()
		return
	}
	reason := c.rel.reason
	c.endSessionLocked(Disconnect{ClosePolicyViolation, reason})
	c.outMu.Unlock()
	c.hub.svc.release(c, reason)
}

// resume attaches a new transport's outbox to a reliable connection and
// queues every unacknowledged message on it first, in sequence order. If the
// old transport is still attached (its drop not yet noticed), it is closed.
func (c *conn) resume(o *outbox) bool {
	c.outMu.Lock()
	if c.ended || c.rel == nil {
		c.outMu.Unlock()
		return false
	}
	r := c.rel
	if r.timer != nil {
		r.timer.Stop()
	}
	old := c.out
	oldSocket := old.socket
	old.closed = true
	clear(old.frames)
	old.frames, old.expires = nil, nil
	r.detached = false
	c.out = o
	now := time.Now().UnixNano()
	for _, m := range r.unacked {
		if m.expires != 0 && now > m.expires {
			continue // its TTL passed while the client was away
		}
		// Replay bypasses the outbound bound: the replay buffer has its own.
		o.frames = append(o.frames, m.parts...)
		o.queued++
		if m.expires != 0 && o.expires == nil {
			o.expires = make([]int64, len(o.frames)-len(m.parts), cap(o.frames))
		}
		if o.expires != nil {
			for range m.parts {
				o.expires = append(o.expires, m.expires)
			}
		}
		o.size += m.size
	}
	c.outMu.Unlock()
	if oldSocket != nil { // already closed when the drop was noticed; harmless
		_ = oldSocket.NetConn().Close()
	}
	return true
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
