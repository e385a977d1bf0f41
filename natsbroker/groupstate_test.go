package natsbroker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
)

// stateItems reads c's next frame, a groupStateSnapshot or groupStateUpdate
// (typ) of room, and returns its items as "connectionId=state" ("-" for
// none).
func stateItems(t *testing.T, next func() map[string]any, typ string) []string {
	t.Helper()
	f := next()
	if f["type"] != typ || f["group"] != "room" {
		t.Fatalf("want a %s of room, got %v", typ, f)
	}
	var out []string
	for _, it := range f["items"].([]any) {
		m := it.(map[string]any)
		s := "-"
		if st, ok := m["state"].(map[string]any); ok {
			s = fmt.Sprint(st)
		}
		out = append(out, fmt.Sprintf("%v=%s", m["connectionId"], s))
	}
	return out
}

func expectItems(t *testing.T, got []string, want ...string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("items %v, want %v", got, want)
	}
}

// ackAndOwnUpdate reads a subscriber's ack of its own change and the
// update of it, in either order: across nodes the update comes back
// through the broker.
func ackAndOwnUpdate(t *testing.T, next func() map[string]any, ack float64, want string) {
	t.Helper()
	for range 2 {
		f := next()
		if f["type"] == "ack" {
			if f["ackId"] != ack || f["success"] != true {
				t.Fatalf("ack %v, want %v", f, ack)
			}
			ack = -1
			continue
		}
		expectItems(t, stateItems(t, func() map[string]any { return f }, "groupStateUpdate"), want)
		want = "(seen)"
	}
	if ack != -1 || want != "(seen)" {
		t.Fatalf("missing the ack or the update")
	}
}

func sorted2(a, b string) []string {
	if a > b {
		return []string{b, a}
	}
	return []string{a, b}
}

