package natsbroker_test

// Handovers in the corners: a recovery back onto the first node, a close
// or a question while the session moves, a node behind in its queue, a
// node that dies. An adversarial review wrote these against the first
// design (where an arriving connection was in the registry); each failed
// there.

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/natsbroker"
	"github.com/embedwps/pubsub/rest"
	"github.com/nats-io/nats.go"

	"github.com/embedwps/pubsub"
)

// drop cuts r's transport without a close frame, and waits for it to end.
func (r *reliableClient) drop() {
	_ = r.conn.Conn.NetConn().Close()
	<-r.conn.Done()
}

// expectData reads r's next data message and checks it.
func (r *reliableClient) expectData(want string) {
	r.t.Helper()
	var got string
	if r.read(func(d string) bool { got = d; return true }) {
		r.t.Fatalf("transport ended (%v) waiting for %q", r.conn.CloseInfo(), want)
	}
	if got != want {
		r.t.Fatalf("got %q, want %q", got, want)
	}
}

// A reliable client handed from its owner (node0) to node1 and whose
// transport drops again may be sent back to node0 by the load balancer.
// Recovery "on any node" must include the node its id names.
func TestRecoveryBackOntoTheFirstNode(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{cfg: pubsub.Config{RecoveryWindow: time.Second}})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	must(t, nodes[1].hub.SendToGroup(ctx, "room", text("m0")))
	r.expectData("m0")

	r.drop()
	r.recover(nodes[1])
	must(t, nodes[0].hub.SendToGroup(ctx, "room", text("m1")))
	r.expectData("m1")

	r.drop()
	r.recover(nodes[0]) // back onto the owner
	must(t, nodes[1].hub.SendToGroup(ctx, "room", text("m2")))
	r.expectData("m2")
	r.close()
}

// freezeAfterTakeover is a broker whose node stops applying what it
// receives right after it applied a takeover (step 1 of a handover): the
// owner is slow between the two steps.
type freezeAfterTakeover struct{ freezable }

func (f *freezeAfterTakeover) Start(receive func(string, []byte, func([]byte))) error {
	return f.freezable.Start(func(subject string, data []byte, reply func([]byte)) {
		receive(subject, data, reply)
		if strings.HasPrefix(string(data), `c{"o":24,`) { // opTakeover; f.mu is held
			f.frozen = true
		}
	})
}

func (f *freezeAfterTakeover) isFrozen() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.frozen }

// holdsHandover reports whether the frozen owner holds a handover request:
// the new node has subscribed and asked.
func (f *freezeAfterTakeover) holdsHandover() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.heldData {
		if strings.HasPrefix(string(d), `c{"o":25,`) {
			return true
		}
	}
	return false
}

