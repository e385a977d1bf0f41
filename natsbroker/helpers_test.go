package natsbroker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/natsbroker"
	"github.com/embedwps/pubsub/rest"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	waitFor   = wstest.WaitFor
	accessKey = "cluster-access-key-0123456789abcdef"
	// endpoint is the load balancer's URL, the same for every node.
	endpoint = "http://cluster.test"
)

// startNATS runs a NATS server in process on a random port.
func startNATS(t testing.TB, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(waitFor) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// node is one process of the cluster: a service with a NATS broker,
// mounted in its own httptest server with the REST API.
type node struct {
	t      testing.TB
	id     string
	svc    *pubsub.Service
	srv    *httptest.Server
	hub    *pubsub.Hub
	broker pubsub.Broker
	closed bool
}

type clusterOptions struct {
	cfg pubsub.Config
	// wrap, when set, wraps each node's broker (to make it misbehave).
	wrap func(i int, b pubsub.Broker) pubsub.Broker
	// handler, when set, is each node's event handler.
	handler func(node string) pubsub.EventHandler
}

// newCluster starts n nodes on the NATS server at url.
func newCluster(t testing.TB, url string, n int, opts clusterOptions) []*node {
	t.Helper()
	nodes := make([]*node, n)
	for i := range nodes {
		nodes[i] = newNode(t, url, fmt.Sprintf("node%d", i), i, opts)
	}
	// Every node has heard of every other before the test asks questions
	// that need them all.
	for _, nd := range nodes {
		eventually(t, nd.id+" knows its peers", func() bool { return nd.svc.Stats().Nodes == int64(n) })
	}
	return nodes
}

func newNode(t testing.TB, url, id string, i int, opts clusterOptions) *node {
	t.Helper()
	nb, err := natsbroker.New(natsbroker.Options{URL: url, NodeID: id})
	if err != nil {
		t.Fatal(err)
	}
	var b pubsub.Broker = nb
	if opts.wrap != nil {
		b = opts.wrap(i, nb)
	}
	cfg := opts.cfg
	cfg.AccessKey, cfg.Endpoint, cfg.Broker = accessKey, endpoint, b
	if opts.handler != nil {
		cfg.EventHandler = opts.handler(id)
	}
	svc, err := pubsub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rest.NewServiceHandler(svc, rest.Options{}, nil))
	hub, err := svc.Hub("chat")
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{t: t, id: id, svc: svc, srv: srv, hub: hub, broker: b}
	t.Cleanup(nd.shutdown)
	return nd
}

func (nd *node) shutdown() {
	if nd.closed {
		return
	}
	nd.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := nd.svc.Shutdown(ctx); err != nil {
		nd.t.Errorf("%s: Shutdown: %v", nd.id, err)
	}
	nd.srv.Close()
}

// url is a client URL for hub "chat" on this node.
func (nd *node) url(opts pubsub.TokenOptions) string {
	nd.t.Helper()
	u, err := nd.svc.ClientURL("chat", opts)
	if err != nil {
		nd.t.Fatal(err)
	}
	return strings.Replace(u, "ws://cluster.test", "ws://"+strings.TrimPrefix(nd.srv.URL, "http://"), 1)
}

// client is a JSON subprotocol client and the id the service gave it.
type client struct {
	*wstest.Client
	id, user string
	node     *node
}

func (nd *node) dial(user string, groups ...string) *client {
	nd.t.Helper()
	c, id := wstest.DialJSON(nd.t, nd.url(pubsub.TokenOptions{UserID: user, Groups: groups, Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}}))
	if !strings.HasPrefix(id, nd.id+".") {
		nd.t.Fatalf("connection id %q does not name node %s", id, nd.id)
	}
	return &client{Client: c, id: id, user: user, node: nd}
}

// rest calls the node's REST API with a token for the request's URL.
func (nd *node) rest(method, path string, body string) (int, string) {
	nd.t.Helper()
	u := nd.srv.URL + "/api/hubs/chat" + path
	noQuery, _, _ := strings.Cut(u, "?")
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": noQuery, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(accessKey))
	if err != nil {
		nd.t.Fatal(err)
	}
	req, err := http.NewRequest(method, u+sep(u)+"api-version=2024-01-01", strings.NewReader(body))
	if err != nil {
		nd.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		nd.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

// messages reads c's data messages until the marker (a message whose data
// is the string marker) and returns their data, as strings.
func (c *client) messagesUntil(t testing.TB, marker string) []string {
	t.Helper()
	var out []string
	for {
		m := c.NextJSON()
		if m["type"] != "message" {
			continue
		}
		data := fmt.Sprint(m["data"])
		if data == marker {
			return out
		}
		out = append(out, data)
	}
}

// nextMessage returns c's next data message.
func (c *client) nextMessage(t testing.TB) map[string]any {
	t.Helper()
	for {
		m := c.NextJSON()
		if m["type"] == "message" {
			return m
		}
	}
}

// tryMessage returns c's next data message if one comes within d.
func (c *client) tryMessage(d time.Duration) (map[string]any, bool) {
	deadline := time.After(d)
	for {
		select {
		case f := <-c.Frames():
			var m map[string]any
			if json.Unmarshal(f.Data, &m) == nil && m["type"] == "message" {
				return m, true
			}
		case <-deadline:
			return nil, false
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func text(s string) pubsub.Message { return pubsub.TextMessage(s) }

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// newClusterFreezing starts n nodes whose node i can be frozen (its
// deliveries held, as a node that stops answering).
func newClusterFreezing(t testing.TB, url string, n, i int, cfg pubsub.Config) ([]*node, *freezable) {
	t.Helper()
	var f *freezable
	nodes := newCluster(t, url, n, clusterOptions{
		cfg: cfg,
		wrap: func(j int, b pubsub.Broker) pubsub.Broker {
			if j == i {
				f = &freezable{Broker: b}
				return f
			}
			return b
		},
	})
	return nodes, f
}

// freezable is a broker whose deliveries to its node can be held, to
// make a node that stops answering.
type freezable struct {
	pubsub.Broker
	mu       sync.Mutex
	frozen   bool
	held     []func()
	heldData [][]byte
}

func (f *freezable) Start(receive func(string, []byte, func([]byte))) error {
	return f.Broker.Start(func(subject string, data []byte, reply func([]byte)) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.frozen {
			f.held = append(f.held, func() { receive(subject, data, reply) })
			f.heldData = append(f.heldData, data)
			return
		}
		receive(subject, data, reply)
	})
}

func (f *freezable) freeze() { f.mu.Lock(); f.frozen = true; f.mu.Unlock() }

// thaw delivers what was held, in order, under the lock that the broker's
// own deliveries wait for meanwhile.
func (f *freezable) thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.held {
		h()
	}
	f.held, f.heldData, f.frozen = nil, nil, false
}
