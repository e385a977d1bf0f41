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