// A close of a connection while it is being handed over (REST
// CloseConnection on any node, between the owner's takeover and handover
// steps): the arriving node applies the close to the arriving connection
// (answersFor only defers ask-routed operations to the owner), releases it
// (disconnected event), and then its failed takeover takes the connection
// out of the registry a second time: Stats.Connections goes negative, the
// hub's live count and the Shutdown tracker are decremented twice.
func TestCloseDuringAHandover(t *testing.T) {
	ns := startNATS(t, -1)
	ev := &events{}
	var owner *freezeAfterTakeover
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{
		handler: ev.handler,
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 0 {
				owner = &freezeAfterTakeover{freezable{Broker: b}}
				return owner
			}
			return b
		},
	})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.drop()

	recovered := make(chan *wstest.Client, 1)
	go func() {
		u := "ws://" + strings.TrimPrefix(nodes[1].srv.URL, "http://") + "/client/hubs/chat?awps_connection_id=" +
			url.QueryEscape(r.id) + "&awps_reconnection_token=" + url.QueryEscape(r.token)
		c, _, err := wstest.TryDial(u, nil, reliableJSON)
		if err != nil {
			t.Error(err)
		}
		recovered <- c
	}()
	eventually(t, "the owner applied the takeover", owner.isFrozen)
	eventually(t, "node1 asked for the handover", owner.holdsHandover)
	must(t, nodes[1].hub.CloseConnection(ctx, r.id, "bye")) // at NATS now: queued on both nodes
	owner.thaw()
	if c := <-recovered; c != nil {
		<-c.Done()
	}
	eventually(t, "the disconnected event", func() bool { return len(ev.of(r.id)) >= 2 })
	if got := ev.of(r.id); len(got) != 2 {
		t.Errorf("events: %v", got)
	}
	for _, nd := range nodes {
		if c := nd.svc.Stats().Connections; c != 0 {
			t.Errorf("%s: Stats.Connections = %d, want 0", nd.id, c)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	nodes[1].closed = true
	if err := nodes[1].svc.Shutdown(sctx); err != nil {
		t.Errorf("node1: Shutdown with no connection: %v", err)
	}
	nodes[1].srv.Close()
}

// A send that the owner delivered (and the client acknowledged) before the
// takeover, but that still waits in the new node's receive queue (the new
// node subscribes to the hub or the group for other members, and is
// behind), reaches the arriving connection after it registered: it is not
// among the owner's unacknowledged messages, so the handover does not
// recognise it by its send id, and the client gets it twice, under a new
// sequence id. The takeover's answer comes on the request's own inbox, not
// in the node's broker order.
func TestABackloggedSendIsNotDoubledByAHandover(t *testing.T) {
	ns := startNATS(t, -1)
	var slow *freezable
	var owner *freezeAfterTakeover
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{
		cfg: pubsub.Config{RecoveryWindow: time.Second},
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 0 {
				owner = &freezeAfterTakeover{freezable{Broker: b}}
				return owner
			}
			slow = &freezable{Broker: b}
			return slow
		},
	})
	ctx := context.Background()
	other := nodes[1].dial("other", "room") // node1 subscribes to the room
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))

	slow.freeze() // node1 is behind
	must(t, nodes[0].hub.SendToGroup(ctx, "room", text("S")))
	r.expectData("S")
	r.conn.Send(`{"type":"sequenceAck","sequenceId":1}`)
	eventually(t, "the owner forgot the acknowledged message", func() bool { return nodes[0].svc.Stats().BufferedBytes == 0 })

	r.drop()
	done := make(chan struct{})
	go func() { defer close(done); r.recover(nodes[1]) }()
	eventually(t, "the owner applied the takeover", owner.isFrozen)
	eventually(t, "node1 asked for the handover", owner.holdsHandover)
	slow.thaw() // node1 catches up: S, then its own handover request
	if m := fmt.Sprint(other.nextMessage(t)["data"]); m != "S" {
		t.Fatalf("other got %q", m)
	}
	owner.thaw() // the owner answers the handover
	<-done
	must(t, nodes[0].hub.SendToGroup(ctx, "room", text("T")))
	r.expectData("T")
	r.close()
}

// The new node receives its own handover request too (it subscribes to
// the connection's subject first). When its receive queue is behind, that
// request is applied after the handover completed: the node now holds the
// connection, answersFor says yes, and it "hands the connection over" to
// itself: the recovered transport is aborted, the session is released with
// no disconnected event, and no node answers for the id any more.
func TestNoSelfHandoverWhenTheNewNodeIsBehind(t *testing.T) {
	ns := startNATS(t, -1)
	ev := &events{}
	var slow *freezable
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{
		handler: ev.handler,
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 1 {
				slow = &freezable{Broker: b}
				return slow
			}
			return b
		},
	})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.drop()
	slow.freeze() // node1 is behind by a few messages
	r.recover(nodes[1])
	slow.thaw()
	must(t, nodes[0].hub.SendToGroup(ctx, "room", text("T")))
	r.expectData("T")
	ok, err := nodes[0].hub.ConnectionExists(ctx, r.id)
	if err != nil || !ok {
		t.Errorf("ConnectionExists = %v, %v", ok, err)
	}
	r.close()
	eventually(t, "connected and disconnected", func() bool { return len(ev.of(r.id)) == 2 })
}

// handOver moves r from its node to nd and checks it receives there.
func (r *reliableClient) handOver(nd *node, sender *node, data string) {
	r.t.Helper()
	r.drop()
	r.recover(nd)
	must(r.t, sender.hub.SendToGroup(context.Background(), "room", text(data)))
	r.expectData(data)
}

