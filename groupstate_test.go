package pubsub_test

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// Group state over real sockets: JSON clients written by hand, as the
// official JS client 1.1.0 writes these frames but has no API for them.

// member is a JSON client of hub "chat" and its connection id. A
// json.reliable member's updates must carry the next sequence id.
type member struct {
	*wstest.Client
	id       string
	reliable bool
	seq      float64 // the last sequence id it got
}

func (e *testEnv) member(user string, groups ...string) *member {
	e.t.Helper()
	c, id := wstest.DialJSON(e.t, e.url(pubsub.TokenOptions{UserID: user, Roles: allRoles, Groups: groups}))
	return &member{Client: c, id: id}
}

// stateFrame reads m's next frame, which must be a groupStateSnapshot or
// groupStateUpdate (typ) of group, and returns its items.
func (m *member) stateFrame(t *testing.T, typ, group string) []map[string]any {
	t.Helper()
	f := m.NextJSON()
	if f["type"] != typ || f["group"] != group {
		t.Fatalf("want a %s of %s, got %v", typ, group, f)
	}
	seq, hasSeq := f["sequenceId"]
	switch {
	case typ == "groupStateUpdate" && m.reliable:
		if seq != m.seq+1 {
			t.Fatalf("update with sequenceId %v after %v: %v", seq, m.seq, f)
		}
		m.seq++
	case hasSeq:
		t.Fatalf("a sequenceId where none belongs: %v", f)
	}
	raw, ok := f["items"].([]any)
	if !ok {
		t.Fatalf("items not an array: %v", f)
	}
	items := make([]map[string]any, len(raw))
	for i, it := range raw {
		items[i] = it.(map[string]any)
	}
	return items
}

// update reads m's next frame, a groupStateUpdate of group with one item,
// and checks the item: connection, user ("" : none) and state (nil: none).
func (m *member) update(t *testing.T, group, connID, user string, state map[string]string) map[string]any {
	t.Helper()
	items := m.stateFrame(t, "groupStateUpdate", group)
	if len(items) != 1 {
		t.Fatalf("update with %d items: %v", len(items), items)
	}
	checkItem(t, items[0], connID, user, state)
	return items[0]
}

// checkItem checks a state item; updatedAt must be a time of this test.
func checkItem(t *testing.T, it map[string]any, connID, user string, state map[string]string) {
	t.Helper()
	if it["connectionId"] != connID {
		t.Fatalf("item %v, want connection %s", it, connID)
	}
	if u, has := it["userId"]; user == "" && has || user != "" && u != user {
		t.Fatalf("item %v, want user %q", it, user)
	}
	got, has := it["state"].(map[string]any)
	if state == nil && it["state"] != nil || state != nil && !has {
		t.Fatalf("item %v, want state %v", it, state)
	}
	if state != nil {
		want := map[string]any{}
		for k, v := range state {
			want[k] = v
		}
		if !maps.Equal(got, want) {
			t.Fatalf("item %v, want state %v", it, state)
		}
	}
	at, _ := it["updatedAt"].(float64)
	if now := float64(time.Now().UnixMilli()); at < now-60_000 || at > now+1000 {
		t.Fatalf("item %v: updatedAt is not now", it)
	}
	fields := 2 // connectionId, updatedAt
	if user != "" {
		fields++
	}
	if state != nil {
		fields++
	}
	if len(it) != fields {
		t.Fatalf("item %v has fields it should not", it)
	}
}

func (m *member) expect(t *testing.T, want string) {
	t.Helper()
	if f := m.Next(); string(f.Data) != want {
		t.Fatalf("got  %s\nwant %s", f.Data, want)
	}
}

