package pubsub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// A reliable client whose transport dropped may recover on any node: the
// one it reaches (the new node) asks the node that holds its connection (the
// owner: the node its id names, or the one it was handed over to since) to
// hand the session over. Nothing is lost or delivered twice:
//
//  1. takeover: the owner detaches the connection if it is still attached
//     and answers with its user and groups. It keeps the session, which
//     goes on collecting the connection's messages.
//  2. The new node makes the connection arriving: not in its registry yet,
//     but subscribed to its user's, groups', hub's and id's subjects, and
//     queueing every command of the hub and every command on the id, in
//     broker order. Once the subscriptions reach the broker (Flush), every
//     later command reaches the new node.
//  3. handover: the owner receives this request, in its broker order, after
//     every command published before the new node's subscriptions took
//     effect. It answers with the whole session (permissions, state,
//     sequence, unacknowledged messages) and the number of the last
//     command of each node it applied (commands are numbered per node in
//     publish order, and each node's arrive in that order), and lets the
//     connection go without a disconnected event. If the groups changed
//     since step 1, it answers with them instead, and the new node
//     subscribes and asks again.
//  4. The new node replays its queue on the session: a command the owner
//     applied (by its number) is skipped; sends, closes and membership
//     changes that concern the connection are applied, questions answered.
//     Then it registers the connection (atomically with the last of the
//     queue) and resumes the session on the client's transport.
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
	// Seen is, per node, the last of its commands the owner applied.
	Seen map[string]uint64 `json:"w,omitempty"`
	// Streams are the group streams the connection has open (stream.go).
	Streams []handedStream `json:"t,omitempty"`
	// Presence is its presence events not yet handed to the event handler
	// (presence.go): the new node raises them, before its own.
	Presence []handedPresence `json:"pe,omitempty"`
	// GroupStates and StateSubs are the connection's group state and the
	// groups whose state it subscribes to (groupstate.go).
	GroupStates  map[string]handedGroupState `json:"gst,omitempty"`
	StateSubs    []string                    `json:"gss,omitempty"`
	StateVersion uint64                      `json:"gsv,omitempty"`
}

// removals are the changes of a session's group state going away, when it
// could not be registered on the node it was handed to.
func (sess *handedSession) removals(id string) []stateChange {
	var out []stateChange
	v := sess.StateVersion
	for _, g := range slices.Sorted(maps.Keys(sess.GroupStates)) {
		if sess.GroupStates[g].State != nil {
			v++
			out = append(out, stateChange{g, protocol.GroupStateItem{ConnectionID: id, UserID: sess.User, UpdatedAt: time.Now().UnixMilli(), Version: v}})
		}
	}
	return out
}

type handedGroupState struct {
	State     map[string]string `json:"s,omitempty"`
	UpdatedAt int64             `json:"t"`
	Version   uint64            `json:"v"`
}

// sessionMessage is an unacknowledged message: its receiver's frame.
type sessionMessage struct {
	Seq     uint64 `json:"q"`
	Frame   []byte `json:"f"`
	Expires int64  `json:"e,omitempty"`
}

// arrival is a connection being handed over to this node: the commands
// that may concern it, queued in broker order until the session comes.
// Guarded by cluster.mu.
type arrival struct {
	hub   string
	queue []queuedCommand
}

