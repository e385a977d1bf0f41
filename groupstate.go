package pubsub

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// Group state (client spec §6.1, preview; JSON subprotocols). A member of a
// group may keep a state there (an object of strings); a member may
// subscribe to the group's state: it gets a groupStateSnapshot of every
// member's state after its subscribe's ack, then a groupStateUpdate at each
// change. State and subscriptions are the member's: leaving the group, by
// any path, ends both, and the subscribers see the state go.
//
// A connection's state lives with the connection, on its node; a snapshot
// asks every node (a survey, in a cluster), and an update is a command on
// the group's subject, which every node with members (so every node with
// subscribers) receives. A connection's changes are made and published in
// order under its stateMu, each with the next of its versions.
//
// A subscriber sees each change once, in order, after its snapshot. While
// the snapshot is taken, the updates for it are held (pending). A member's
// state is read for it under the member's stateMu, so with its update
// published; the snapshot reports each member's version, and of the
// updates held, those the snapshot has are dropped and, per connection,
// only the last goes out, after the snapshot. An update published before
// a state was read reaches the subscriber's node before the snapshot's
// answer does (on one node it is delivered as it is published; across
// nodes, a barrier after the survey waits for what the broker brought
// before).

// Bounds of a connection's group state (the state itself: protocol).
const (
	maxGroupStates             = 100 // groups in which one connection has a state
	maxGroupStateSubscriptions = 100 // groups whose state one connection subscribes to
	// maxPendingGroupStates bounds the members whose update (the last of
	// each) is held for one subscription while its snapshot is taken; past
	// it the client is a slow client.
	maxPendingGroupStates = 1000
)

// groupState is a connection's state in one group: nil state is a state
// cleared, kept for its version while the connection is in the group. The
// map is never changed once set: snapshots share it.
type groupState struct {
	state     map[string]string
	updatedAt int64 // Unix milliseconds
	version   uint64
}

// stateSubscription is a connection's subscription to a group's state.
type stateSubscription struct {
	ready    bool                      // updates go out; else they wait in pending
	pending  []protocol.GroupStateItem // updates held until the snapshot is queued
	snapshot []byte                    // the snapshot frame, from the subscribe to its ack
	versions map[string]uint64         // the snapshot's, per connection, until pending goes out
}

// stateChange is an update to publish: item is the connection's state in
// group now.
type stateChange struct {
	group string
	item  protocol.GroupStateItem
}

func isGroupStateRequest(t protocol.RequestType) bool {
	return t == protocol.SetGroupState || t == protocol.SubscribeGroupState || t == protocol.UnsubscribeGroupState
}

// groupStateRequest answers a group state request, on the read loop: the
// ack, then, for a subscribe, the snapshot.
func (c *conn) groupStateRequest(req protocol.Request) {
	if req.HasAckID && c.acks.done(req.AckID) {
		// Not done again, but a subscriber asking again may have lost its
		// snapshot with a transport: it gets a new one.
		again := req.Type == protocol.SubscribeGroupState && c.subscribed(req.Group)
		if again {
			errName, _ := c.subscribeGroupState(req.Group)
			again = errName == ""
		}
		c.sendAck(req.AckID, protocol.AckDuplicate, fmt.Sprintf("Message with ack-id: %d has been processed", req.AckID))
		if again {
			c.sendGroupStateSnapshot(req.Group)
		}
		return
	}
	var errName, errMessage string
	switch req.Type {
	case protocol.SetGroupState:
		errName, errMessage = c.setGroupState(req.Group, req.State)
	case protocol.SubscribeGroupState:
		errName, errMessage = c.subscribeGroupState(req.Group)
	case protocol.UnsubscribeGroupState:
		c.unsubscribeGroupState(req.Group)
	}
	if req.HasAckID {
		if errName == "" {
			c.acks.add(req.AckID)
		}
		c.sendAck(req.AckID, errName, errMessage)
	}
	if req.Type == protocol.SubscribeGroupState && errName == "" {
		c.sendGroupStateSnapshot(req.Group)
	}
}

// stateRefusalLocked is why c may not set or subscribe to group's state
// ("": it may), under c.mu.
func (c *conn) stateRefusalLocked(group string) (errName, errMessage string) {
	if c.state >= stateClosing {
		return protocol.AckInternalServerError, "The connection is closing."
	}
	if _, in := c.groups[group]; !in {
		return protocol.AckForbidden, fmt.Sprintf("The connection is not in group '%s': group state is for its members.", group)
	}
	return "", ""
}