// Members set their state; a subscriber gets a snapshot after its ack, then
// an update per change; others get nothing.
func TestGroupStateSnapshotAndUpdates(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	alice := e.member("alice", "room")
	bob := e.member("bob", "room")
	anon := e.member("", "room")

	bob.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	bob.ExpectAck(1, "")
	bob.expect(t, `{"type":"groupStateSnapshot","group":"room","items":[]}`)

	alice.Send(`{"type":"setGroupState","group":"room","state":{"activity":"typing"},"ackId":1}`)
	alice.ExpectAck(1, "")
	aliceTyping := bob.update(t, "room", alice.id, "alice", map[string]string{"activity": "typing"})
	anon.Send(`{"type":"setGroupState","group":"room","state":{"x":"1","y":"é\"\n"}}`) // no ackId: done all the same
	anonState := bob.update(t, "room", anon.id, "", map[string]string{"x": "1", "y": "é\"\n"})

	// A member who joins and subscribes sees both, ordered by connection id.
	carol := e.member("carol")
	carol.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	carol.ExpectAck(1, "")
	carol.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`)
	carol.ExpectAck(2, "")
	snap := carol.stateFrame(t, "groupStateSnapshot", "room")
	want := []map[string]any{aliceTyping, anonState}
	if alice.id > anon.id {
		want = []map[string]any{anonState, aliceTyping}
	}
	if fmt.Sprint(snap) != fmt.Sprint(want) {
		t.Fatalf("snapshot %v, want %v", snap, want)
	}

	// null clears: the item has no state. Clearing what is not set changes
	// nothing and tells nobody.
	alice.Send(`{"type":"setGroupState","group":"room","state":null,"ackId":2}`)
	alice.ExpectAck(2, "")
	for _, s := range []*member{bob, carol} {
		s.update(t, "room", alice.id, "alice", nil)
	}
	alice.Send(`{"type":"setGroupState","group":"room","ackId":3}`)
	alice.ExpectAck(3, "")

	// Unsubscribed, bob hears no more; carol does.
	bob.Send(`{"type":"unsubscribeGroupState","group":"room","ackId":2}`)
	bob.ExpectAck(2, "")
	bob.Send(`{"type":"unsubscribeGroupState","group":"room","ackId":3}`) // not subscribed: done
	bob.ExpectAck(3, "")
	alice.Send(`{"type":"setGroupState","group":"room","state":{"activity":"away"},"ackId":4}`)
	alice.ExpectAck(4, "")
	carol.update(t, "room", alice.id, "alice", map[string]string{"activity": "away"})
	// A subscribe without ackId still gets its snapshot.
	anon.Send(`{"type":"subscribeGroupState","group":"room"}`)
	if items := anon.stateFrame(t, "groupStateSnapshot", "room"); len(items) != 2 {
		t.Fatalf("snapshot %v", items)
	}
	for _, m := range []*member{alice, bob, carol, anon} {
		e.barrier(m.Client, m.id) // nothing else came
	}
}

// Only a member sets a state in, or subscribes to the state of, a group.
func TestGroupStateIsForMembers(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	out := e.member("out")
	out.Send(`{"type":"setGroupState","group":"room","state":{"a":"b"},"ackId":1}`)
	out.expect(t, `{"type":"ack","ackId":1,"success":false,"error":{"name":"Forbidden","message":"The connection is not in group 'room': group state is for its members."}}`)
	out.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`)
	out.expect(t, `{"type":"ack","ackId":2,"success":false,"error":{"name":"Forbidden","message":"The connection is not in group 'room': group state is for its members."}}`)
	out.Send(`{"type":"subscribeGroupState","group":"room"}`) // refused silently: no snapshot
	// A refused ackId is free for a retry.
	out.Send(`{"type":"joinGroup","group":"room","ackId":3}`)
	out.ExpectAck(3, "")
	out.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`)
	out.ExpectAck(2, "")
	out.expect(t, `{"type":"groupStateSnapshot","group":"room","items":[]}`)
	e.barrier(out.Client, out.id)
}

// A member's state leaves with it, whichever way it leaves the group or
// ends, and subscribers see an item without state; a subscriber that
// leaves the group stops hearing.
func TestGroupStateLeavesWithTheMember(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := t.Context()
	sub := e.member("sub", "room")
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	sub.ExpectAck(1, "")
	sub.stateFrame(t, "groupStateSnapshot", "room")

	leave := func(name string, do func(m *member)) {
		t.Run(name, func(t *testing.T) {
			m := e.member("u-"+name, "room", "other")
			m.Send(`{"type":"setGroupState","group":"room","state":{"s":"1"},"ackId":1}`)
			m.ExpectAck(1, "")
			sub.update(t, "room", m.id, "u-"+name, map[string]string{"s": "1"})
			do(m)
			sub.update(t, "room", m.id, "u-"+name, nil)
		})
	}
	leave("leaveGroup", func(m *member) {
		m.Send(`{"type":"leaveGroup","group":"room","ackId":2}`)
		m.ExpectAck(2, "")
		// Back in the group, it has no state until it sets one.
		m.Send(`{"type":"joinGroup","group":"room","ackId":3}`)
		m.ExpectAck(3, "")
	})
	leave("RemoveConnectionFromGroup", func(m *member) { must(t, e.hub.RemoveConnectionFromGroup(ctx, m.id, "room")) })
	leave("RemoveUserFromGroup", func(m *member) { must(t, e.hub.RemoveUserFromGroup(ctx, "u-RemoveUserFromGroup", "room")) })
	leave("RemoveConnectionFromAllGroups", func(m *member) { must(t, e.hub.RemoveConnectionFromAllGroups(ctx, m.id)) })
	leave("RemoveUserFromAllGroups", func(m *member) { must(t, e.hub.RemoveUserFromAllGroups(ctx, "u-RemoveUserFromAllGroups")) })
	leave("RemoveConnectionsFromGroups", func(m *member) {
		must(t, e.hub.RemoveConnectionsFromGroups(ctx, "userId eq 'u-RemoveConnectionsFromGroups'", "room"))
	})
	leave("CloseConnection", func(m *member) { must(t, e.hub.CloseConnection(ctx, m.id, "")) })
	leave("client closes", func(m *member) { m.Conn.WriteClose(1000, nil) })
	// A state in another group is untouched by leaving this one.
	other := e.member("o", "room", "other")
	other.Send(`{"type":"subscribeGroupState","group":"other","ackId":1}`)
	other.ExpectAck(1, "")
	other.stateFrame(t, "groupStateSnapshot", "other")
	other.Send(`{"type":"setGroupState","group":"other","state":{"k":"v"},"ackId":2}`)
	// A subscriber's own change reaches it too; on one node, before its ack.
	other.update(t, "other", other.id, "o", map[string]string{"k": "v"})
	other.ExpectAck(2, "")
	must(t, e.hub.RemoveConnectionFromGroup(ctx, other.id, "room"))
	e.barrier(other.Client, other.id)
	if items, _ := snapshotOf(t, e, "other"); len(items) != 1 || items[0]["connectionId"] != other.id {
		t.Fatalf("other's state %v", items)
	}
	// None of the snapshot's earlier members has a state left in room.
	if items, _ := snapshotOf(t, e, "room"); len(items) != 0 {
		t.Fatalf("room's state after everyone left %v", items)
	}

	// The subscriber taken out of the group is unsubscribed.
	must(t, e.hub.RemoveConnectionFromGroup(ctx, sub.id, "room"))
	m := e.member("late", "room")
	m.Send(`{"type":"setGroupState","group":"room","state":{"s":"2"},"ackId":1}`)
	m.ExpectAck(1, "")
	e.barrier(sub.Client, sub.id)
	must(t, e.hub.AddConnectionToGroup(ctx, sub.id, "room")) // joining again does not subscribe again
	m.Send(`{"type":"setGroupState","group":"room","state":{"s":"3"},"ackId":2}`)
	m.ExpectAck(2, "")
	e.barrier(sub.Client, sub.id)
}

// snapshotOf subscribes a new member of group and returns the snapshot.
func snapshotOf(t *testing.T, e *testEnv, group string) ([]map[string]any, *member) {
	t.Helper()
	m := e.member("snap", group)
	m.Send(`{"type":"subscribeGroupState","group":` + quote(group) + `,"ackId":1}`)
	m.ExpectAck(1, "")
	return m.stateFrame(t, "groupStateSnapshot", group), m
}

// Bounds are ack errors, the connection kept; a malformed state is an
// invalid message.
func TestGroupStateBounds(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	groups := make([]string, 101)
	for i := range groups {
		groups[i] = "g" + itoa(i)
	}
	m := e.member("m", groups...)
	badRequest := func(ack int, frame, msg string) {
		t.Helper()
		m.Send(frame)
		m.expect(t, `{"type":"ack","ackId":`+itoa(ack)+`,"success":false,"error":{"name":"BadRequest","message":`+quote(msg)+`}}`)
	}
	big := strings.Repeat("v", 1024)
	badRequest(1, `{"type":"setGroupState","group":"g0","state":{"k":"`+big+`v"},"ackId":1}`, `Invalid group state: the state value of "k" is longer than 1024 bytes.`)
	badRequest(2, `{"type":"setGroupState","group":"g0","state":{"`+strings.Repeat("k", 257)+`":""},"ackId":2}`, "Invalid group state: a state key is longer than 256 bytes.")
	badRequest(3, `{"type":"setGroupState","group":"g0","state":{"":"v"},"ackId":3}`, "Invalid group state: a state key must not be empty.")
	badRequest(4, `{"type":"setGroupState","group":"g0","state":{"a":"`+big+`","b":"`+big+`","c":"`+big+`","d":"`+big+`"},"ackId":4}`, "Invalid group state: the state is larger than 4096 bytes.")
	// 4 KiB in all is within bounds.
	m.Send(`{"type":"setGroupState","group":"g0","state":{"a":"` + big[:1023] + `","b":"` + big[:1023] + `","c":"` + big[:1023] + `","d":"` + big[:1023] + `"},"ackId":5}`)
	m.ExpectAck(5, "")

	// A state in 100 groups, and 100 subscriptions, at most.
	for i := 1; i < 100; i++ {
		m.Send(`{"type":"setGroupState","group":"g` + itoa(i) + `","state":{"i":"` + itoa(i) + `"},"ackId":` + itoa(100+i) + `}`)
		m.ExpectAck(100+i, "")
	}
	badRequest(200, `{"type":"setGroupState","group":"g100","state":{"i":"100"},"ackId":200}`, "The connection has a state in 100 groups, the most it may.")
	m.Send(`{"type":"setGroupState","group":"g99","state":{"i":"again"},"ackId":201}`) // a group it has a state in
	m.ExpectAck(201, "")
	m.Send(`{"type":"setGroupState","group":"g99","state":null,"ackId":202}`)
	m.ExpectAck(202, "")
	m.Send(`{"type":"setGroupState","group":"g100","state":{"i":"100"},"ackId":203}`) // one freed
	m.ExpectAck(203, "")
	for i := 0; i < 100; i++ {
		m.Send(`{"type":"subscribeGroupState","group":"g` + itoa(i) + `","ackId":` + itoa(300+i) + `}`)
		m.ExpectAck(300+i, "")
		m.stateFrame(t, "groupStateSnapshot", "g"+itoa(i))
	}
	badRequest(400, `{"type":"subscribeGroupState","group":"g100","ackId":400}`, "The connection subscribes to the state of 100 groups, the most it may.")
	m.Send(`{"type":"subscribeGroupState","group":"g0","ackId":401}`) // subscribed already: a new snapshot
	m.ExpectAck(401, "")
	if items := m.stateFrame(t, "groupStateSnapshot", "g0"); len(items) != 1 {
		t.Fatalf("snapshot %v", items)
	}
	e.barrier(m.Client, m.id)

	for name, frame := range map[string]string{
		"state a string":       `{"type":"setGroupState","group":"g","state":"typing"}`,
		"a value not a string": `{"type":"setGroupState","group":"g","state":{"a":1}}`,
		"a key twice":          `{"type":"setGroupState","group":"g","state":{"a":"1","a":"2"}}`,
		"no group":             `{"type":"subscribeGroupState","ackId":1}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
			c.Send(frame)
			if info, _ := c.ExpectClose(); info.Code != 1007 {
				t.Fatalf("close %+v, want 1007", info)
			}
		})
	}
}

