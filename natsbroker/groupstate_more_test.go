package natsbroker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
)

// holdHandover is a broker that holds the answer to its node's first
// handover request (op 25) until release is closed; held is closed once it
// holds it. The owner has let the session go by then.
type holdHandover struct {
	pubsub.Broker
	once    sync.Once
	held    chan struct{}
	release chan struct{}
}

func (h *holdHandover) Request(subject string, data []byte, onReply func([]byte, error)) (func(), error) {
	var cmd struct {
		Op int `json:"o"`
	}
	if len(data) > 0 && data[0] == 'c' && json.Unmarshal(data[1:], &cmd) == nil && cmd.Op == 25 {
		hold := false
		h.once.Do(func() { hold = true })
		if hold {
			inner := onReply
			onReply = func(b []byte, err error) {
				close(h.held)
				<-h.release
				inner(b, err)
			}
		}
	}
	return h.Broker.Request(subject, data, onReply)
}

// A subscriber whose snapshot is taken while a member with a state is
// handed over to another node (after its owner let the session go, before
// the new node registered it) still learns that member's state: the state
// is in no node's answer, and the member's arrival publishes it again.
func TestGroupStateSnapshotDuringAHandoverLearnsTheMovingState(t *testing.T) {
	ns := startNATS(t, -1)
	hold := &holdHandover{held: make(chan struct{}), release: make(chan struct{})}
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{
		cfg: pubsub.Config{RecoveryWindow: time.Second},
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 1 {
				hold.Broker = b
				return hold
			}
			return b
		},
	})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.conn.Send(`{"type":"setGroupState","group":"room","state":{"on":"1"},"ackId":1}`)
	r.conn.ExpectAck(1, "")
	s := nodes[0].dial("s", "room")

	r.drop()
	recovered := make(chan struct{})
	go func() {
		defer close(recovered)
		r.recover(nodes[1])
	}()
	select {
	case <-hold.held:
	case <-time.After(waitFor):
		t.Fatal("no handover")
	}
	s.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	s.ExpectAck(1, "")
	snapshot := stateItems(t, s.NextJSON, "groupStateSnapshot")
	close(hold.release)
	<-recovered

	// Whatever the arrival publishes is published before this marker, by
	// the same node.
	must(t, nodes[1].hub.SendToAll(context.Background(), text("end")))
	seen := strings.Join(snapshot, " ")
	for {
		f := s.NextJSON()
		if f["type"] == "message" && f["data"] == "end" {
			break
		}
		seen += " " + strings.Join(stateItems(t, func() map[string]any { return f }, "groupStateUpdate"), " ")
	}
	if want := r.id + "=map[on:1]"; !strings.Contains(seen, want) {
		t.Fatalf("the subscriber never learns %s: snapshot %v, then nothing", want, snapshot)
	}
	// Another subscriber, later, does see it: the state is there.
	s2 := nodes[0].dial("s2", "room")
	s2.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	s2.ExpectAck(1, "")
	expectItems(t, stateItems(t, s2.NextJSON, "groupStateSnapshot"), r.id+"=map[on:1]")
}

// Updates held while a subscriber's snapshot waits (here: for a node that
// does not answer) are one per member: one member changing its state often
// does not make the subscriber slow, whose subscribe just fails (ack
// InternalServerError, connection kept).
func TestGroupStateOneChattyMemberDoesNotMakeASubscriberSlow(t *testing.T) {
	ns := startNATS(t, -1)
	nodes, frozen := newClusterFreezing(t, ns.ClientURL(), 2, 1, pubsub.Config{ClusterTimeout: 500 * time.Millisecond})
	sub := nodes[0].dial("s", "room")
	chatty := nodes[0].dial("c", "room")
	chatty.Send(`{"type":"setGroupState","group":"room","state":{"n":"0"},"ackId":1}`)
	chatty.ExpectAck(1, "")

	frozen.freeze()
	defer frozen.thaw()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // changes its state all along the subscribe
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if chatty.Conn.WriteString(fmt.Sprintf(`{"type":"setGroupState","group":"room","state":{"n":"%d"}}`, i)) != nil {
				return
			}
		}
	}()
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	f := sub.NextJSON()
	close(stop)
	wg.Wait()
	if f["type"] != "ack" || f["ackId"] != 1.0 {
		info, _ := sub.ExpectClose()
		t.Fatalf("the subscriber got %v, then close %+v; want its subscribe's ack (InternalServerError)", f, info)
	}
}

// A subscriber closed as a slow client by updates piling up behind its
// snapshot is one slow client: the updates that still reach it while it
// closes must not count (and log) it again.
func TestGroupStateSlowSubscriberCountedOnce(t *testing.T) {
	ns := startNATS(t, -1)
	nodes, frozen := newClusterFreezing(t, ns.ClientURL(), 2, 1, pubsub.Config{ClusterTimeout: 500 * time.Millisecond})
	sub := nodes[0].dial("s", "room")
	// Only the last update of each member is held: it takes more members
	// than the bound, each changing its state, to make a subscriber slow.
	var writers []*client
	for i := range 1010 {
		writers = append(writers, nodes[0].dial(fmt.Sprint("w", i), "room"))
	}
	frozen.freeze()
	defer frozen.thaw()
	// Each snapshot waits a ClusterTimeout for the frozen node, then fails;
	// the subscriber subscribes again, and every member changes its state,
	// until more than 1,000 members' updates wait behind one snapshot.
	for ack := 1; ; ack++ {
		sub.Send(fmt.Sprintf(`{"type":"subscribeGroupState","group":"room","ackId":%d}`, ack))
		for _, w := range writers {
			w.Send(fmt.Sprintf(`{"type":"setGroupState","group":"room","state":{"n":"%d"}}`, ack))
		}
		if f := sub.NextJSON(); f["type"] != "ack" {
			break // disconnected
		}
	}
	info, _ := sub.ExpectClose()
	eventually(t, "the slow subscriber released", func() bool { return nodes[0].svc.Stats().Connections == int64(len(writers)) })
	if n := nodes[0].svc.Stats().SlowClientDisconnects; n != 1 || !strings.HasPrefix(info.Reason, "SlowClient") {
		t.Fatalf("closed with %+v; SlowClientDisconnects = %d, want 1", info, n)
	}
}

// A node shut down tells the other nodes' subscribers that its members'
// states are gone, a reliable member's too once its window ends unrecovered.
func TestGroupStateNodeShutdownTellsSubscribers(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{cfg: pubsub.Config{RecoveryWindow: 300 * time.Millisecond}})
	alice := nodes[0].dial("alice", "room")
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	bob := nodes[1].dial("bob", "room")
	bob.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	bob.ExpectAck(1, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateSnapshot"))
	alice.Send(`{"type":"setGroupState","group":"room","state":{"a":"1"},"ackId":1}`)
	alice.ExpectAck(1, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateUpdate"), alice.id+"=map[a:1]")
	r.conn.Send(`{"type":"setGroupState","group":"room","state":{"r":"1"},"ackId":1}`)
	r.conn.ExpectAck(1, "")
	expectItems(t, stateItems(t, bob.NextJSON, "groupStateUpdate"), r.id+"=map[r:1]")
	nodes[0].shutdown()
	got := append(stateItems(t, bob.NextJSON, "groupStateUpdate"), stateItems(t, bob.NextJSON, "groupStateUpdate")...)
	expectItems(t, got, alice.id+"=-", r.id+"=-")
}
