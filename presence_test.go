package pubsub_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// presenceLog records, in the order the handler is called, every
// connected, joined, left and disconnected event.
type presenceLog struct {
	mu   sync.Mutex
	log  []string // "<event> <connectionId>[ <group>]"
	gone chan string
}

func newPresenceLog() *presenceLog { return &presenceLog{gone: make(chan string, 64)} }

func (p *presenceLog) add(s string) {
	p.mu.Lock()
	p.log = append(p.log, s)
	p.mu.Unlock()
}

func (p *presenceLog) handler() pubsub.EventHandlerFuncs {
	return pubsub.EventHandlerFuncs{
		OnConnected: func(_ context.Context, c pubsub.ConnectionContext) { p.add("connected " + c.ConnectionID) },
		OnDisconnected: func(_ context.Context, c pubsub.ConnectionContext, _ string) {
			p.add("disconnected " + c.ConnectionID)
			p.gone <- c.ConnectionID
		},
		OnGroupJoined: func(_ context.Context, ev pubsub.GroupPresenceEvent) {
			p.add("joined " + ev.ConnectionID + " " + ev.Group)
		},
		OnGroupLeft: func(_ context.Context, ev pubsub.GroupPresenceEvent) {
			p.add("left " + ev.ConnectionID + " " + ev.Group)
		},
	}
}

// of waits for id's disconnected event and returns id's events, without
// the id.
func (p *presenceLog) of(t *testing.T, id string) []string {
	t.Helper()
	for {
		select {
		case g := <-p.gone:
			if g != id {
				continue
			}
		case <-timeAfter():
			t.Fatalf("no disconnected event for %s", id)
		}
		break
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.log {
		ev, rest, _ := strings.Cut(l, " ")
		if rest == id || strings.HasPrefix(rest, id+" ") {
			out = append(out, ev+strings.TrimPrefix(rest, id))
		}
	}
	return out
}

func expectPresence(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}

// Every way into and out of a group is one event, in order, between
// connected and disconnected: the token's groups, the connect response's,
// the client's own requests, each Go API operation, the end of the
// connection. What changes nothing (joining a group it is in, leaving one
// it is not in) is no event.
func TestGroupPresenceEveryPath(t *testing.T) {
	p := newPresenceLog()
	h := p.handler()
	h.OnConnect = func(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
		if req.UserID == "carol" {
			return &pubsub.ConnectResponse{Groups: []string{"from-connect"}}, nil
		}
		return nil, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: h})
	ctx := context.Background()
	alice, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "alice", Groups: []string{"t1", "t2"}, Roles: []string{"webpubsub.joinLeaveGroup"}}))

	alice.Send(`{"type":"joinGroup","group":"a","ackId":1}`)
	alice.ExpectAck(1, "")
	alice.Send(`{"type":"joinGroup","group":"a","ackId":2}`) // in it already
	alice.ExpectAck(2, "")
	alice.Send(`{"type":"leaveGroup","group":"never","ackId":3}`) // not in it
	alice.ExpectAck(3, "")
	must(t, e.hub.AddConnectionToGroup(ctx, id, "b"))
	must(t, e.hub.AddConnectionToGroup(ctx, id, "b"))
	must(t, e.hub.AddUserToGroup(ctx, "alice", "c"))
	must(t, e.hub.RemoveConnectionFromGroup(ctx, id, "a"))
	must(t, e.hub.RemoveConnectionFromGroup(ctx, id, "a"))
	must(t, e.hub.RemoveUserFromGroup(ctx, "alice", "c"))
	must(t, e.hub.AddConnectionsToGroups(ctx, "userId eq 'alice'", "d", "e"))
	must(t, e.hub.RemoveConnectionsFromGroups(ctx, "", "d"))
	alice.Send(`{"type":"leaveGroup","group":"b","ackId":4}`)
	alice.ExpectAck(4, "")
	must(t, e.hub.RemoveConnectionFromAllGroups(ctx, id))
	alice.Send(`{"type":"joinGroup","group":"f","ackId":5}`)
	alice.ExpectAck(5, "")
	must(t, e.hub.AddUserToGroup(ctx, "alice", "g"))
	must(t, e.hub.RemoveUserFromAllGroups(ctx, "alice"))
	alice.Send(`{"type":"joinGroup","group":"h2","ackId":6}`)
	alice.ExpectAck(6, "")
	alice.Send(`{"type":"joinGroup","group":"h1","ackId":7}`)
	alice.ExpectAck(7, "")
	alice.Conn.WriteClose(1000, nil)

	expectPresence(t, p.of(t, id),
		"connected", "joined t1", "joined t2",
		"joined a", "joined b", "joined c", "left a", "left c", "joined d", "joined e", "left d", "left b",
		"left e", "left t1", "left t2", // every group, in name order
		"joined f", "joined g", "left f", "left g",
		"joined h2", "joined h1", "left h1", "left h2", // its end
		"disconnected")

	// The connect event's groups are joined as a token's are; a simple
	// client has groups too.
	carol := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "carol"}), nil)
	members, err := e.hub.ListConnectionsInGroup(ctx, "from-connect")
	must(t, err)
	if len(members) != 1 {
		t.Fatalf("members %v", members)
	}
	must(t, e.hub.CloseConnection(ctx, members[0].ConnectionID, ""))
	carol.ExpectClose()
	expectPresence(t, p.of(t, members[0].ConnectionID), "connected", "joined from-connect", "left from-connect", "disconnected")
}