type queuedCommand struct {
	cmd   *command
	reply func([]byte) // a question on the connection, to answer
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
	if c.state != stateOpen && c.state != stateDetached {
		c.mu.Unlock()
		return result{Err: errCode(errNotRecoverable)}
	}
	old := c.detachLocked("The client recovered on another node.")
	c.rel.preparedAt = time.Now()
	sess := &handedSession{User: c.userID, Subprotocol: c.subprotocol, Groups: c.groupNamesLocked()}
	c.mu.Unlock()
	if old != nil {
		old.out.abort() // its read loop ends and finds itself replaced
		c.svc.connectionChanged(c, ConnectionDetached, Disconnect{}, "")
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
		c.svc.connectionChanged(c, ConnectionDetached, Disconnect{}, "")
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
	cl := c.svc.cluster
	// Before c.mu (cluster.mu is taken first, lifecycle.go); seen changes only
	// on the broker's goroutine, which is this one.
	seen := cl.watermark()
	c.mu.Lock()
	old := c.detachLocked("The client recovered on another node.")
	// The new node waits a ClusterTimeout for each handover answer, from
	// after the takeover answer: one given later than half of it from the
	// takeover would reach it in time only if the network took no time, and
	// a session handed to a node that gave up would be lost.
	if c.state != stateDetached || c.rel.preparedAt.IsZero() || time.Since(c.rel.preparedAt) > cl.timeout/2 {
		c.mu.Unlock()
		if old != nil {
			old.out.abort()
		}
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
		Perms: c.perms.snapshot(), Seq: r.seq, Reason: r.reason, Seen: seen,
	}
	for _, m := range r.unacked {
		sess.Unacked = append(sess.Unacked, sessionMessage{Seq: m.seq, Frame: bytes.Join(m.parts, nil), Expires: m.expires})
	}
	sess.Presence = c.handPresenceLocked()
	for g, st := range c.gstate {
		if sess.GroupStates == nil {
			sess.GroupStates = make(map[string]handedGroupState, len(c.gstate))
		}
		sess.GroupStates[g] = handedGroupState{State: st.state, UpdatedAt: st.updatedAt, Version: st.version}
	}
	sess.StateSubs = slices.Sorted(maps.Keys(c.gsubs))
	sess.StateVersion = c.stateVersion
	// The state moves with the session: its subscribers are not told it
	// went, and the new node has it.
	for g := range c.gsubs {
		c.hub.stateSubs.remove(g, c)
	}
	c.gstate, c.gsubs = nil, nil
	groupSet := c.groups
	c.groups = nil
	r.stopTimer()
	r.drop(c.svc)
	c.state = stateReleased
	c.mu.Unlock()
	if old != nil {
		old.out.abort()
	}
	sess.Streams = c.handStreams() // after c.mu: a stream's lock comes first
	cl.tellOwner(c.hub.name, c.id, node)
	c.leave(groupSet)
	return result{Session: sess}
}

// watermark copies seen: per node, the last of its commands applied here.
func (cl *cluster) watermark() map[string]uint64 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := make(map[string]uint64, len(cl.seen))
	for n, v := range cl.seen {
		out[n] = v
	}
	return out
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
	if _, ok := ownerOf(id); !ok {
		return nil, errNotRecoverable
	}
	// Each ask waits at most a ClusterTimeout of its own (handOver says why).
	r, err := cl.ask(ctx, &command{Op: opTakeover, Hub: hub, Target: id, Node: cl.node})
	if err == nil {
		err = r.err()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotRecoverable, err)
	}
	sess, from := r.Session, r.Node
	if sess == nil {
		return nil, errNotRecoverable
	}
	kind, _ := negotiate([]string{sess.Subprotocol}, sess.Subprotocol)
	if !kind.reliable() {
		return nil, errNotRecoverable
	}

	a := &arrival{hub: hub}
	cl.mu.Lock()
	if cl.arrivals[id] != nil {
		cl.mu.Unlock()
		return nil, errNotRecoverable // another recovery of it is under way here
	}
	cl.arrivals[id] = a
	cl.mu.Unlock()
	hubKey := subjectKey(hub)
	subjects := []string{hubSubject(hubKey)}
	if !cl.namedBy(id) { // this node's wildcard takes its own ids
		subjects = append(subjects, connectionSubject(id))
	}
	if sess.User != "" {
		subjects = append(subjects, userSubject(hubKey, sess.User))
	}
	groups := sess.Groups
	for _, g := range groups {
		subjects = append(subjects, groupSubject(hubKey, g))
	}
	for _, sub := range subjects {
		cl.subscribe(sub)
	}
	defer func() { // the registry holds its own subscriptions by now
		for _, sub := range subjects {
			cl.unsubscribe(sub)
		}
	}()
	sess = nil
	for range 5 {
		cl.sync(ctx)
		r, err = cl.ask(ctx, &command{Op: opHandover, Hub: hub, Target: id, Node: cl.node, Groups: groups})
		if err == nil {
			err = r.err()
		}
		if err != nil || r.Retry == nil {
			sess = r.Session
			break
		}
		groups = r.Retry[:len(r.Retry)-1]
		for _, g := range groups {
			sub := groupSubject(hubKey, g)
			cl.subscribe(sub)
			subjects = append(subjects, sub)
		}
	}
	if err == nil && sess == nil {
		err = errNotRecoverable // the groups kept changing
	}
	var c *conn
	if err == nil {
		if c, err = cl.arrive(a, id, from, sess); err != nil && !errors.Is(err, errClosedArriving) {
			// The owner let the session go and it could not be registered
			// here (shutting down): it ends here, and the handler hears so.
			cl.tellOwner(hub, id, "")
			cc := ConnectionContext{Hub: hub, ConnectionID: id, UserID: sess.User, Subprotocol: sess.Subprotocol, ConnectionState: sess.State}
			if p := cl.svc.presence; p != nil {
				// Its session ends here: what the owner had not told yet,
				// then it leaves the groups the owner had it in (what
				// happened here since was never told).
				for _, e := range sess.Presence {
					ev := GroupPresenceEvent{ConnectionContext: cc, Group: e.Group}
					if e.Joined {
						p.GroupJoined(context.Background(), ev)
					} else {
						p.GroupLeft(context.Background(), ev)
					}
				}
				for _, g := range sess.Groups {
					p.GroupLeft(context.Background(), GroupPresenceEvent{ConnectionContext: cc, Group: g})
				}
			}
			cl.svc.publishGroupState(hub, sess.removals(id))
			d := DisconnectNotRecovered
			cl.svc.observeConnection(ConnectionEvent{Kind: ConnectionClosed, Hub: hub, ConnectionID: id, UserID: sess.User,
				Subprotocol: sess.Subprotocol, Code: d.Code, Reason: d.Reason, CloseReason: closeReasonOf(d)})
			cl.svc.handler.Disconnected(context.Background(), cc, d.Reason)
		}
	}
	if err != nil {
		cl.mu.Lock()
		delete(cl.arrivals, id)
		cl.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", errNotRecoverable, err)
	}
	return c, nil
}

