package natsbroker_test

// A second adversarial review, of the redesigned handover (arrivals,
// watermarks) and of the sends that do not wait for a flush. Each test here
// failed on the code it was written against: a connection back on its first
// node got sends by id twice; asks and surveys were replayed after the
// removals that followed them; a late handover lost the session; an event
// handler's send was overtaken by what the handler did next.

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A connection recovered back onto the node its id names: arrive
// subscribes that node to the id's own subject (c.node0.<key>) for the
// registry, on top of its wildcard c.node0.*, and NATS delivers a message
// once per matching subscription. Every send to the connection by id is
// received, and delivered, twice.
func TestBackHomeSendToConnectionIsNotDoubled(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{cfg: pubsub.Config{RecoveryWindow: time.Second}})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.handOver(nodes[1], nodes[0], "m0")
	r.handOver(nodes[0], nodes[1], "m1") // back onto node0

	must(t, nodes[1].hub.SendToConnection(ctx, r.id, text("direct")))
	must(t, nodes[1].hub.SendToGroup(ctx, "room", text("end")))
	r.expectData("direct")
	r.expectData("end")
	r.close()
}

// gateHandover holds its node's handover request until opened: the node
// is slow (scheduled out, a GC pause) between its subscriptions' flush and
// its request, and other nodes' commands reach the owner first, in any
// order NATS allows.
type gateHandover struct {
	pubsub.Broker
	asked chan struct{} // closed when the request waits
	open  chan struct{}
}

func newGateHandover(b pubsub.Broker) *gateHandover {
	return &gateHandover{Broker: b, asked: make(chan struct{}), open: make(chan struct{})}
}

func (g *gateHandover) Request(subject string, data []byte, onReply func([]byte, error)) (func(), error) {
	if strings.HasPrefix(string(data), `c{"o":25,`) { // opHandover
		select {
		case <-g.asked:
		default:
			close(g.asked)
		}
		<-g.open
	}
	return g.Broker.Request(subject, data, onReply)
}

// Commands without a number (asks and surveys) are never recognised as
// applied by the owner: the new node replays them on the session, which
// has them already, after the numbered commands that followed them and
// that it skips. Here node2 adds the connection to a group (an ask, applied
// by the owner) and then removes its user from the group (a publish,
// numbered, applied by the owner). Both reach the owner before node1's
// handover request (node1 asks late), and both reach node1, subscribed to
// the id's and the user's subjects. The owner's session is in no group;
// node1 replays the add and skips the removal: the connection ends up in
// the group, and gets the group's messages.
func TestAnAppliedAskIsNotReplayedAfterALaterRemoval(t *testing.T) {
	ns := startNATS(t, -1)
	var gate *gateHandover
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{
		cfg: pubsub.Config{RecoveryWindow: time.Second},
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 1 {
				gate = newGateHandover(b)
				return gate
			}
			return b
		},
	})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel"}))
	r.drop()
	done := make(chan struct{})
	go func() { defer close(done); r.recover(nodes[1]) }()
	<-gate.asked // node1 is subscribed and flushed, and about to ask

	must(t, nodes[2].hub.AddConnectionToGroup(ctx, r.id, "vip"))
	must(t, nodes[2].hub.RemoveUserFromGroup(ctx, "rel", "vip"))
	close(gate.open)
	<-done

	members, err := nodes[2].hub.ListConnectionsInGroup(ctx, "vip")
	must(t, err)
	if len(members) != 0 {
		t.Errorf("after add then remove, the group holds %v", members)
	}
	must(t, nodes[2].hub.SendToGroup(ctx, "vip", text("vip only")))
	must(t, nodes[2].hub.SendToConnection(ctx, r.id, text("end")))
	r.expectData("end")
	r.close()
}

// An owner that answers the handover late (its queue is behind by more
// than ClusterTimeout) hands the session to a node that has given up on
// it: the new node refused the recovery (1008) and forgot the arrival, and
// the owner then releases the connection without a disconnected event and
// records it as moved to the new node, which does not hold it. The
// connected event never gets its disconnected event, and every question
// on the id from then on fails with ErrNodeUnavailable (no node answers)
// instead of "not found".
func TestALateHandoverDoesNotLoseTheConnection(t *testing.T) {
	ns := startNATS(t, -1)
	ev := &events{}
	var owner *freezeAfterTakeover
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{
		cfg:     pubsub.Config{RecoveryWindow: time.Second, ClusterTimeout: 300 * time.Millisecond},
		handler: ev.handler,
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 0 {
				owner = &freezeAfterTakeover{freezable{Broker: b}}
				return owner
			}
			return b
		},
	})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	r.drop()
	refused := make(chan struct{})
	go func() {
		defer close(refused)
		u := "ws://" + strings.TrimPrefix(nodes[1].srv.URL, "http://") + "/client/hubs/chat?awps_connection_id=" +
			url.QueryEscape(r.id) + "&awps_reconnection_token=" + url.QueryEscape(r.token)
		if c, _, err := wstest.TryDial(u, nil, reliableJSON); err == nil {
			<-c.Done()
		}
	}()
	eventually(t, "node1 asked for the handover", owner.holdsHandover)
	<-refused // node1 gave up: the owner did not answer within ClusterTimeout
	owner.thaw()

	// The session is the owner's still; its recovery window ends it.
	eventually(t, "the disconnected event", func() bool { return len(ev.of(r.id)) >= 2 })
	if got := ev.of(r.id); len(got) != 2 {
		t.Errorf("events 2s past the recovery window: %v", got)
	}
	ok, err := nodes[1].hub.ConnectionExists(context.Background(), r.id)
	if err != nil || ok {
		t.Errorf("ConnectionExists of an ended connection = %v, %v", ok, err)
	}
}