// A handler that blocks in a presence event holds up nobody: not the
// client's read loop, nor a Go API call, nor a send; the events wait, in
// order, and the last ones reach it before the disconnected event.
func TestGroupPresenceSlowHandlerBlocksNothing(t *testing.T) {
	p := newPresenceLog()
	h := p.handler()
	entered, release := make(chan struct{}), make(chan struct{})
	joined := h.OnGroupJoined
	h.OnGroupJoined = func(ctx context.Context, ev pubsub.GroupPresenceEvent) {
		if ev.Group == "slow" {
			close(entered)
			<-release
		}
		joined(ctx, ev)
	}
	e := newEnv(t, pubsub.Config{EventHandler: h})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before Shutdown, should the test fail first
	ctx := context.Background()
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "u", Roles: allRoles}))
	c.Send(`{"type":"joinGroup","group":"slow","ackId":1}`)
	c.ExpectAck(1, "")
	select {
	case <-entered:
	case <-timeAfter():
		t.Fatal("the joined event did not reach the handler")
	}
	// The handler is stuck in it; everything else goes on.
	c.Send(`{"type":"sendToGroup","group":"slow","ackId":2,"dataType":"text","data":"still here"}`)
	if m := c.NextJSON(); m["data"] != "still here" {
		t.Fatalf("got %v", m)
	}
	c.ExpectAck(2, "")
	must(t, e.hub.AddConnectionToGroup(ctx, id, "x"))
	must(t, e.hub.SendToGroup(ctx, "x", pubsub.TextMessage("to x")))
	if m := c.NextJSON(); m["data"] != "to x" {
		t.Fatalf("got %v", m)
	}
	c.Send(`{"type":"leaveGroup","group":"slow","ackId":3}`)
	c.ExpectAck(3, "")
	other, otherID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"y"}}))
	other.Conn.WriteClose(1000, nil)
	// Another connection's events are not held up behind this one's.
	expectPresence(t, p.of(t, otherID), "connected", "joined y", "left y", "disconnected")
	unblock()
	c.Conn.WriteClose(1000, nil)
	expectPresence(t, p.of(t, id), "connected", "joined slow", "joined x", "left slow", "left x", "disconnected")
}

// A reliable connection whose transport drops and that recovers keeps its
// groups: no event. Its groups are left when its session ends, here by
// Shutdown.
func TestGroupPresenceRecoveryIsNoEvent(t *testing.T) {
	p := newPresenceLog()
	e := newEnv(t, pubsub.Config{EventHandler: p.handler()})
	ctx := context.Background()
	r := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}, Roles: allRoles}))
	for range 2 {
		_ = r.c.Conn.NetConn().Close()
		<-r.c.Done()
		r.recover()
	}
	must(t, e.hub.AddConnectionToGroup(ctx, r.connID, "x"))
	must(t, e.hub.SendToGroup(ctx, "x", pubsub.TextMessage("recovered")))
	r.readUntil(1)
	sctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	must(t, e.svc.Shutdown(sctx))
	expectPresence(t, p.of(t, r.connID), "connected", "joined room", "joined x", "left room", "left x", "disconnected")
}