// A state set on one node is in the snapshots taken on the others and
// reaches the subscribers of every node; it leaves with its connection,
// whichever node removes it.
func TestGroupStateAcrossNodes(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{})
	ctx := context.Background()
	alice := nodes[0].dial("alice", "room")
	bob := nodes[1].dial("bob", "room")
	carol := nodes[2].dial("carol", "room")
	dave := nodes[2].dial("dave")

	bob.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	bob.ExpectAck(1, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateSnapshot"))
	alice.Send(`{"type":"setGroupState","group":"room","state":{"at":"0"},"ackId":1}`)
	alice.ExpectAck(1, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateUpdate"), alice.id+"=map[at:0]")
	carol.Send(`{"type":"setGroupState","group":"room","state":{"at":"2"},"ackId":1}`)
	carol.ExpectAck(1, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateUpdate"), carol.id+"=map[at:2]")

	// A subscriber on another node sees both, from both nodes.
	dave.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	dave.ExpectAck(1, "")
	dave.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`)
	dave.ExpectAck(2, "")
	expectItems(t, stateItems(t, dave.NextJSON, "groupStateSnapshot"), sorted2(alice.id+"=map[at:0]", carol.id+"=map[at:2]")...)

	alice.Send(`{"type":"setGroupState","group":"room","state":{"at":"0","mood":"ok"},"ackId":2}`)
	alice.ExpectAck(2, "")
	for _, s := range []*client{bob, dave} {
		expectItems(t, stateItems(t, s.NextJSON, "groupStateUpdate"), alice.id+"=map[at:0 mood:ok]")
	}
	// Removed by another node than its own, and closed from another node:
	// the state leaves, every subscriber is told.
	must(t, nodes[1].hub.RemoveConnectionFromGroup(ctx, alice.id, "room"))
	for _, s := range []*client{bob, dave} {
		expectItems(t, stateItems(t, s.NextJSON, "groupStateUpdate"), alice.id+"=-")
	}
	must(t, nodes[0].hub.CloseConnection(ctx, carol.id, ""))
	for _, s := range []*client{bob, dave} {
		expectItems(t, stateItems(t, s.NextJSON, "groupStateUpdate"), carol.id+"=-")
	}
	bob.Send(`{"type":"subscribeGroupState","group":"room","ackId":3}`)
	bob.ExpectAck(3, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateSnapshot"))

	// Nothing else came: a marker is each one's next frame.
	must(t, nodes[0].hub.SendToAll(ctx, text("end")))
	for _, c := range []*client{alice, bob, dave} {
		if m := c.NextJSON(); m["type"] != "message" || m["data"] != "end" {
			t.Fatalf("%s got %v before the marker", c.user, m)
		}
	}
}

// A reliable connection handed over to another node takes its state and
// subscriptions with it: its state stays in the group's (a snapshot on a
// third node has it; its arrival publishes it again), updates keep reaching
// it in its sequence, and its state leaves when its session ends there.
func TestGroupStateHandedOver(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{cfg: pubsub.Config{RecoveryWindow: time.Second}})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}, Roles: []string{"webpubsub.joinLeaveGroup"}}))
	w := nodes[2].dial("w", "room")
	w.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	w.ExpectAck(1, "")
	expectItems(t, stateItems(t, w.NextJSON, "groupStateSnapshot"))

	r.conn.Send(`{"type":"setGroupState","group":"room","state":{"on":"0"},"ackId":1}`)
	r.conn.ExpectAck(1, "")
	expectItems(t, stateItems(t, w.NextJSON, "groupStateUpdate"), r.id+"=map[on:0]")
	r.conn.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`)
	r.conn.ExpectAck(2, "")
	expectItems(t, stateItems(t, r.conn.NextJSON, "groupStateSnapshot"), r.id+"=map[on:0]")
	update := func(seq float64, want string) {
		t.Helper()
		f := r.conn.NextJSON()
		if f["sequenceId"] != seq {
			t.Fatalf("update %v, want sequenceId %v", f, seq)
		}
		expectItems(t, stateItems(t, func() map[string]any { return f }, "groupStateUpdate"), want)
	}
	w.Send(`{"type":"setGroupState","group":"room","state":{"w":"1"},"ackId":2}`)
	ackAndOwnUpdate(t, w.NextJSON, 2, w.id+"=map[w:1]")
	update(1, w.id+"=map[w:1]")

	r.drop()
	w.Send(`{"type":"setGroupState","group":"room","state":{"w":"2"},"ackId":3}`) // while it is detached
	ackAndOwnUpdate(t, w.NextJSON, 3, w.id+"=map[w:2]")
	r.recover(nodes[1])
	update(1, w.id+"=map[w:1]") // not acknowledged: replayed
	update(2, w.id+"=map[w:2]")
	// Its arrival publishes its state again (a snapshot taken while it was
	// between nodes had it on neither): to w, and to itself, subscribed.
	update(3, r.id+"=map[on:0]")
	expectItems(t, stateItems(t, w.NextJSON, "groupStateUpdate"), r.id+"=map[on:0]")
	w.Send(`{"type":"setGroupState","group":"room","state":null,"ackId":4}`)
	ackAndOwnUpdate(t, w.NextJSON, 4, w.id+"=-")
	update(4, w.id+"=-")

	snap := nodes[2].dial("snap", "room")
	snap.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	snap.ExpectAck(1, "")
	expectItems(t, stateItems(t, snap.NextJSON, "groupStateSnapshot"), r.id+"=map[on:0]")
	r.conn.Send(`{"type":"setGroupState","group":"room","state":{"on":"1"},"ackId":3}`)
	seq5 := func() map[string]any {
		f := r.conn.NextJSON()
		if f["type"] != "ack" && f["sequenceId"] != 5.0 {
			t.Fatalf("update %v, want sequenceId 5", f)
		}
		return f
	}
	ackAndOwnUpdate(t, seq5, 3, r.id+"=map[on:1]")
	for _, s := range []*client{w, snap} {
		expectItems(t, stateItems(t, s.NextJSON, "groupStateUpdate"), r.id+"=map[on:1]")
	}
	r.close()
	for _, s := range []*client{w, snap} {
		expectItems(t, stateItems(t, s.NextJSON, "groupStateUpdate"), r.id+"=-")
	}
}

// Subscribing on one node while a member on another changes its state
// all the time: the subscriber never sees the member's counter go back or
// repeat after its snapshot (the updates published before the snapshot's
// answer are held and dropped, not delivered after it).
func TestGroupStateSnapshotRacesUpdatesAcrossNodes(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{})
	writer := nodes[0].dial("w", "room")
	sub := nodes[1].dial("s", "room")
	const n = 300
	go func() {
		for i := 1; i <= n; i++ {
			_ = writer.Conn.WriteString(fmt.Sprintf(`{"type":"setGroupState","group":"room","state":{"n":"%d"}}`, i))
		}
	}()
	counter := func(f map[string]any) int {
		items := f["items"].([]any)
		if len(items) == 0 {
			return 0
		}
		var v int
		st, _ := items[0].(map[string]any)["state"].(map[string]any)
		fmt.Sscan(fmt.Sprint(st["n"]), &v)
		return v
	}
	last := 0
	for round := 1; last < n; round++ {
		sub.Send(fmt.Sprintf(`{"type":"subscribeGroupState","group":"room","ackId":%d}`, round))
		sub.ExpectAck(round, "")
		f := sub.NextJSON()
		if f["type"] != "groupStateSnapshot" {
			t.Fatalf("round %d: %v", round, f)
		}
		if v := counter(f); v < last {
			t.Fatalf("round %d: snapshot at %d after an update at %d", round, v, last)
		} else {
			last = v
		}
		for i := 0; i < 5 && last < n; i++ {
			f := sub.NextJSON()
			if v := counter(f); f["type"] != "groupStateUpdate" || v <= last {
				t.Fatalf("round %d: %v after %d", round, f, last)
			} else {
				last = v
			}
		}
		sub.Send(fmt.Sprintf(`{"type":"unsubscribeGroupState","group":"room","ackId":%d}`, 1000+round))
		for {
			f := sub.NextJSON()
			if f["type"] == "ack" {
				break
			}
			if v := counter(f); v <= last {
				t.Fatalf("round %d: update at %d after %d", round, v, last)
			} else {
				last = v
			}
		}
	}
}

