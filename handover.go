package pubsub

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
)

// A reliable client whose transport dropped may recover on any node: the
// one it reaches (the new node) asks the node its connection id names (the
// owner) to hand the session over. Nothing is lost or delivered twice:
//
//  1. takeover: the owner detaches the connection if it is still attached
//     and answers with its user and groups; it keeps the session, which
//     goes on collecting the connection's messages.
//  2. The new node registers the connection, arriving: it subscribes to
//     its user's, groups' and hub's subjects, and holds what they deliver
//     to it. Once the subscriptions reach the broker (Flush), every later
//     send reaches the new node.
//  3. handover: the owner, in its broker order, receives this request after
//     every send made before the new node's subscriptions took effect. It
//     answers with the whole session (permissions, state, sequence,
//     unacknowledged messages with their send ids) and lets the connection
//     go without a disconnected event; from then on it forwards what is
//     addressed to the connection's id to the new node. If the groups
//     changed since step 1, it answers with them instead, and the new node
//     subscribes and asks again.
//  4. The new node appends the owner's messages, then those it held that
//     the owner did not have (by send id), and resumes the session on the
//     client's transport: the client gets the unacknowledged messages in
//     sequence, and everything after, once.
//
// If the owner is gone or does not answer, the recovery is refused (1008)
// and the client starts a new connection, as on any failed recovery.

// handedSession is what a node hands over of a reliable connection.
type handedSession struct {
	User        string           `json:"u,omitempty"`
	Subprotocol string           `json:"p"`
	Groups      []string         `json:"g,omitempty"`
	State       string           `json:"s,omitempty"`
	Perms       *permsSnapshot   `json:"r,omitempty"`
	Seq         uint64           `json:"q,omitempty"`
	Unacked     []sessionMessage `json:"m,omitempty"`
	Reason      string           `json:"d,omitempty"`
}

// sessionMessage is an unacknowledged message: its receiver's frame.
type sessionMessage struct {
	Seq     uint64 `json:"q"`
	Frame   []byte `json:"f"`
	Expires int64  `json:"e,omitempty"`
	ID      string `json:"i,omitempty"`
}

// arrival is a connection being handed over to this node: the sends that
// reached it before the session did.
type arrival struct {
	pending []*command
}

type permsSnapshot struct {
	All      [numPermissions]bool            `json:"a"`
	Literal  [numPermissions]map[string]bool `json:"l"`
	Patterns [numPermissions][]string        `json:"p"`
}

func (p *permissions) snapshot() *permsSnapshot {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := &permsSnapshot{All: p.all}
	for perm := range numPermissions {
		out.Literal[perm] = p.literal[perm]
		for _, pat := range p.patterns[perm] {
			out.Patterns[perm] = append(out.Patterns[perm], pat.String())
		}
	}
	return out
}

func restorePermissions(s *permsSnapshot) (*permissions, error) {
	p := &permissions{}
	if s == nil {
		return p, nil
	}
	p.all = s.All
	for perm := range numPermissions {
		p.literal[perm] = s.Literal[perm]
		for _, src := range s.Patterns[perm] {
			pat, err := compileGroupPattern(src)
			if err != nil {
				return nil, err
			}
			p.patterns[perm] = append(p.patterns[perm], pat)
		}
	}
	return p, nil
}

// prepareHandover is step 1, on the owner.
func (c *conn) prepareHandover() result {
	c.mu.Lock()
	if c.state != stateOpen && c.state != stateDetached || c.arrival != nil {
		c.mu.Unlock()
		return result{Err: errCode(errNotRecoverable)}
	}
	old := c.detachLocked("The client recovered on another node.")
	sess := &handedSession{User: c.userID, Subprotocol: c.subprotocol, Groups: c.groupNamesLocked()}
	c.mu.Unlock()
	if old != nil {
		old.out.abort() // its read loop ends and finds itself replaced
	}
	return result{Session: sess}
}

// detachLocked detaches an open connection at once, as if its transport had
// dropped: it keeps its session for the recovery window. It returns the
// transport to abort once c.mu is released.
func (c *conn) detachLocked(reason string) (old *wire) {
	if c.state != stateOpen {
		return nil
	}
	old = c.w
	c.state, c.w = stateDetached, nil
	c.rel.reason = reason
	c.rel.timer = time.AfterFunc(c.svc.cfg.RecoveryWindow, c.recoveryExpired)
	return old
}

// drain detaches an open reliable connection of a node that is shutting
// down, so that its client recovers it on another node: Shutdown waits
// for the handover, or for the recovery window to end. It reports whether
// the connection is now detached.
func (c *conn) drain() bool {
	c.mu.Lock()
	old := c.detachLocked("ServiceReload: the node is shutting down.")
	detached := c.state == stateDetached
	c.mu.Unlock()
	if old != nil {
		old.out.abort()
	}
	return detached
}