// pausedLink is a TCP proxy between a node and NATS whose node-to-NATS
// direction can be held: a node whose writes are slow to reach NATS.
type pausedLink struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	gate  chan struct{} // closed: writes flow
	conns []net.Conn
	wg    sync.WaitGroup
}

func newPausedLink(t *testing.T, to string) *pausedLink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	p := &pausedLink{ln: ln, to: to, gate: make(chan struct{})}
	close(p.gate)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(in, out, true)
			go p.pipe(out, in, false)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.resume()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *pausedLink) url() string { return "nats://" + p.ln.Addr().String() }

func (p *pausedLink) pipe(from, to net.Conn, gated bool) {
	defer p.wg.Done()
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if gated {
				p.mu.Lock()
				g := p.gate
				p.mu.Unlock()
				<-g
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *pausedLink) pause() { p.mu.Lock(); p.gate = make(chan struct{}); p.mu.Unlock() }

func (p *pausedLink) resume() {
	p.mu.Lock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
	p.mu.Unlock()
}

// A Go API call "returns when its command has reached the broker: whatever
// the caller does next, on any node, is ordered after it" (cluster.run),
// except when the context carries a client's user event, which the
// handler gets and which every context derived from it inherits: then it
// returns before its command left the node. An event handler that sends to
// the room and then has the app's other instance (another node: here
// called directly, in practice through the app's own RPC) send a follow-up
// sees the follow-up overtake the send whenever the first node's writes
// to NATS are slower than the round trip to the other instance.
func TestAnEventHandlersSendIsOrderedBeforeWhatItDoesNext(t *testing.T) {
	ns := startNATS(t, -1)
	link := newPausedLink(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	var first, other *node
	var mu sync.Mutex
	handlerDone := make(chan error, 1)
	opts := clusterOptions{handler: func(string) pubsub.EventHandler {
		return pubsub.EventHandlerFuncs{OnUserEvent: func(ctx context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			mu.Lock()
			self, next := first, other
			mu.Unlock()
			err := self.hub.SendToGroup(ctx, "room", text("first"))
			if err == nil {
				// What the app does next, on its other instance.
				err = next.hub.SendToGroup(context.Background(), "room", text("second"))
			}
			handlerDone <- err
			return nil, err
		}}
	}}
	n0 := newNode(t, link.url(), "node0", 0, opts)
	n1 := newNode(t, ns.ClientURL(), "node1", 1, opts)
	mu.Lock()
	first, other = n0, n1
	mu.Unlock()
	for _, nd := range []*node{n0, n1} {
		eventually(t, nd.id+" knows its peers", func() bool { return nd.svc.Stats().Nodes == 2 })
	}
	receiver := n1.dial("receiver", "room")
	sender := n0.dial("sender")

	link.pause() // node0's writes to NATS are slow for a while
	go func() { time.Sleep(300 * time.Millisecond); link.resume() }()
	sender.Send(`{"type":"event","event":"post","dataType":"text","data":"x"}`)
	must(t, <-handlerDone)
	got := []string{fmt.Sprint(receiver.nextMessage(t)["data"]), fmt.Sprint(receiver.nextMessage(t)["data"])}
	if got[0] != "first" || got[1] != "second" {
		t.Errorf("the receiver got %v, want [first second]", got)
	}
}

// The same with a survey: AddUserToGroup (no number, applied by the owner)
// then RemoveUserFromGroup (numbered, applied by the owner, skipped by the
// new node, which replays the add after it).
func TestAnAppliedSurveyIsNotReplayedAfterALaterRemoval(t *testing.T) {
	ns := startNATS(t, -1)
	var gate *gateHandover
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{
		cfg: pubsub.Config{RecoveryWindow: time.Second},
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 1 {
				gate = newGateHandover(b)
				return gate
			}
			return b
		},
	})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel"}))
	r.drop()
	done := make(chan struct{})
	go func() { defer close(done); r.recover(nodes[1]) }()
	<-gate.asked

	must(t, nodes[2].hub.AddUserToGroup(ctx, "rel", "vip"))
	must(t, nodes[2].hub.RemoveUserFromGroup(ctx, "rel", "vip"))
	close(gate.open)
	<-done

	must(t, nodes[2].hub.SendToGroup(ctx, "vip", text("vip only")))
	must(t, nodes[2].hub.SendToConnection(ctx, r.id, text("end")))
	r.expectData("end")
	r.close()
}