// A node that does not answer the snapshot's survey fails the subscribe
// (ack InternalServerError, the connection kept, no subscription made);
// once it answers again, the subscribe succeeds.
func TestGroupStateSubscribeWhenANodeDoesNotAnswer(t *testing.T) {
	ns := startNATS(t, -1)
	nodes, frozen := newClusterFreezing(t, ns.ClientURL(), 2, 1, pubsub.Config{ClusterTimeout: 300 * time.Millisecond})
	sub := nodes[0].dial("s", "room")
	other := nodes[1].dial("o", "room")
	mate := nodes[0].dial("m", "room")
	other.Send(`{"type":"setGroupState","group":"room","state":{"on":"1"},"ackId":1}`)
	other.ExpectAck(1, "")

	frozen.freeze()
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	f := sub.ExpectAck(1, "InternalServerError")
	if msg := fmt.Sprint(f["error"].(map[string]any)["message"]); !strings.Contains(msg, "node1") {
		t.Fatalf("error %q does not name the silent node", msg)
	}
	// Not subscribed: a change on its own node does not reach it.
	mate.Send(`{"type":"setGroupState","group":"room","state":{"on":"0"},"ackId":1}`)
	mate.ExpectAck(1, "")
	frozen.thaw()
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":2}`) // the same ackId would do too: a failure is not remembered
	sub.ExpectAck(2, "")
	expectItems(t, stateItems(t, sub.NextJSON, "groupStateSnapshot"), sorted2(mate.id+"=map[on:0]", other.id+"=map[on:1]")...)
}