// errClosedArriving: a close reached the connection while it arrived; it
// was registered and closed, and its disconnected event raised.
var errClosedArriving = errors.New("pubsub: closed while it was handed over")

// arrive is step 4: the session, the queue replayed on it, and the
// connection registered.
func (cl *cluster) arrive(a *arrival, id, from string, sess *handedSession) (*conn, error) {
	perms, err := restorePermissions(sess.Perms)
	if err != nil {
		return nil, err
	}
	s := cl.svc
	kind, _ := negotiate([]string{sess.Subprotocol}, sess.Subprotocol)
	cctx, ccancel := context.WithCancel(context.Background())
	c := &conn{
		since:       time.Now(),
		svc:         s,
		id:          id,
		userID:      sess.User,
		subprotocol: sess.Subprotocol,
		kind:        kind,
		perms:       perms,
		ctx:         cctx,
		cancel:      ccancel,
		state:       stateDetached,
		lastRead:    closedChan, // no read loop of it ever ran here
		connected:   true,       // the first node raised the connected event
		connState:   sess.State,
		rel:         &reliable{seq: sess.Seq, reason: sess.Reason},
		movedFrom:   from,
	}
	c.adoptPresence(sess.Presence) // before the events its replay raises
	for _, m := range sess.Unacked {
		c.rel.unacked = append(c.rel.unacked, unackedMessage{seq: m.Seq, parts: [][]byte{m.Frame}, size: len(m.Frame), expires: m.Expires})
		c.rel.bytes += len(m.Frame)
		s.buffered(len(m.Frame))
	}
	groups := make(map[string]struct{}, len(sess.Groups))
	for _, g := range sess.Groups {
		groups[g] = struct{}{}
	}
	for g, st := range sess.GroupStates {
		if c.gstate == nil {
			c.gstate = make(map[string]groupState, len(sess.GroupStates))
		}
		c.gstate[g] = groupState{state: st.State, updatedAt: st.UpdatedAt, version: st.Version}
	}
	c.stateVersion = sess.StateVersion
	for _, g := range sess.StateSubs {
		if c.gsubs == nil {
			c.gsubs = make(map[string]*stateSubscription, len(sess.StateSubs))
		}
		c.gsubs[g] = &stateSubscription{ready: true}
	}
	var closed *Disconnect
	var stateGone []stateChange
	for {
		cl.mu.Lock()
		q := a.queue
		a.queue = nil
		if len(q) == 0 {
			// Registered under mu: a command now either was queued above or
			// finds the connection in the registry.
			delete(cl.arrivals, id)
			stateGone = c.keepGroupStateOf(groups)
			c.initialGroups = slices.Sorted(maps.Keys(groups))
			err := s.register(c, a.hub)
			if err == nil && !cl.namedBy(id) {
				cl.subscribe(connectionSubject(id)) // the registry's, until it leaves (hub.unregister)
			}
			cl.mu.Unlock()
			if err != nil {
				ccancel()
				c.rel.drop(s)
				return nil, err
			}
			break
		}
		cl.mu.Unlock()
		for _, qc := range q {
			if d := c.replay(qc, sess.Seen, groups); d != nil && closed == nil {
				closed = d
			}
		}
	}
	if owner, _ := ownerOf(id); owner == cl.node {
		cl.setMoved(id, "") // back home: this node answers for it again
	} else {
		cl.tellOwner(a.hub, id, cl.node)
	}
	c.adoptStreams(sess.Streams)
	// The removals of the groups it was taken out of while it arrived, and
	// its states again: a snapshot taken while it was between nodes had
	// them on neither.
	if changes := append(stateGone, c.heldGroupStates()...); len(changes) > 0 {
		c.stateMu.Lock()
		c.publishGroupState(changes)
		c.stateMu.Unlock()
	}
	c.mu.Lock()
	c.rel.timer = time.AfterFunc(s.cfg.RecoveryWindow, c.recoveryExpired) // until its transport resumes it
	c.mu.Unlock()
	if closed != nil {
		c.close(*closed)
		return nil, errClosedArriving
	}
	return c, nil
}