// On the node a connection id names, an ask that times out (the node the
// connection was handed to does not answer in time) is taken for "the
// broker is away" and answered from this node's registry, which no longer
// holds the connection: ConnectionExists says false, a grant says not
// found, and the timeout is counted as a broker error, not a cluster
// timeout. Any other node answers ErrNodeUnavailable to the same question.
func TestTheFirstNodeDoesNotGuessOnATimeout(t *testing.T) {
	ns := startNATS(t, -1)
	nodes, slow := newClusterFreezing(t, ns.ClientURL(), 2, 1, pubsub.Config{RecoveryWindow: time.Second, ClusterTimeout: 500 * time.Millisecond})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.handOver(nodes[1], nodes[0], "m0")
	slow.freeze() // node1, which holds the connection now, does not answer
	defer slow.thaw()
	ok, err := nodes[0].hub.ConnectionExists(context.Background(), r.id)
	if !errors.Is(err, pubsub.ErrNodeUnavailable) {
		t.Errorf("ConnectionExists on the owner = %v, %v; want ErrNodeUnavailable", ok, err)
	}
	err = nodes[0].hub.GrantPermission(context.Background(), r.id, pubsub.PermissionSendToGroup, "room")
	if !errors.Is(err, pubsub.ErrNodeUnavailable) {
		t.Errorf("GrantPermission on the owner = %v; want ErrNodeUnavailable", err)
	}
	if st := nodes[0].svc.Stats(); st.ClusterTimeouts != 2 {
		t.Errorf("ClusterTimeouts = %d, BrokerErrors = %d", st.ClusterTimeouts, st.BrokerErrors)
	}
}

// slowHandoverReply delays the handover's answer to its node: the owner
// has handed the session over, and the new node has not taken it yet.
type slowHandoverReply struct{ pubsub.Broker }

func (s slowHandoverReply) Request(subject string, data []byte, onReply func([]byte, error)) (func(), error) {
	if strings.HasPrefix(string(data), `c{"o":25,`) { // opHandover
		return s.Broker.Request(subject, data, func(b []byte, err error) {
			time.Sleep(500 * time.Millisecond) // a slow network, injected: not a wait for anything
			onReply(b, err)
		})
	}
	return s.Broker.Request(subject, data, onReply)
}

// An operation on a connection asked between the owner's handover and the
// new node's arrival is answered by nobody: the owner has moved it, and the
// new node, still arriving, leaves it to the owner. The caller gets
// ErrNodeUnavailable although every node is up.
func TestQuestionsDuringAHandoverAreAnswered(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{
		cfg: pubsub.Config{RecoveryWindow: time.Second},
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 1 {
				return slowHandoverReply{b}
			}
			return b
		},
	})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.drop()
	done := make(chan struct{})
	go func() { defer close(done); r.recover(nodes[1]) }()
	eventually(t, "node0 handed the connection over", func() bool { return nodes[0].svc.Stats().Connections == 0 })
	start := time.Now()
	ok, err := nodes[2].hub.ConnectionExists(context.Background(), r.id)
	if err != nil || !ok {
		t.Errorf("ConnectionExists during the handover = %v, %v after %v", ok, err, time.Since(start))
	}
	<-done
	must(t, nodes[2].hub.SendToGroup(context.Background(), "room", text("m1")))
	r.expectData("m1")
	r.close()
}

// holdHandovers is a broker whose node applies handover requests only when
// told: a handover request, from one node, may reach the owner after
// another node's operations (NATS orders one publisher's messages only).
type holdHandovers struct {
	pubsub.Broker
	mu   sync.Mutex
	held []func()
	hold bool
}

func (h *holdHandovers) Start(receive func(string, []byte, func([]byte))) error {
	return h.Broker.Start(func(subject string, data []byte, reply func([]byte)) {
		h.mu.Lock()
		if h.hold && strings.HasPrefix(string(data), `c{"o":25,`) {
			h.held = append(h.held, func() { receive(subject, data, reply) })
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		receive(subject, data, reply)
	})
}

func (h *holdHandovers) holding() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.held) }

