package natsbroker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// hostOf is a node's host:port.
func hostOf(nd *node) string { return strings.TrimPrefix(nd.srv.URL, "http://") }

// TestOfficialJSClientRecoversOnAnotherNode: Azure's own
// @azure/web-pubsub-client, in its default reliable mode, reaches a
// three-node cluster through a load balancer (a TCP proxy) that sends it to
// node0. Mid-stream the balancer cuts it, and once the rest of the
// messages is sent, sends every new connection to node2: the client
// recovers there by itself, with the URL it was given, and node2 takes its
// session over from node0. It receives every message, published
// round-robin through the nodes before and while it was away, once and in
// order, with one connection id; the connected event was
// raised once, on node0, and the disconnected one only when it stopped,
// on node2.
func TestOfficialJSClientRecoversOnAnotherNode(t *testing.T) {
	dir := wstest.Interop(t, "../interop")
	ns := startNATS(t, -1)
	ev := &events{}
	nodes := newCluster(t, ns.ClientURL(), 3, clusterOptions{handler: ev.handler})
	balancer := wstest.NewProxy(t, hostOf(nodes[0]))
	u := balancer.URL(nodes[0].url(pubsub.TokenOptions{UserID: "js", Roles: []string{"webpubsub.joinLeaveGroup.g"}}))

	const n = 400
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client-reliable-stay.mjs", u, strconv.Itoa(n))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // closing it stops the client
	must(t, err)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	wait := sync.OnceValue(cmd.Wait)
	t.Cleanup(func() { cancel(); _ = wait() }) // a failed test kills the client before the nodes stop

	send := func(from, to int) {
		t.Helper()
		for i := from; i <= to; i++ {
			must(t, nodes[i%len(nodes)].hub.SendToGroup(ctx, "g", pubsub.TextMessage(strconv.Itoa(i))))
		}
	}
	var (
		id          string
		acceptedCut int
		done        bool
		stopped     map[string]any
	)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("node printed %q", sc.Text())
		}
		switch line["step"] {
		case "connected":
			if id != "" {
				t.Fatalf("the client connected anew, as %v after %s: its recovery was refused", line["connectionId"], id)
			}
			id, _ = line["connectionId"].(string)
			if !strings.HasPrefix(id, "node0.") {
				t.Fatalf("connection id %q: the balancer sends the client to node0", id)
			}
		case "joined":
			send(1, n/2)
		case "half":
			// The client has half. The balancer cuts it and has no server
			// for it while the rest is sent (its recovery attempts fail and
			// it retries), then sends it to node2.
			acceptedCut = balancer.Accepted()
			balancer.SetTarget("")
			balancer.Drop()
			send(n/2+1, n)
			balancer.SetTarget(hostOf(nodes[2]))
		case "done":
			done = true
			checkRecoveredOnNode2(t, ctx, nodes, ev, line, id, n)
			if got := balancer.Accepted(); got < 2 || got <= acceptedCut {
				t.Fatalf("the balancer forwarded %d transports, %d before the cut: the client did not come back", got, acceptedCut)
			}
			must(t, stdin.Close()) // the client stops: its session ends
		case "stopped":
			stopped = line
		}
	}
	if err := wait(); err != nil {
		t.Fatalf("node: %v", err)
	}
	if !done {
		t.Fatal("the client did not receive every message")
	}
	if stopped == nil || stopped["received"] != float64(n) {
		t.Fatalf("the client stopped with %v: messages after the last one", stopped)
	}
	// The session ended where it lived: one disconnected event, on node2.
	eventually(t, "the disconnected event", func() bool { return len(ev.of(id)) == 2 })
	want := []string{"connected " + id + " on node0", "disconnected " + id + " on node2"}
	if got := ev.of(id); !reflect.DeepEqual(got, want) {
		t.Fatalf("events: %v\nwant %v", got, want)
	}
	for _, nd := range nodes {
		if c := nd.svc.Stats().Connections; c != 0 {
			t.Fatalf("%s holds %d connections after the client stopped", nd.id, c)
		}
	}
}

// checkRecoveredOnNode2 checks, while the client is still connected, what
// it reported once it had every message, and that its connection lives on
// node2 now.
func checkRecoveredOnNode2(t *testing.T, ctx context.Context, nodes []*node, ev *events, done map[string]any, id string, n int) {
	t.Helper()
	received, _ := done["received"].([]any)
	if len(received) != n {
		t.Fatalf("the client received %d messages, want %d", len(received), n)
	}
	for i, v := range received {
		if v != strconv.Itoa(i+1) {
			t.Fatalf("message %d is %v: lost, duplicated or out of order", i+1, v)
		}
	}
	if conns, _ := done["connections"].([]any); len(conns) != 1 || conns[0] != id {
		t.Fatalf("connected events in the client: %v, want one connection id, of node0: it reconnected rather than recovered", conns)
	}
	if d, _ := done["disconnects"].([]any); len(d) != 0 {
		t.Fatalf("disconnected events in the client: %v", d)
	}
	for i, want := range []int64{0, 0, 1} {
		if c := nodes[i].svc.Stats().Connections; c != want {
			t.Fatalf("%s holds %d connections, want %d: the session did not move to node2", nodes[i].id, c, want)
		}
	}
	if ok, err := nodes[1].hub.ConnectionExists(ctx, id); err != nil || !ok {
		t.Fatalf("node1: the connection exists %v, %v", ok, err)
	}
	if got, want := ev.of(id), []string{"connected " + id + " on node0"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events before the client stopped: %v\nwant %v", got, want)
	}
}