// A panic in a presence event is contained: the connection and its later
// events go on.
func TestGroupPresencePanicIsContained(t *testing.T) {
	p := newPresenceLog()
	h := p.handler()
	joined := h.OnGroupJoined
	h.OnGroupJoined = func(ctx context.Context, ev pubsub.GroupPresenceEvent) {
		if ev.Group == "boom" {
			panic("the handler failed")
		}
		joined(ctx, ev)
	}
	e := newEnv(t, pubsub.Config{EventHandler: h, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
	c.Send(`{"type":"joinGroup","group":"boom","ackId":1}`)
	c.ExpectAck(1, "")
	c.Send(`{"type":"joinGroup","group":"fine","ackId":2}`)
	c.ExpectAck(2, "")
	c.Conn.WriteClose(1000, nil)
	expectPresence(t, p.of(t, id), "connected", "joined fine", "left boom", "left fine", "disconnected")
}

// A connection whose upgrade fails after it was registered (with its
// token's groups) was never connected: the handler hears of no presence,
// only its disconnected event.
func TestGroupPresenceNoneWithoutConnected(t *testing.T) {
	p := newPresenceLog()
	e := newEnv(t, pubsub.Config{EventHandler: p.handler()})
	h := http.Header{"Sec-Websocket-Version": {"8"}} // gws refuses the upgrade
	if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{UserID: "u", Groups: []string{"g"}}), h); got != http.StatusBadRequest {
		t.Fatalf("status %d", got)
	}
	var id string
	select {
	case id = <-p.gone:
	case <-timeAfter():
		t.Fatal("no disconnected event")
	}
	p.gone <- id
	expectPresence(t, p.of(t, id), "disconnected")
}

// A client whose events pile up behind a slow
// handler fills its queue (4,096); what comes after is dropped, including
// the left events of its end, so the handler is told of joins it never
// hears the end of: it keeps a closed connection in its groups for good.
func TestGroupPresenceOverflowKeepsJoinsBalanced(t *testing.T) {
	p := newPresenceLog()
	h := p.handler()
	entered, release := make(chan struct{}), make(chan struct{})
	joined := h.OnGroupJoined
	h.OnGroupJoined = func(ctx context.Context, ev pubsub.GroupPresenceEvent) {
		if ev.Group == "gate" {
			close(entered)
			<-release
		}
		joined(ctx, ev)
	}
	e := newEnv(t, pubsub.Config{EventHandler: h, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
	c.Send(`{"type":"joinGroup","group":"gate","ackId":1}`)
	c.ExpectAck(1, "")
	<-entered
	// 4,095 events: join a, then (leave a, join a) 2,047 times; then join b,
	// the 4,096th. The queue is full; the connection is in gate, a and b.
	c.Send(`{"type":"joinGroup","group":"a"}`)
	for range 2047 {
		c.Send(`{"type":"leaveGroup","group":"a"}`)
		c.Send(`{"type":"joinGroup","group":"a"}`)
	}
	c.Send(`{"type":"joinGroup","group":"b","ackId":2}`)
	c.ExpectAck(2, "")
	c.Conn.WriteClose(1000, nil)
	<-c.Done()
	// Its end is recorded (the registry lets it go after) while the
	// handler is still held up.
	eventually(t, "the connection's release", func() bool {
		ok, err := e.hub.ConnectionExists(context.Background(), id)
		return err == nil && !ok
	})
	unblock()
	events := p.of(t, id)
	balance := map[string]int{}
	for _, ev := range events {
		kind, group, _ := strings.Cut(ev, " ")
		switch kind {
		case "joined":
			balance[group]++
		case "left":
			balance[group]--
		}
	}
	for g, n := range balance {
		if n != 0 {
			t.Errorf("group %s: %d more joined than left events at disconnected (last events %q)", g, n, events[max(0, len(events)-4):])
		}
	}
}
