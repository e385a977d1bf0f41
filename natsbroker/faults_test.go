package natsbroker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/natsbroker"
)

// Sends from one publisher reach every receiver, on every node, in the
// order they were made: a Go API caller that awaits each call while going
// from node to node, and a client.
func TestOnePublishersSendsKeepTheirOrder(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{})
	var receivers []*client
	for i, nd := range nodes {
		receivers = append(receivers, nd.dial(fmt.Sprint("r", i), "room"))
	}
	publisher := nodes[1].dial("pub")
	const n = 300
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			// Every kind of send, round-robin over the nodes.
			nd := nodes[i%3]
			var err error
			switch i % 4 {
			case 0:
				err = nd.hub.SendToGroup(ctx, "room", text(fmt.Sprint("api", i)))
			case 1:
				err = nd.hub.SendToAll(ctx, text(fmt.Sprint("api", i)), pubsub.Excluding(publisher.id))
			case 2:
				err = nd.hub.SendToUser(ctx, "r2", text(fmt.Sprint("api", i)))
			case 3:
				err = nd.hub.SendToConnection(ctx, receivers[i%3].id, text(fmt.Sprint("api", i)))
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range n {
		publisher.Send(fmt.Sprintf(`{"type":"sendToGroup","group":"room","dataType":"text","data":"client%d"}`, i))
	}
	wg.Wait()
	for ri, r := range receivers {
		var want []string
		for i := range n {
			if i%4 != 2 && i%4 != 3 || i%4 == 2 && ri == 2 || i%4 == 3 && i%3 == ri {
				want = append(want, fmt.Sprint("api", i))
			}
		}
		var api, cl []string
		for len(api) < len(want) || len(cl) < n {
			d := fmt.Sprint(r.nextMessage(t)["data"])
			if strings.HasPrefix(d, "api") {
				api = append(api, d)
			} else {
				cl = append(cl, d)
			}
		}
		if !slices.Equal(api, want) {
			t.Errorf("r%d: the Go API caller's sends out of order or missing:\n got %v\nwant %v", ri, api, want)
		}
		for i, d := range cl {
			if d != fmt.Sprint("client", i) {
				t.Fatalf("r%d: the client's send %d is %q", ri, i, d)
			}
		}
	}
}

// A node that stops answering makes the questions that need it fail with
// ErrNodeUnavailable within ClusterTimeout, counted; what the other nodes
// can answer alone is answered; sends go on.
func TestANodeThatStopsAnswering(t *testing.T) {
	ns := startNATS(t, -1)
	nodes, frozen := newClusterFreezing(t, ns.ClientURL(), 3, 2, pubsub.Config{ClusterTimeout: 300 * time.Millisecond})
	a := nodes[0].dial("a", "room")
	c := nodes[2].dial("c", "room")
	frozen.freeze()
	ctx := context.Background()
	start := time.Now()
	if _, err := nodes[1].hub.ListConnectionsInGroup(ctx, "room"); !errors.Is(err, pubsub.ErrNodeUnavailable) || !strings.Contains(err.Error(), "node2") {
		t.Fatalf("list with node2 silent: %v", err)
	}
	if _, err := nodes[0].hub.ConnectionExists(ctx, c.id); !errors.Is(err, pubsub.ErrNodeUnavailable) {
		t.Fatalf("exists of node2's connection: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the two questions took %v with a 300 ms timeout", d)
	}
	if ok, err := nodes[1].hub.GroupExists(ctx, "room"); err != nil || !ok {
		t.Fatalf("room exists on node0 whatever node2 says: %v %v", ok, err)
	}
	if got := nodes[1].svc.Stats().ClusterTimeouts + nodes[0].svc.Stats().ClusterTimeouts; got != 2 {
		t.Fatalf("ClusterTimeouts: %d, want 2", got)
	}
	must(t, nodes[1].hub.SendToGroup(ctx, "room", text("while frozen")))
	if m := a.nextMessage(t); m["data"] != "while frozen" {
		t.Fatalf("a got %v", m)
	}
	frozen.thaw()
	if m := c.nextMessage(t); m["data"] != "while frozen" {
		t.Fatalf("c got %v once node2 answered again", m)
	}
	members, err := nodes[1].hub.ListConnectionsInGroup(ctx, "room")
	must(t, err)
	if len(members) != 2 {
		t.Fatalf("room: %v", members)
	}
}

// NATS restarting does not take the nodes down: while it is away each
// serves its own connections (a send made on a node reaches its
// connections and nobody else's: that is what is lost; questions that need
// another node fail), and when it is back they reconnect, resubscribe and
// answer as one again.
func TestNATSRestart(t *testing.T) {
	ns := startNATS(t, -1)
	port := ns.Addr().(*net.TCPAddr).Port
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{cfg: pubsub.Config{ClusterTimeout: 500 * time.Millisecond}})
	a := nodes[0].dial("a", "room")
	b := nodes[1].dial("b", "room")
	ctx := context.Background()
	connected := func(nd *node) bool { return nd.broker.(*natsbroker.Broker).Connected() }

	ns.Shutdown()
	ns.WaitForShutdown()
	eventually(t, "the nodes see NATS gone", func() bool { return !connected(nodes[0]) && !connected(nodes[1]) })
	must(t, nodes[0].hub.SendToGroup(ctx, "room", text("while away")))
	if m := a.nextMessage(t); m["data"] != "while away" {
		t.Fatalf("a got %v", m)
	}
	if nodes[0].svc.Stats().BrokerErrors == 0 {
		t.Fatal("the refused send is not counted")
	}
	if ok, err := nodes[0].hub.ConnectionExists(ctx, a.id); err != nil || !ok {
		t.Fatalf("node0 answers for its own connection: %v %v", ok, err)
	}
	if _, err := nodes[1].hub.ConnectionExists(ctx, a.id); !errors.Is(err, pubsub.ErrNodeUnavailable) {
		t.Fatalf("node1 asking about node0's connection: %v", err)
	}

	startNATS(t, port)
	eventually(t, "the nodes reconnect", func() bool { return connected(nodes[0]) && connected(nodes[1]) })
	// b missed "while away" for good; the first message it gets is one sent
	// after NATS came back, once node1's subscriptions are restored.
	for k := 0; ; k++ {
		must(t, nodes[0].hub.SendToGroup(ctx, "room", text(fmt.Sprint("probe", k))))
		if m, ok := b.tryMessage(100 * time.Millisecond); ok {
			if !strings.HasPrefix(fmt.Sprint(m["data"]), "probe") {
				t.Fatalf("b got %v", m)
			}
			break
		}
		if k > 100 {
			t.Fatal("node1 never got a send from node0 after NATS came back")
		}
	}
	eventually(t, "the nodes know each other again", func() bool {
		members, err := nodes[1].hub.ListConnectionsInGroup(ctx, "room")
		return err == nil && len(members) == 2
	})
}