// setGroupState sets (state nil: clears) c's state in group, and tells the
// group's subscribers.
func (c *conn) setGroupState(group string, state map[string]string) (errName, errMessage string) {
	if err := protocol.ValidateGroupState(state); err != nil {
		return protocol.AckBadRequest, fmt.Sprintf("Invalid group state: %v.", err)
	}
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.mu.Lock()
	if errName, errMessage := c.stateRefusalLocked(group); errName != "" {
		c.mu.Unlock()
		return errName, errMessage
	}
	had := c.gstate[group].state != nil
	switch {
	case state == nil && !had:
		c.mu.Unlock()
		return "", "" // nothing to clear: nothing changes
	case state != nil && !had && c.liveGroupStatesLocked() >= maxGroupStates:
		c.mu.Unlock()
		return protocol.AckBadRequest, fmt.Sprintf("The connection has a state in %d groups, the most it may.", maxGroupStates)
	}
	if c.gstate == nil {
		c.gstate = make(map[string]groupState, 1)
	}
	c.stateVersion++
	st := groupState{state: state, updatedAt: time.Now().UnixMilli(), version: c.stateVersion}
	c.gstate[group] = st
	c.mu.Unlock()
	c.publishGroupState([]stateChange{{group, c.itemOf(st)}})
	return "", ""
}

func (c *conn) liveGroupStatesLocked() int {
	n := 0
	for _, st := range c.gstate {
		if st.state != nil {
			n++
		}
	}
	return n
}

func (c *conn) itemOf(st groupState) protocol.GroupStateItem {
	return protocol.GroupStateItem{ConnectionID: c.id, UserID: c.userID, State: st.state, UpdatedAt: st.updatedAt, Version: st.version}
}

// heldGroupStates returns c's states, as the updates that tell them, in
// group order.
func (c *conn) heldGroupStates() []stateChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []stateChange
	for _, g := range slices.Sorted(maps.Keys(c.gstate)) {
		if st := c.gstate[g]; st.state != nil {
			out = append(out, stateChange{g, c.itemOf(st)})
		}
	}
	return out
}

// publishGroupState sends updates to the groups' subscribers on every
// node; the caller holds c.stateMu.
func (c *conn) publishGroupState(changes []stateChange) {
	c.svc.publishGroupState(c.hub.name, changes)
}

// publishGroupState sends updates to groups' subscribers on every node.
// Unlike a client's send it is made during Shutdown too: a connection
// closed then leaves its groups' state.
func (s *Service) publishGroupState(hub string, changes []stateChange) {
	for _, ch := range changes {
		cmd := &command{Op: opGroupStateUpdate, Hub: hub, Target: ch.group, Items: []protocol.GroupStateItem{ch.item}}
		if s.cluster != nil {
			s.cluster.publish(cmd)
			continue
		}
		s.exec(cmd)
	}
}

// leaveGroupStateLocked ends what c has of group's state as it leaves the
// group, under c.mu: its subscription, and its state, whose removal it
// returns for the caller to publish (holding c.stateMu).
func (c *conn) leaveGroupStateLocked(group string) []stateChange {
	if _, ok := c.gsubs[group]; ok {
		delete(c.gsubs, group)
		c.hub.stateSubs.remove(group, c)
	}
	st, ok := c.gstate[group]
	delete(c.gstate, group)
	if !ok || st.state == nil {
		return nil
	}
	return []stateChange{c.removedLocked(group)}
}

// removedLocked is the change of c's state in group going away.
func (c *conn) removedLocked(group string) stateChange {
	c.stateVersion++
	return stateChange{group, protocol.GroupStateItem{ConnectionID: c.id, UserID: c.userID, UpdatedAt: time.Now().UnixMilli(), Version: c.stateVersion}}
}

// leaveAllGroupStateLocked is leaveGroupStateLocked for every group, as
// c leaves them all or its session ends.
func (c *conn) leaveAllGroupStateLocked() []stateChange {
	for g := range c.gsubs {
		c.hub.stateSubs.remove(g, c)
	}
	c.gsubs = nil
	var gone []stateChange
	for _, g := range slices.Sorted(maps.Keys(c.gstate)) {
		if c.gstate[g].state != nil {
			gone = append(gone, c.removedLocked(g))
		}
	}
	c.gstate = nil
	return gone
}

