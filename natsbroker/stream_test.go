package natsbroker_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
)

// A stream published on one node reaches a receiver on another in order,
// and its publisher's disconnect ends it there too.
func TestGroupStreamAcrossNodes(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{})
	recv := nodes[1].dial("bob", "room")
	pub := nodes[0].dial("alice")

	pub.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"s"}}`)
	if m := pub.NextJSON(); m["type"] != "streamAck" || m["expectedSequenceId"] != 1.0 {
		t.Fatalf("publisher got %v", m)
	}
	const fragments = 200
	for i := 1; i <= fragments; i++ {
		pub.Send(`{"type":"streamData","streamId":"s","streamSequenceId":` + strconv.Itoa(i) + `,"dataType":"text","data":"` + strconv.Itoa(i) + `"}`)
	}
	pub.Send(`{"type":"streamEnd","streamId":"s"}`)
	pub.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"t"}}`)
	pub.Send(`{"type":"streamData","streamId":"t","streamSequenceId":1,"dataType":"text","data":"last"}`)
	for i := 1; i <= fragments+1; i++ {
		m := recv.nextMessage(t)
		st, _ := m["stream"].(map[string]any)
		if st["streamId"] != "s" || st["streamSequenceId"] != float64(i) || m["fromUserId"] != "alice" {
			t.Fatalf("fragment %d: got %v", i, m)
		}
		if end := i == fragments+1; end != (st["endOfStream"] == true) || !end && m["data"] != strconv.Itoa(i) {
			t.Fatalf("fragment %d: got %v", i, m)
		}
	}
	if m := recv.nextMessage(t); m["data"] != "last" {
		t.Fatalf("got %v", m)
	}
	// Wait for t's fragment to be acknowledged before dropping the publisher.
	for {
		m := pub.NextJSON()
		if m["type"] == "streamAck" && m["streamId"] == "t" && m["expectedSequenceId"] == 2.0 {
			break
		}
	}
	pub.Conn.WriteClose(1000, nil)
	m := recv.nextMessage(t)
	st, _ := m["stream"].(map[string]any)
	e, _ := st["error"].(map[string]any)
	if st["streamId"] != "t" || st["endOfStream"] != true || e["name"] != "Cancelled" {
		t.Fatalf("after the publisher left, got %v", m)
	}
}

// A reliable publisher recovered on another node keeps its open streams:
// the fragment it sends again is acknowledged and not republished, and the
// stream goes on from the new node, then ends there.
func TestGroupStreamFollowsItsPublisherToAnotherNode(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{})
	recv := nodes[1].dial("bob", "room")
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.sendToGroup"}}))

	next := func(want string) {
		t.Helper()
		for {
			f := r.conn.Next()
			if strings.Contains(string(f.Data), `"type":"stream`) {
				if string(f.Data) != want {
					t.Fatalf("publisher got %s, want %s", f.Data, want)
				}
				return
			}
		}
	}
	r.conn.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"s"}}`)
	next(`{"type":"streamAck","streamId":"s","expectedSequenceId":1}`)
	r.conn.Send(`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":"a"}`)
	next(`{"type":"streamAck","streamId":"s","expectedSequenceId":2}`)

	r.drop()
	r.recover(nodes[1])
	r.conn.Send(`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":"a"}`)
	next(`{"type":"streamAck","streamId":"s","expectedSequenceId":2}`)
	r.conn.Send(`{"type":"streamData","streamId":"s","streamSequenceId":2,"dataType":"text","data":"b"}`)
	next(`{"type":"streamAck","streamId":"s","expectedSequenceId":3}`)
	r.conn.Send(`{"type":"streamEnd","streamId":"s"}`)
	next(`{"type":"streamClosed","streamId":"s"}`)

	for i, want := range []string{"a", "b", ""} {
		m := recv.nextMessage(t)
		st, _ := m["stream"].(map[string]any)
		if st["streamId"] != "s" || st["streamSequenceId"] != float64(i+1) || m["data"] != want || (i == 2) != (st["endOfStream"] == true) || st["error"] != nil {
			t.Fatalf("fragment %d: got %v", i+1, m)
		}
	}
	for _, nd := range nodes {
		eventually(t, nd.id+" holds no stream", func() bool { return nd.svc.Stats().Streams == 0 })
	}
	r.close()
	// Shutdown, right after, would take the connection for one to drain.
	eventually(t, "the publisher is gone", func() bool { return nodes[1].svc.Stats().Connections == 1 })
}

// A publisher's node shutting down ends its streams for receivers
// on other nodes too (with Cancelled), as a disconnect does: Shutdown marks
// the service closed before it closes its connections, and a terminal
// fragment published after that must still reach the cluster.
func TestGroupStreamEndsOnOtherNodesWhenItsPublishersNodeShutsDown(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{})
	recv := nodes[1].dial("bob", "room")
	pub := nodes[0].dial("alice")

	pub.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"s"}}`)
	if m := pub.NextJSON(); m["type"] != "streamAck" || m["expectedSequenceId"] != 1.0 {
		t.Fatalf("publisher got %v", m)
	}
	pub.Send(`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":"a"}`)
	if m := recv.nextMessage(t); m["data"] != "a" {
		t.Fatalf("receiver got %v", m)
	}
	nodes[0].shutdown()
	m, ok := recv.tryMessage(waitFor)
	if !ok {
		t.Fatalf("the receiver on node1 got no terminal fragment within %v after node0 (the publisher's) shut down; Stats().Streams on node0 = %d", waitFor, nodes[0].svc.Stats().Streams)
	}
	st, _ := m["stream"].(map[string]any)
	e, _ := st["error"].(map[string]any)
	if st["streamId"] != "s" || st["endOfStream"] != true || e["name"] != "Cancelled" {
		t.Fatalf("after the publisher's node shut down, got %v", m)
	}
}