// A subscribe repeated with its ackId is a Duplicate, and the subscriber,
// which may have lost the first snapshot, gets a new one; a repeated set
// is not done again.
func TestGroupStateDuplicateAckIDs(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	sub := e.member("sub", "room")
	m := e.member("m", "room")
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":7}`)
	sub.ExpectAck(7, "")
	sub.stateFrame(t, "groupStateSnapshot", "room")
	m.Send(`{"type":"setGroupState","group":"room","state":{"n":"1"},"ackId":1}`)
	m.ExpectAck(1, "")
	sub.update(t, "room", m.id, "m", map[string]string{"n": "1"})
	m.Send(`{"type":"setGroupState","group":"room","state":{"n":"2"},"ackId":1}`)
	m.ExpectAck(1, "Duplicate")
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":7}`)
	sub.ExpectAck(7, "Duplicate")
	items := sub.stateFrame(t, "groupStateSnapshot", "room")
	if len(items) != 1 {
		t.Fatalf("snapshot %v", items)
	}
	checkItem(t, items[0], m.id, "m", map[string]string{"n": "1"}) // the duplicate set was not done
	// Unsubscribed, a duplicate subscribe is only a Duplicate.
	sub.Send(`{"type":"unsubscribeGroupState","group":"room","ackId":8}`)
	sub.ExpectAck(8, "")
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":7}`)
	sub.ExpectAck(7, "Duplicate")
	e.barrier(sub.Client, sub.id)
	e.barrier(m.Client, m.id)
}