// keepGroupStateOf drops c's state and subscriptions in groups it is no
// longer in, as it arrives from another node (not registered yet: no
// index, no lock), and returns the removals to publish.
func (c *conn) keepGroupStateOf(groups map[string]struct{}) []stateChange {
	for g := range c.gsubs {
		if _, in := groups[g]; !in {
			delete(c.gsubs, g)
		}
	}
	var gone []stateChange
	for _, g := range slices.Sorted(maps.Keys(c.gstate)) {
		if _, in := groups[g]; !in {
			if c.gstate[g].state != nil {
				gone = append(gone, c.removedLocked(g))
			}
			delete(c.gstate, g)
		}
	}
	return gone
}

// registerGroupState indexes the state subscriptions c brought from
// another node, as it is registered here.
func (c *conn) registerGroupState() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for g := range c.gsubs {
		if _, in := c.groups[g]; in {
			c.hub.stateSubs.add(g, c)
		} else {
			delete(c.gsubs, g) // its join failed: closing
		}
	}
}

func (c *conn) subscribed(group string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.gsubs[group]
	return ok
}

// subscribeGroupState subscribes c to group's state (again: a new
// snapshot) and takes the snapshot, which sendGroupStateSnapshot queues
// after the ack. Updates wait meanwhile.
func (c *conn) subscribeGroupState(group string) (errName, errMessage string) {
	c.mu.Lock()
	if errName, errMessage := c.stateRefusalLocked(group); errName != "" {
		c.mu.Unlock()
		return errName, errMessage
	}
	sub, had := c.gsubs[group]
	if !had {
		if len(c.gsubs) >= maxGroupStateSubscriptions {
			c.mu.Unlock()
			return protocol.AckBadRequest, fmt.Sprintf("The connection subscribes to the state of %d groups, the most it may.", maxGroupStateSubscriptions)
		}
		if c.gsubs == nil {
			c.gsubs = make(map[string]*stateSubscription, 1)
		}
		sub = &stateSubscription{}
		c.gsubs[group] = sub
		c.hub.stateSubs.add(group, c)
	}
	sub.ready = false
	c.mu.Unlock()

	items, err := c.svc.groupStateItems(c.ctx, c.hub.name, group)
	if err != nil {
		if !had {
			c.mu.Lock()
			if c.gsubs[group] == sub {
				delete(c.gsubs, group)
				c.hub.stateSubs.remove(group, c)
			}
			c.mu.Unlock()
		} else {
			c.readyGroupState(group) // subscribed as before: what came meanwhile goes out
		}
		return protocol.AckInternalServerError, fmt.Sprintf("The group's state could not be read: %v", err)
	}
	versions := make(map[string]uint64, len(items))
	live := make([]protocol.GroupStateItem, 0, len(items))
	size := 64 + len(group)
	for _, it := range items {
		versions[it.ConnectionID] = it.Version
		if it.State == nil {
			continue // cleared: in no snapshot
		}
		live = append(live, it)
		size += 64 + len(it.ConnectionID) + len(it.UserID)
		for k, v := range it.State {
			size += 6 + len(k) + len(v)
		}
	}
	frame := jsonFrame(protocol.AppendGroupStateSnapshot(wsframe.Begin(size), group, live))
	c.mu.Lock()
	if c.gsubs[group] == sub { // else c left the group meanwhile
		sub.snapshot, sub.versions = frame, versions
	}
	c.mu.Unlock()
	return "", ""
}

// sendGroupStateSnapshot queues the snapshot a subscribe took, then the
// updates held meanwhile that it does not have.
func (c *conn) sendGroupStateSnapshot(group string) {
	c.mu.Lock()
	sub := c.gsubs[group]
	if sub == nil || sub.snapshot == nil {
		c.mu.Unlock()
		return
	}
	after, _ := c.enqueueLocked(0, [][]byte{sub.snapshot}, nil, -1)
	sub.snapshot = nil
	after.merge(c.readyLocked(group, sub))
	c.mu.Unlock()
	after.run(c)
}

// readyGroupState delivers the updates held for group's subscription, and
// lets the next ones go out.
func (c *conn) readyGroupState(group string) {
	c.mu.Lock()
	var after afterUnlock
	if sub := c.gsubs[group]; sub != nil {
		after = c.readyLocked(group, sub)
	}
	c.mu.Unlock()
	after.run(c)
}

// readyLocked delivers, of the updates held, the last of each connection
// unless the snapshot has it (its version), in the order they came.
func (c *conn) readyLocked(group string, sub *stateSubscription) (after afterUnlock) {
	last := make(map[string]int, len(sub.pending))
	for i, it := range sub.pending {
		last[it.ConnectionID] = i
	}
	for i, it := range sub.pending {
		if last[it.ConnectionID] != i {
			continue // a later one of the same connection follows
		}
		if v, ok := sub.versions[it.ConnectionID]; ok && it.Version <= v {
			continue // the snapshot has it, or newer
		}
		d := &delivery{svc: c.svc, cmd: &command{Op: opGroupStateUpdate, Target: group, Items: []protocol.GroupStateItem{it}}}
		d.json()
		after.merge(c.deliverGroupStateLocked(d))
		d.settle()
	}
	sub.pending, sub.versions, sub.ready = nil, nil, true
	return after
}