func (c *conn) groupNamesLocked() []string {
	out := make([]string, 0, len(c.groups))
	for g := range c.groups {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}

// handOver is step 3, on the owner: node asks for the session, subscribed
// to groups.
func (c *conn) handOver(node string, groups []string) result {
	c.mu.Lock()
	old := c.detachLocked("The client recovered on another node.")
	if c.state != stateDetached || c.arrival != nil {
		c.mu.Unlock()
		return result{Err: errCode(errNotRecoverable)}
	}
	now := c.groupNamesLocked()
	if !slices.Equal(now, groups) {
		c.mu.Unlock()
		if old != nil {
			old.out.abort()
		}
		return result{Retry: append(now, "")} // never empty: "" ends the list
	}
	r := c.rel
	sess := &handedSession{
		User: c.userID, Subprotocol: c.subprotocol, Groups: now, State: c.connState,
		Perms: c.perms.snapshot(), Seq: r.seq, Reason: r.reason,
	}
	for _, m := range r.unacked {
		var frame []byte
		for _, p := range m.parts {
			frame = append(frame, p...)
		}
		sess.Unacked = append(sess.Unacked, sessionMessage{Seq: m.seq, Frame: frame, Expires: m.expires, ID: m.id})
	}
	groupSet := c.groups
	c.groups = nil
	r.stopTimer()
	r.drop(c.svc)
	c.state = stateReleased
	c.mu.Unlock()
	if old != nil {
		old.out.abort()
	}
	c.svc.cluster.moved(c.id, node)
	c.leave(groupSet)
	return result{Session: sess}
}

// leave takes a released connection out of the registry without a
// disconnected event: its session lives on on another node, or never
// began here.
func (c *conn) leave(groups map[string]struct{}) {
	c.cancel()
	c.hub.unregister(c, groups)
	c.svc.connections.Add(-1)
	c.svc.active.done()
}

// takeover is steps 1, 2 and 4, on the new node: it returns the connection,
// registered here and detached, for the recovering transport to resume.
func (cl *cluster) takeover(ctx context.Context, hub, id string) (*conn, error) {
	owner, ok := ownerOf(id)
	if !ok || owner == cl.node {
		return nil, errNotRecoverable
	}
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	r, err := cl.ask(ctx, &command{Op: opTakeover, Hub: hub, Target: id, Node: cl.node})
	if err == nil {
		err = r.err()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotRecoverable, err)
	}
	sess := r.Session
	if sess == nil {
		return nil, errNotRecoverable
	}
	kind, _ := negotiate([]string{sess.Subprotocol}, sess.Subprotocol)
	if !kind.reliable() {
		return nil, errNotRecoverable
	}
	s := cl.svc
	cctx, ccancel := context.WithCancel(context.Background())
	c := &conn{
		svc:           s,
		id:            id,
		userID:        sess.User,
		subprotocol:   sess.Subprotocol,
		kind:          kind,
		perms:         &permissions{},
		ctx:           cctx,
		cancel:        ccancel,
		state:         stateDetached,
		lastRead:      closedChan, // no read loop of it ever ran here
		connected:     true,       // the owner raised the connected event
		rel:           &reliable{},
		arrival:       &arrival{},
		initialGroups: sess.Groups,
		movedFrom:     owner,
	}
	if err := s.register(c, hub); err != nil {
		ccancel()
		return nil, err
	}
	cl.subscribe(connectionSubject(id)) // operations on it by id reach it here
	for range 5 {
		cl.sync(ctx)
		r, err = cl.ask(ctx, &command{Op: opHandover, Hub: hub, Target: id, Node: cl.node, Groups: c.groupNames()})
		if err == nil {
			err = r.err()
		}
		if err != nil || r.Retry == nil {
			break
		}
		c.setGroups(r.Retry[:len(r.Retry)-1])
	}
	if err == nil && r.Session == nil {
		err = errNotRecoverable // the groups kept changing
	}
	if err == nil {
		err = c.arrive(r.Session)
	}
	if err != nil {
		c.mu.Lock()
		c.state, c.arrival = stateReleased, nil
		groups := c.groups
		c.groups = nil
		c.rel.drop(s)
		c.mu.Unlock()
		c.leave(groups)
		return nil, fmt.Errorf("%w: %w", errNotRecoverable, err)
	}
	return c, nil
}

// setGroups makes an arriving connection's groups those of its owner.
func (c *conn) setGroups(groups []string) {
	for _, g := range c.groupNames() {
		if !slices.Contains(groups, g) {
			c.leaveGroup(g)
		}
	}
	for _, g := range groups {
		_ = c.joinGroup(g)
	}
}

// arrive is step 4: the session, then what was held that it lacks.
func (c *conn) arrive(sess *handedSession) error {
	perms, err := restorePermissions(sess.Perms)
	if err != nil {
		return err
	}
	s := c.svc
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateDetached {
		return errNotRecoverable
	}
	c.perms, c.connState = perms, sess.State
	r := c.rel
	r.seq, r.reason = sess.Seq, sess.Reason
	had := make(map[string]bool, len(sess.Unacked))
	for _, m := range sess.Unacked {
		r.unacked = append(r.unacked, unackedMessage{seq: m.Seq, parts: [][]byte{m.Frame}, size: len(m.Frame), expires: m.Expires, id: m.ID})
		r.bytes += len(m.Frame)
		s.buffered(len(m.Frame))
		had[m.ID] = true
	}
	for _, cmd := range c.arrival.pending {
		if cmd.ID != "" && had[cmd.ID] {
			continue
		}
		r.seq++
		var parts [][]byte
		if c.kind == kindJSONReliable {
			parts = reliableJSONFrame(appendJSONBody(cmd)[wsframe.Reserve:], r.seq)
		} else {
			parts = reliableProtobufFrame(appendProtobufData(cmd), r.seq)
		}
		var frame []byte
		for _, p := range parts {
			frame = append(frame, p...)
		}
		r.unacked = append(r.unacked, unackedMessage{seq: r.seq, parts: [][]byte{frame}, size: len(frame), expires: cmd.ExpiresAt, id: cmd.ID})
		r.bytes += len(frame)
		s.buffered(len(frame))
	}
	c.arrival = nil
	r.timer = time.AfterFunc(s.cfg.RecoveryWindow, c.recoveryExpired) // until its transport resumes it
	return nil
}