// Pipelined sends an event handler makes in a client's user events (a
// chat app's pattern) keep the client's order on every node, although they
// do not wait for the broker.
func TestEventHandlerSendsKeepTheClientsOrder(t *testing.T) {
	ns := startNATS(t, -1)
	hubs := make(map[string]*pubsub.Hub)
	var mu sync.Mutex
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{handler: func(node string) pubsub.EventHandler {
		return pubsub.EventHandlerFuncs{OnUserEvent: func(ctx context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			mu.Lock()
			h := hubs[node]
			mu.Unlock()
			return nil, h.SendToGroup(ctx, "room", pubsub.Message{DataType: req.DataType, Data: req.Data}, pubsub.Pipelined())
		}}
	}})
	mu.Lock()
	for _, nd := range nodes {
		hubs[nd.id] = nd.hub
	}
	mu.Unlock()
	var receivers []*client
	for i, nd := range nodes {
		receivers = append(receivers, nd.dial(fmt.Sprint("r", i), "room"))
	}
	publisher := nodes[0].dial("pub")
	const n = 300
	for i := range n {
		publisher.Send(fmt.Sprintf(`{"type":"event","event":"say","dataType":"text","data":"e%d"}`, i))
	}
	for ri, r := range receivers {
		for i := range n {
			if d := fmt.Sprint(r.nextMessage(t)["data"]); d != fmt.Sprint("e", i) {
				t.Fatalf("r%d: message %d is %q", ri, i, d)
			}
		}
	}
}

// NATS restarted in the middle of a stream: the publisher's node keeps
// delivering to its own members while NATS is away (at most the sends in
// flight when it went are lost there), the other node's member misses what
// was sent meanwhile and gets the stream again once NATS is back; nobody
// gets a message twice or out of order.
func TestNATSRestartMidStream(t *testing.T) {
	ns := startNATS(t, -1)
	port := ns.Addr().(*net.TCPAddr).Port
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{cfg: pubsub.Config{ClusterTimeout: 300 * time.Millisecond}})
	a := nodes[0].dial("a", "room")
	b := nodes[1].dial("b", "room")
	connected := func(nd *node) bool { return nd.broker.(*natsbroker.Broker).Connected() }

	stop := make(chan struct{})
	published := make(chan int, 1)
	var stopOnce sync.Once
	var last int
	stopPublisher := func() int {
		stopOnce.Do(func() { close(stop); last = <-published })
		return last
	}
	t.Cleanup(func() { stopPublisher() }) // before the nodes stop, also on a failure
	go func() {
		i := 0
		defer func() { published <- i }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := nodes[0].hub.SendToGroup(context.Background(), "room", text(fmt.Sprint(i))); err != nil {
				t.Error(err)
				return
			}
			i++
		}
	}()
	var gotA, gotB []int
	read := func(c *client, into *[]int, n int) {
		t.Helper()
		for range n {
			var v int
			fmt.Sscan(fmt.Sprint(c.nextMessage(t)["data"]), &v)
			*into = append(*into, v)
		}
	}
	read(b, &gotB, 50)
	ns.Shutdown()
	ns.WaitForShutdown()
	eventually(t, "node0 sees NATS gone", func() bool { return !connected(nodes[0]) })
	read(a, &gotA, 100) // node0 goes on delivering to its own member
	startNATS(t, port)
	eventually(t, "the nodes reconnect", func() bool { return connected(nodes[0]) && connected(nodes[1]) })
	read(b, &gotB, 50) // node1's member gets the stream again
	last = stopPublisher()
	// Drain the rest: every message up to the last published, of those each got.
	for len(gotA) == 0 || gotA[len(gotA)-1] < last-1 {
		read(a, &gotA, 1)
	}
	for _, got := range [][]int{gotA, gotB} {
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Fatalf("out of order or twice: %d after %d", got[i], got[i-1])
			}
		}
	}
	gaps := func(got []int) (n int) {
		for i := 1; i < len(got); i++ {
			n += got[i] - got[i-1] - 1
		}
		return n
	}
	if gaps(gotB) == 0 {
		t.Fatal("node1's member missed nothing while NATS was away: was it away?")
	}
	if g := gaps(gotA); g > 5 {
		t.Fatalf("node0's own member missed %d messages (only those in flight when NATS went may be lost): %v", g, gotA)
	}
	t.Logf("published %d; node0's member got %d of them; node1's missed %d while NATS was away", last, len(gotA), gaps(gotB))
}
