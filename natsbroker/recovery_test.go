package natsbroker_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

const reliableJSON = "json.reliable.webpubsub.azure.v1"

// reliableClient is a json.reliable client that keeps what a client SDK
// keeps: the last sequence id, acknowledged every few messages, and its
// data in order, duplicates (replays it had) dropped.
type reliableClient struct {
	t         testing.TB
	conn      *wstest.Client
	id, token string
	lastSeq   uint64
	got       []string
	received  atomic.Int64
	progress  chan struct{} // signalled at each message received
}

func dialReliable(t testing.TB, u string) *reliableClient {
	t.Helper()
	c := wstest.Dial(t, u, nil, reliableJSON)
	m := c.NextJSON()
	if m["type"] != "system" || m["event"] != "connected" {
		t.Fatalf("first message is not connected: %v", m)
	}
	return &reliableClient{t: t, conn: c, id: m["connectionId"].(string), token: m["reconnectionToken"].(string), progress: make(chan struct{}, 1)}
}

// recover resumes the connection on the node at base (a node's ws:// URL).
func (r *reliableClient) recover(nd *node) {
	r.t.Helper()
	u := "ws://" + strings.TrimPrefix(nd.srv.URL, "http://") + "/client/hubs/chat?awps_connection_id=" +
		url.QueryEscape(r.id) + "&awps_reconnection_token=" + url.QueryEscape(r.token)
	r.conn = wstest.Dial(r.t, u, nil, reliableJSON)
}

// read takes messages until the transport ends or until done says so. It
// fails on a gap in the sequence.
func (r *reliableClient) read(done func(data string) bool) (transportEnded bool) {
	r.t.Helper()
	for {
		var f wstest.Frame
		select {
		case f = <-r.conn.Frames():
		case <-time.After(waitFor):
			r.t.Fatalf("no message for %v after sequence id %d", waitFor, r.lastSeq)
		case <-r.conn.Done():
			select {
			case f = <-r.conn.Frames():
			default:
				return true
			}
		}
		var m map[string]any
		if err := jsonUnmarshal(f.Data, &m); err != nil {
			r.t.Fatalf("not JSON: %q", f.Data)
		}
		if m["type"] != "message" {
			continue
		}
		seq := uint64(m["sequenceId"].(float64))
		if seq <= r.lastSeq {
			continue // a replay of what it has
		}
		if seq != r.lastSeq+1 {
			r.t.Fatalf("sequence gap: %d after %d", seq, r.lastSeq)
		}
		r.lastSeq = seq
		data := fmt.Sprint(m["data"])
		r.got = append(r.got, data)
		r.received.Add(1)
		select {
		case r.progress <- struct{}{}:
		default:
		}
		if seq%16 == 0 {
			// The transport may be gone already: the ack is lost with it.
			_ = r.conn.Conn.WriteString(fmt.Sprintf(`{"type":"sequenceAck","sequenceId":%d}`, seq))
		}
		if done(data) {
			return false
		}
	}
}

// events records the connected and disconnected events of every node, and
// the connection state each disconnected event carries; every connection
// is given the state "kept" at its connect.
type events struct {
	mu     sync.Mutex
	log    []string
	states map[string]string
}

func (e *events) handler(node string) pubsub.EventHandler {
	return pubsub.EventHandlerFuncs{
		OnConnect: func(context.Context, *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
			kept := "kept"
			return &pubsub.ConnectResponse{ConnectionState: &kept}, nil
		},
		OnConnected: func(_ context.Context, c pubsub.ConnectionContext) {
			e.mu.Lock()
			e.log = append(e.log, "connected "+c.ConnectionID+" on "+node)
			e.mu.Unlock()
		},
		OnDisconnected: func(_ context.Context, c pubsub.ConnectionContext, _ string) {
			e.mu.Lock()
			e.log = append(e.log, "disconnected "+c.ConnectionID+" on "+node)
			if e.states == nil {
				e.states = make(map[string]string)
			}
			e.states[c.ConnectionID] = c.ConnectionState
			e.mu.Unlock()
		},
	}
}

func (e *events) of(id string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, l := range e.log {
		if strings.Contains(l, " "+id+" ") {
			out = append(out, l)
		}
	}
	return out
}