// Whatever the timing, a subscriber never sees a snapshot older than an
// update it already got, nor an update older than its snapshot: a member's
// counter, read from the snapshot and then from each update, never goes
// back.
func TestGroupStateSnapshotRacesUpdates(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	writer := e.member("w", "room")
	sub := e.member("s", "room")
	const n = 400
	go func() {
		for i := 1; i <= n; i++ {
			_ = writer.Conn.WriteString(`{"type":"setGroupState","group":"room","state":{"n":"` + strconv.Itoa(i) + `"}}`)
		}
		_ = writer.Conn.WriteString(`{"type":"ping"}`)
	}()
	counter := func(it map[string]any) int {
		s, _ := it["state"].(map[string]any)
		v, _ := strconv.Atoi(fmt.Sprint(s["n"]))
		return v
	}
	last, round := 0, 0
	for last < n {
		round++
		sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":` + itoa(round) + `}`)
		for {
			f := sub.NextJSON()
			if f["type"] == "groupStateUpdate" {
				continue // the previous subscription's, ahead of the ack
			}
			if f["type"] != "ack" || f["ackId"] != float64(round) || f["success"] != true {
				t.Fatalf("round %d: %v", round, f)
			}
			break
		}
		seen := 0
		if items := sub.stateFrame(t, "groupStateSnapshot", "room"); len(items) == 1 {
			seen = counter(items[0])
		}
		if seen < last {
			t.Fatalf("round %d: snapshot at %d after an update at %d", round, seen, last)
		}
		last = seen
		for i := 0; i < 5 && last < n; i++ {
			items := sub.stateFrame(t, "groupStateUpdate", "room")
			if v := counter(items[0]); v <= last {
				t.Fatalf("round %d: update at %d after %d", round, v, last)
			} else {
				last = v
			}
		}
		sub.Send(`{"type":"unsubscribeGroupState","group":"room","ackId":` + itoa(1000+round) + `}`)
		for {
			f := sub.NextJSON()
			if f["type"] == "ack" && f["ackId"] == float64(1000+round) {
				break
			}
			if v := counter(f["items"].([]any)[0].(map[string]any)); v < last {
				t.Fatalf("round %d: update at %d after %d", round, v, last)
			} else {
				last = v
			}
		}
	}
	if round < 2 {
		t.Logf("the writer was done in %d rounds", round)
	}
}

