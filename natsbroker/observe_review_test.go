package natsbroker_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// connCounts counts, cluster-wide, the connections the observers were told
// opened and closed.
type connCounts struct {
	mu             sync.Mutex
	opened, closed map[string]int
}

func (o *connCounts) ConnectionChanged(ev pubsub.ConnectionEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.opened == nil {
		o.opened, o.closed = map[string]int{}, map[string]int{}
	}
	switch ev.Kind {
	case pubsub.ConnectionOpened:
		o.opened[ev.ConnectionID]++
	case pubsub.ConnectionClosed:
		o.closed[ev.ConnectionID]++
	}
}
func (o *connCounts) MessageReceived(pubsub.MessageEvent) {}
func (o *connCounts) MessageSent(pubsub.MessageEvent)     {}

func (o *connCounts) of(id string) (opened, closed int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.opened[id], o.closed[id]
}

// A connection opened on one node is closed once, somewhere in the
// cluster (the Observer's contract). Here its recovery on node1 fails
// after the owner (node0) let its session go: node1 began shutting down
// between the takeover and the handover, so the session cannot be
// registered there and ends on node1 (the event handler is told it
// disconnected). node0 left it without a close, as after any handover:
// node1 must tell its observers it closed, or connections_opened_total
// and connections_closed_total never balance.
func TestObserverHandoverToAShuttingDownNodeCloses(t *testing.T) {
	ns := startNATS(t, -1)
	ev := &events{}
	obs := &connCounts{}
	var owner *freezeAfterTakeover
	nodes := newCluster(t, ns.ClientURL(), 2, clusterOptions{
		cfg:     pubsub.Config{Observers: []pubsub.Observer{obs}},
		handler: ev.handler,
		wrap: func(i int, b pubsub.Broker) pubsub.Broker {
			if i == 0 {
				owner = &freezeAfterTakeover{freezable{Broker: b}}
				return owner
			}
			return b
		},
	})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel"}))
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

	shutdown := make(chan error, 1)
	nodes[1].closed = true
	go func() { shutdown <- nodes[1].svc.Shutdown(context.Background()) }()
	eventually(t, "node1 is shutting down", func() bool {
		return errors.Is(nodes[1].hub.SendToAll(context.Background(), text("x")), pubsub.ErrServiceClosed)
	})
	owner.thaw()
	if c := <-recovered; c != nil {
		<-c.Done()
	}
	must(t, <-shutdown)
	nodes[1].srv.Close()

	eventually(t, "the disconnected event", func() bool { return len(ev.of(r.id)) >= 2 })
	if got := ev.of(r.id); len(got) != 2 || !strings.HasSuffix(got[1], "on node1") {
		t.Fatalf("events: %v", got) // not the path this test is about
	}
	if opened, closed := obs.of(r.id); opened != 1 || closed != 1 {
		t.Fatalf("the observers were told it opened %d times and closed %d times, want once each", opened, closed)
	}
}