// replay applies a command queued while c was arriving, unless the owner
// applied it (seen). c is not registered yet: its groups are in groups.
// It returns the disconnect of a close that concerns c.
func (c *conn) replay(qc queuedCommand, seen map[string]uint64, groups map[string]struct{}) *Disconnect {
	cmd := qc.cmd
	if node, n, ok := parseCommandID(cmd.ID); ok && n <= seen[node] {
		return nil // the owner applied it: the session has it
	}
	if cmd.Op == opTakeover || cmd.Op == opHandover {
		return nil // another recovery's: this one won
	}
	if err := cmd.compile(); err != nil {
		return nil
	}
	_, inGroup := groups[cmd.Target]
	concerned := false
	switch cmd.Op {
	case opSendToAll, opCloseAll, opAddConnectionsToGroups, opRemoveConnectionsFromGroups:
		concerned = true
	case opSendToGroup, opCloseGroup:
		concerned = inGroup
	case opGroupStateUpdate:
		_, subscribed := c.gsubs[cmd.Target]
		concerned = inGroup && subscribed
	case opSendToUser, opCloseUser, opRemoveUserFromGroup, opRemoveUserFromAllGroups, opAddUserToGroup:
		concerned = cmd.Target == c.userID && c.userID != ""
	default:
		concerned = cmd.Target == c.id
	}
	if concerned && (slices.Contains(cmd.Excluded, c.id) || cmd.filter != nil && !cmd.filter.Match(arrivingInfo{c, groups})) {
		concerned = false
	}
	var r result
	if concerned {
		r = c.replayOn(cmd, groups)
	} else if routeOf(cmd.Op) == routeAsk {
		r = connectionNotFound(cmd.Op)
	}
	if qc.reply != nil {
		r.Node = c.svc.cluster.node
		answer, _ := json.Marshal(&r)
		qc.reply(answer)
	}
	if concerned && cmd.Op >= opCloseAll && cmd.Op <= opCloseConnection {
		d := DisconnectClosedByAppServer
		if cmd.Reason != "" {
			d.Reason = cmd.Reason
		}
		return &d
	}
	return nil
}