// On json.reliable, updates are in the sequence of messages and replayed
// after a recovery; the snapshot is not. The session keeps its state and
// subscriptions between transports, and its state leaves when it ends.
func TestGroupStateReliable(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := t.Context()
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Roles: allRoles, Groups: []string{"room"}}))
	c := wstest.Dial(t, u, nil, reliableJSON)
	hello := c.NextJSON()
	r := &member{Client: c, id: hello["connectionId"].(string), reliable: true}
	token := hello["reconnectionToken"].(string)
	w := e.member("w", "room")
	message := func(data string) {
		t.Helper()
		f := r.NextJSON()
		if f["type"] != "message" || f["data"] != data || f["sequenceId"] != r.seq+1 {
			t.Fatalf("want message %q with sequenceId %v, got %v", data, r.seq+1, f)
		}
		r.seq++
	}

	r.Send(`{"type":"setGroupState","group":"room","state":{"who":"r"},"ackId":1}`)
	r.ExpectAck(1, "")
	r.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`)
	r.ExpectAck(2, "")
	if items := r.stateFrame(t, "groupStateSnapshot", "room"); len(items) != 1 {
		t.Fatalf("snapshot %v", items)
	}
	must(t, e.hub.SendToUser(ctx, "r", pubsub.TextMessage("m1")))
	message("m1")
	w.Send(`{"type":"setGroupState","group":"room","state":{"n":"1"},"ackId":1}`)
	w.ExpectAck(1, "")
	r.update(t, "room", w.id, "w", map[string]string{"n": "1"}) // sequenceId 2
	r.Send(`{"type":"sequenceAck","sequenceId":1}`)
	r.Send(`{"type":"ping"}`)
	r.expect(t, `{"type":"pong"}`) // frames are handled in order: the ack was

	proxy.Drop()
	if info, _ := r.ExpectClose(); info.Code != 1006 {
		t.Fatalf("drop: %+v", info)
	}
	// Detached, its state is still in the group's.
	items, _ := snapshotOf(t, e, "room")
	if len(items) != 2 {
		t.Fatalf("snapshot while detached %v", items)
	}
	w.Send(`{"type":"setGroupState","group":"room","state":{"n":"2"},"ackId":2}`)
	w.ExpectAck(2, "")
	must(t, e.hub.SendToUser(ctx, "r", pubsub.TextMessage("m2")))

	r.Client = wstest.Dial(t, u+"&awps_connection_id="+r.id+"&awps_reconnection_token="+token, nil, reliableJSON)
	r.seq = 1 // what it acknowledged: 2 on are replayed, in order
	r.update(t, "room", w.id, "w", map[string]string{"n": "1"})
	r.update(t, "room", w.id, "w", map[string]string{"n": "2"})
	message("m2")
	// Still subscribed, and its state still set.
	w.Send(`{"type":"setGroupState","group":"room","state":null,"ackId":3}`)
	w.ExpectAck(3, "")
	r.update(t, "room", w.id, "w", nil)
	w.Send(`{"type":"subscribeGroupState","group":"room","ackId":4}`)
	w.ExpectAck(4, "")
	if items := w.stateFrame(t, "groupStateSnapshot", "room"); len(items) != 1 || items[0]["connectionId"] != r.id {
		t.Fatalf("snapshot after the recovery %v", items)
	}
	// The session ends: its state leaves.
	r.Conn.WriteClose(1000, nil)
	w.update(t, "room", r.id, "r", nil)
}