func (c *conn) unsubscribeGroupState(group string) {
	c.mu.Lock()
	if _, ok := c.gsubs[group]; ok {
		delete(c.gsubs, group)
		c.hub.stateSubs.remove(group, c)
	}
	c.mu.Unlock()
}

// groupStateItems returns the state of group's members on every node,
// cleared ones included (for their versions), ordered by connection id. In
// a cluster, what the broker brought this node before the answers is
// applied before it returns: the updates published before a node answered
// are held for the subscriber, not on their way.
func (s *Service) groupStateItems(ctx context.Context, hub, group string) ([]protocol.GroupStateItem, error) {
	r, err := s.run(ctx, &command{Op: opGroupStateSnapshot, Hub: hub, Target: group})
	if err == nil {
		err = r.err()
	}
	if err == nil && s.cluster != nil {
		err = s.cluster.barrier(ctx)
	}
	return r.Items, err
}

// groupStateItems returns the state of group's members on this node. h
// may be nil: a hub with no connection here. Each is read under its
// stateMu: a change is read with its update published, so that a
// subscriber that gets the update holds it, and drops it (by version).
func (h *hubState) groupStateItems(group string) []protocol.GroupStateItem {
	if h == nil {
		return nil
	}
	var out []protocol.GroupStateItem
	for _, c := range h.groups.members(group) {
		c.stateMu.Lock()
		c.mu.Lock()
		st, ok := c.gstate[group]
		ok = ok && c.state < stateClosing
		c.mu.Unlock()
		c.stateMu.Unlock()
		if ok {
			out = append(out, c.itemOf(st))
		}
	}
	sortGroupStateItems(out)
	return out
}

func sortGroupStateItems(items []protocol.GroupStateItem) {
	slices.SortFunc(items, func(a, b protocol.GroupStateItem) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
}

// fanOutGroupState delivers an update to the group's subscribers on this
// node, encoded once.
func (s *Service) fanOutGroupState(h *hubState, cmd *command) {
	d := delivery{svc: s, cmd: cmd}
	defer d.settle()
	for _, c := range h.stateSubs.members(cmd.Target) {
		c.deliverGroupState(&d)
	}
}

// deliverGroupState queues an update for c, or holds it while c's
// snapshot is being taken.
func (c *conn) deliverGroupState(d *delivery) {
	d.json()
	c.mu.Lock()
	var after afterUnlock
	switch sub := c.gsubs[d.cmd.Target]; {
	case sub == nil: // unsubscribed since the fan-out's snapshot of the set
	case !sub.ready:
		// Only the last update of each member is held: readyLocked sends
		// no other, and a member changing fast makes no subscriber slow.
		for _, it := range d.cmd.Items {
			held := len(sub.pending)
			sub.pending = slices.DeleteFunc(sub.pending, func(p protocol.GroupStateItem) bool { return p.ConnectionID == it.ConnectionID })
			if held == len(sub.pending) && held >= maxPendingGroupStates {
				if c.state < stateClosing { // once: more may come until it is released
					c.svc.slowClients.Add(1)
					c.svc.log.Warn("closing a slow client: group state updates pile up behind its snapshot", "hub", c.hub.name, "connectionId", c.id)
					after = c.closeLocked(DisconnectSlowClient, true)
				}
				break
			}
			sub.pending = append(sub.pending, it)
		}
	default:
		after = c.deliverGroupStateLocked(d)
	}
	c.mu.Unlock()
	after.run(c)
}

// deliverGroupStateLocked queues an update, under c.mu: a reliable
// receiver's gets the next sequence id and is kept for replay, as a
// message is.
func (c *conn) deliverGroupStateLocked(d *delivery) (after afterUnlock) {
	switch c.kind {
	case kindJSON:
		var queued bool
		after, queued = c.enqueueLocked(0, [][]byte{d.jsonFrame}, d.shares[encJSON], 0)
		d.take(encJSON, queued)
	case kindJSONReliable:
		var refs int64
		refs, after = c.deliverReliableLocked(0, d.shares[encJSON], func(seq uint64) [][]byte { return reliableJSONFrame(d.jsonBody, seq) })
		d.held[encJSON] += refs
	}
	return after
}