// replayOn applies a command that concerns c, arriving.
func (c *conn) replayOn(cmd *command, groups map[string]struct{}) result {
	s := c.svc
	// Changes the owner did not apply are the connection's own, made here:
	// presence events, which wait for its transport (startPresence).
	join := func(g string) error {
		_, in := groups[g]
		if !in && len(groups) >= s.cfg.MaxGroupsPerConnection {
			return ErrTooManyGroups
		}
		if !in {
			groups[g] = struct{}{}
			c.announce(g, true)
		}
		return nil
	}
	leave := func(g string) {
		if _, in := groups[g]; in {
			delete(groups, g)
			c.announce(g, false)
		}
	}
	switch cmd.Op {
	case opSendToAll, opSendToGroup, opSendToUser, opSendToConnection, opGroupStateUpdate:
		if !cmd.reaches(c.kind) {
			break
		}
		r := c.rel
		r.seq++
		var parts [][]byte
		if c.kind == kindJSONReliable {
			parts = reliableJSONFrame(appendJSONBody(cmd)[wsframe.Reserve:], r.seq)
		} else {
			parts = reliableProtobufFrame(appendProtobufData(cmd), r.seq)
		}
		frame := bytes.Join(parts, nil)
		r.unacked = append(r.unacked, unackedMessage{seq: r.seq, parts: [][]byte{frame}, size: len(frame), expires: cmd.ExpiresAt})
		r.bytes += len(frame)
		s.buffered(len(frame))
	case opAddConnectionToGroup:
		return result{Err: errCode(join(cmd.Group))}
	case opAddUserToGroup:
		return result{Err: errCode(join(cmd.Group))}
	case opAddConnectionsToGroups:
		for _, g := range cmd.Groups {
			_ = join(g)
		}
	case opRemoveConnectionFromGroup, opRemoveUserFromGroup:
		leave(cmd.Group)
	case opRemoveConnectionsFromGroups:
		for _, g := range cmd.Groups {
			leave(g)
		}
	case opRemoveConnectionFromAllGroups, opRemoveUserFromAllGroups:
		c.mu.Lock()
		c.announceGroupsLocked(groups, false)
		c.mu.Unlock()
		clear(groups)
	case opConnectionExists:
		return result{Found: true}
	case opGrantPermission, opRevokePermission, opCheckPermission:
		return execOnConn(c, cmd)
	}
	return result{}
}

// announce records a presence event of an arriving connection: not
// registered yet, its events wait for its transport (not started).
func (c *conn) announce(group string, joined bool) {
	c.mu.Lock()
	c.announceLocked(group, joined)
	c.mu.Unlock()
}

// arrivingInfo is what a filter sees of an arriving connection.
type arrivingInfo struct {
	c      *conn
	groups map[string]struct{}
}

func (i arrivingInfo) ConnectionID() string { return i.c.id }
func (i arrivingInfo) UserID() string       { return i.c.userID }
func (i arrivingInfo) Protocol() string     { return i.c.subprotocol }
func (i arrivingInfo) GroupCount() int      { return len(i.groups) }
func (i arrivingInfo) InGroup(g string) bool {
	_, ok := i.groups[g]
	return ok
}