// publish sends n messages "m0".."m<n-1>" to room, round-robin over the
// nodes, keeping at most 200 ahead of what r has received (so that a
// detached session's replay buffer never fills).
func publish(t testing.TB, nodes []*node, r *reliableClient, n int) <-chan error {
	errs := make(chan error, 1)
	go func() {
		for i := range n {
			for int64(i)-r.received.Load() > 200 {
				<-r.progress // the reader took a message
			}
			if err := nodes[i%len(nodes)].hub.SendToGroup(context.Background(), "room", text(fmt.Sprint("m", i))); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	return errs
}

func checkSequence(t testing.TB, got []string, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("got %d messages, want %d", len(got), n)
	}
	for i, d := range got {
		if d != fmt.Sprint("m", i) {
			t.Fatalf("message %d is %q", i, d)
		}
	}
}

// A reliable client whose transport is cut recovers on another node with
// its sequence, unacknowledged messages, groups, user and permissions, and
// loses and duplicates nothing; its events stay on one node each, once.
func TestReliableClientRecoversOnAnotherNode(t *testing.T) {
	ns := startNATS(t, -1)
	ev := &events{}
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{handler: ev.handler})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(nodes[0].srv.URL, "http://"))
	r := dialReliable(t, proxy.URL(nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}, Roles: []string{"webpubsub.sendToGroup.room"}})))
	if !strings.HasPrefix(r.id, "node0.") {
		t.Fatalf("id %q", r.id)
	}
	const n = 3000
	published := publish(t, nodes, r, n)
	r.read(func(string) bool { return r.received.Load() == 800 })
	proxy.Drop()
	for !r.read(func(string) bool { return false }) {
	}
	began := time.Now()
	r.recover(nodes[2])
	t.Logf("a recovery on another node (handshake, takeover, handover) took %v", time.Since(began))
	r.read(func(d string) bool { return d == fmt.Sprint("m", n-1) })
	must(t, <-published)
	checkSequence(t, r.got, n)

	// The connection lives on node2 now, and answers as before wherever
	// it is addressed.
	ctx := context.Background()
	if c := nodes[0].svc.Stats().Connections; c != 0 {
		t.Fatalf("node0 still holds %d connections", c)
	}
	ok, err := nodes[1].hub.ConnectionExists(ctx, r.id)
	must(t, err)
	allowed, err := nodes[1].hub.CheckPermission(ctx, r.id, pubsub.PermissionSendToGroup, "room")
	must(t, err)
	if !ok || !allowed {
		t.Fatalf("exists %v, allowed to send to room %v", ok, allowed)
	}
	must(t, nodes[1].hub.SendToConnection(ctx, r.id, text("direct")))
	must(t, nodes[0].hub.SendToUser(ctx, "rel", text("user")))
	must(t, nodes[2].hub.SendToGroup(ctx, "room", text("group")))
	var after []string
	r.read(func(d string) bool { after = append(after, d); return len(after) == 3 })
	if strings.Join(after, ",") != "direct,user,group" {
		t.Fatalf("after the recovery: %v", after)
	}
	r.conn.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"mine","ackId":1}`)
	r.conn.ExpectAck(1, "")

	must(t, nodes[1].hub.CloseConnection(ctx, r.id, "done"))
	<-r.conn.Done()
	eventually(t, "the disconnected event", func() bool { return len(ev.of(r.id)) == 2 })
	if got := ev.of(r.id); got[0] != "connected "+r.id+" on node0" || got[1] != "disconnected "+r.id+" on node2" {
		t.Fatalf("events: %v", got)
	}
	ev.mu.Lock()
	state := ev.states[r.id]
	ev.mu.Unlock()
	if state != "kept" {
		t.Fatalf("the connection state node2 raised the disconnected event with: %q, want the one set at connect", state)
	}
}

// A node shut down mid-stream hands its reliable connections over: their
// clients recover on another node with nothing lost, and the node's
// Shutdown returns once they have.
func TestShutdownHandsReliableClientsOver(t *testing.T) {
	ns := startNATS(t, -1)
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{})
	r := dialReliable(t, nodes[0].url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}))
	const n = 2000
	published := publish(t, nodes[1:], r, n)
	r.read(func(string) bool { return r.received.Load() == 500 })
	shutdown := make(chan struct{})
	go func() { nodes[0].shutdown(); close(shutdown) }()
	for !r.read(func(string) bool { return false }) {
	}
	r.recover(nodes[1])
	<-shutdown
	r.read(func(d string) bool { return d == fmt.Sprint("m", n-1) })
	must(t, <-published)
	checkSequence(t, r.got, n)
	r.close()
}

// close ends the session as a client SDK's stop does: with a close frame.
func (r *reliableClient) close() {
	_ = r.conn.Conn.WriteClose(1000, nil)
	<-r.conn.Done()
}
