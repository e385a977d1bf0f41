package natsbroker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
)

// presence records every node's connected, joined, left and disconnected
// events, in the order each node raised them.
type presence struct {
	mu   sync.Mutex
	log  []string // "<event>[ <group>] on <node>", per connection
	ids  []string
	hubs map[string]*pubsub.Hub // each node's, for the handler to call
}

func (p *presence) handler(node string) pubsub.EventHandler {
	add := func(id, s string) {
		p.mu.Lock()
		p.log = append(p.log, s+" on "+node)
		p.ids = append(p.ids, id)
		p.mu.Unlock()
	}
	return pubsub.EventHandlerFuncs{
		OnConnected: func(_ context.Context, c pubsub.ConnectionContext) { add(c.ConnectionID, "connected") },
		OnDisconnected: func(_ context.Context, c pubsub.ConnectionContext, _ string) {
			add(c.ConnectionID, "disconnected")
		},
		OnGroupJoined: func(ctx context.Context, ev pubsub.GroupPresenceEvent) {
			// The handler may call the Go API, which waits for the broker:
			// it is not called on the broker's goroutine.
			p.mu.Lock()
			hub := p.hubs[node]
			p.mu.Unlock()
			ctx, cancel := context.WithTimeout(ctx, waitFor)
			defer cancel()
			s := "joined " + ev.Group
			if ok, err := hub.ConnectionExists(ctx, ev.ConnectionID); !ok || err != nil {
				s += fmt.Sprintf(" (exists: %v, %v)", ok, err)
			}
			add(ev.ConnectionID, s)
		},
		OnGroupLeft: func(_ context.Context, ev pubsub.GroupPresenceEvent) { add(ev.ConnectionID, "left "+ev.Group) },
	}
}

func (p *presence) of(id string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for i, l := range p.log {
		if p.ids[i] == id {
			out = append(out, l)
		}
	}
	return out
}

// A reliable connection handed over to another node has not left its
// groups: neither node raises a presence event for the handover. Each
// change is raised by the node that holds the connection when it is made,
// wherever it was asked for, and the groups are left where the session
// ends. The handler may call the Go API from a presence event.
func TestGroupPresenceAcrossAHandover(t *testing.T) {
	ns := startNATS(t, -1)
	p := &presence{}
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{handler: p.handler})
	p.mu.Lock()
	p.hubs = map[string]*pubsub.Hub{"node0": nodes[0].hub, "node1": nodes[1].hub}
	p.mu.Unlock()
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}, Roles: []string{"webpubsub.joinLeaveGroup"}}))
	must(t, nodes[1].hub.AddConnectionToGroup(ctx, r.id, "extra")) // applied by node0, which holds it
	before := []string{"connected on node0", "joined room on node0", "joined extra on node0"}
	eventually(t, "node0's events", func() bool { return len(p.of(r.id)) == len(before) })

	r.drop()
	r.recover(nodes[1])
	r.conn.Send(`{"type":"leaveGroup","group":"extra","ackId":1}`)
	r.conn.ExpectAck(1, "")
	must(t, nodes[0].hub.AddConnectionToGroup(ctx, r.id, "late")) // applied by node1 now
	must(t, nodes[0].hub.SendToGroup(ctx, "late", text("in late")))
	r.expectData("in late")
	must(t, nodes[0].hub.CloseConnection(ctx, r.id, "done"))
	<-r.conn.Done()

	want := slices.Concat(before, []string{"left extra on node1", "joined late on node1", "left late on node1", "left room on node1", "disconnected on node1"})
	eventually(t, "the disconnected event", func() bool { return len(p.of(r.id)) >= len(want) })
	if got := p.of(r.id); !slices.Equal(got, want) {
		t.Fatalf("events\n got %s\nwant %s", strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

// A presence event still waiting on the old node when
// the connection is handed over is raised there later, after the new node
// raised the connection's left and disconnected events for the same group.
// The handler sees left before joined, and an event after disconnected.
func TestGroupPresencePendingOnOldNodeAfterHandover(t *testing.T) {
	ns := startNATS(t, -1)
	p := &presence{}
	entered, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(unblock) }) }) // before the nodes shut down
	handler := func(node string) pubsub.EventHandler {
		h := p.handler(node).(pubsub.EventHandlerFuncs)
		add := func(id, s string) {
			p.mu.Lock()
			p.log = append(p.log, s+" on "+node)
			p.ids = append(p.ids, id)
			p.mu.Unlock()
		}
		h.OnGroupJoined = func(_ context.Context, ev pubsub.GroupPresenceEvent) {
			add(ev.ConnectionID, "joined "+ev.Group)
			if node == "node0" && ev.Group == "slow" {
				close(entered)
				<-unblock // a slow handler: node0's later events wait
			}
		}
		return h
	}
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{handler: handler})
	ctx := context.Background()
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Roles: []string{"webpubsub.joinLeaveGroup"}}))
	r.conn.Send(`{"type":"joinGroup","group":"slow","ackId":1}`)
	r.conn.ExpectAck(1, "")
	<-entered
	r.conn.Send(`{"type":"joinGroup","group":"late","ackId":2}`) // waits behind "slow" on node0
	r.conn.ExpectAck(2, "")

	r.drop()
	r.recover(nodes[1])
	must(t, nodes[1].hub.SendToGroup(ctx, "late", text("in late")))
	r.expectData("in late") // node1 holds it, in "late"
	must(t, nodes[1].hub.CloseConnection(ctx, r.id, "done"))
	<-r.conn.Done()
	eventually(t, "the disconnected event", func() bool {
		return slices.Contains(p.of(r.id), "disconnected on node1")
	})
	once.Do(func() { close(unblock) })
	eventually(t, "a joined event for late", func() bool {
		return slices.ContainsFunc(p.of(r.id), func(s string) bool { return strings.HasPrefix(s, "joined late") })
	})
	got := p.of(r.id)
	joined := slices.IndexFunc(got, func(s string) bool { return strings.HasPrefix(s, "joined late") })
	left := slices.IndexFunc(got, func(s string) bool { return strings.HasPrefix(s, "left late") })
	if left < joined || got[len(got)-1] != "disconnected on node1" {
		t.Fatalf("joined late after its left, or an event after disconnected:\n%s", strings.Join(got, "\n"))
	}
}