// release applies the held requests; the broker's next delivery may come
// meanwhile (a test's approximation of its order, enough here).
func (h *holdHandovers) release() {
	h.mu.Lock()
	held := h.held
	h.held, h.hold = nil, false
	h.mu.Unlock()
	for _, f := range held {
		f()
	}
}

// While a connection is being handed over it is registered on both nodes,
// and both list it: ListConnectionsInGroup returns it twice.
func TestListDuringAHandoverHasNoDuplicates(t *testing.T) {
	ns := startNATS(t, -1)
	var owner *holdHandovers
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{
		cfg: pubsub.Config{RecoveryWindow: time.Second},
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 0 {
				owner = &holdHandovers{Broker: b, hold: true}
				return owner
			}
			return b
		},
	})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.drop()
	done := make(chan struct{})
	go func() { defer close(done); r.recover(nodes[1]) }()
	eventually(t, "the handover request waits at node0", func() bool { return owner.holding() == 1 })
	members, err := nodes[2].hub.ListConnectionsInGroup(context.Background(), "room")
	must(t, err)
	owner.release()
	<-done
	if len(members) != 1 {
		t.Errorf("ListConnectionsInGroup during a handover: %v", members)
	}
	r.close()
}

// newNodeOnConn is newNode with a NATS connection of the test's own, which
// it can close to make the node vanish from the cluster as a crash would.
func newNodeOnConn(t *testing.T, natsURL, id string, cfg pubsub.Config) (*node, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.ReconnectBufSize(-1), nats.MaxReconnects(-1))
	must(t, err)
	nb, err := natsbroker.New(natsbroker.Options{Conn: nc, NodeID: id})
	must(t, err)
	cfg.AccessKey, cfg.Endpoint, cfg.Broker = accessKey, endpoint, nb
	svc, err := pubsub.New(cfg)
	must(t, err)
	srv := httptest.NewServer(rest.NewServiceHandler(svc, rest.Options{}, nil))
	hub, err := svc.Hub("chat")
	must(t, err)
	nd := &node{t: t, id: id, svc: svc, srv: srv, hub: hub, broker: nb}
	t.Cleanup(func() {
		nd.closed = true
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		_ = svc.Shutdown(ctx)
		srv.Close()
		nc.Close()
	})
	return nd, nc
}

// A connection handed from node0 to node1, then node1 dies: the node
// that dies loses its connections, and every node should answer for that
// id as for any connection that is gone. But node0 keeps the id in
// movedTo for ever (only the new node's "forget" clears it, and a dead
// node sends none), so node0 never answers for its own id again, and
// every other node gets ErrNodeUnavailable, after the cluster timeout,
// for every operation on that id, for ever (RemoveConnectionFromGroup on a
// gone connection is not an error on one node).
func TestAnIDIsAnsweredAfterItsNewNodeDied(t *testing.T) {
	ns := startNATS(t, -1)
	cfg := pubsub.Config{RecoveryWindow: time.Second, ClusterTimeout: 500 * time.Millisecond}
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{cfg: cfg}) // node0, node1
	taker, nc := newNodeOnConn(t, ns.ClientURL(), "taker", cfg)
	eventually(t, "three nodes", func() bool { return nodes[1].svc.Stats().Nodes == 3 })
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.handOver(taker, nodes[1], "m0")

	// The taker crashes: gone from NATS, and its sockets with it.
	nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_ = taker.svc.Shutdown(ctx)
	cancel()
	<-r.conn.Done()
	eventually(t, "node1 forgot the dead node", func() bool { return nodes[1].svc.Stats().Nodes == 2 })
	ok, err := nodes[1].hub.ConnectionExists(context.Background(), r.id)
	if err != nil || ok {
		t.Errorf("ConnectionExists of a connection of a dead node = %v, %v", ok, err)
	}
	if err := nodes[1].hub.RemoveConnectionFromGroup(context.Background(), r.id, "room"); err != nil {
		t.Errorf("RemoveConnectionFromGroup of a connection of a dead node: %v", err)
	}
}
