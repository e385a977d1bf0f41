package main

import (
	"bufio"
	"bytes"
	"flag"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/nats-io/nats-server/v2/server"
)

// clusterCS is the connection string every node of a test cluster takes:
// one access key, and the load balancer's URL as Endpoint.
const clusterCS = "Endpoint=http://lb.test;AccessKey=cluster-key-0123456789abcdefghijklmnop;Version=1.0;"

// buildServer builds cmd/webpubsub into the test's temporary directory.
func buildServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "webpubsub")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startNATS runs a NATS server in process, on a random port when port is
// -1, and returns its client URL.
func startNATS(t *testing.T, port int) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(wstest.WaitFor) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// logBuffer is a process's stderr, kept for the test and passed on.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	return os.Stderr.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// serverNode is one cmd/webpubsub process.
type serverNode struct {
	cmd    *exec.Cmd
	url    string // http://host:port it listens on
	log    *logBuffer
	exited chan error
}

var listeningAddr = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startNode runs bin with env added to the test's environment (the
// cluster variables cleared first) and waits until it listens.
func startNode(t *testing.T, bin string, env []string, args ...string) *serverNode {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), "WEBPUBSUB_CONNECTION_STRING=", "WEBPUBSUB_NATS_URL=", "WEBPUBSUB_NODE_ID=")
	cmd.Env = append(cmd.Env, env...)
	n := &serverNode{cmd: cmd, log: &logBuffer{}, exited: make(chan error, 1)}
	cmd.Stderr = n.log
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The connection string on stdout says the node is up; the address it
	// listens on is in the log line that follows.
	_, err := bufio.NewReader(stdout).ReadString('\n')
	go func() { n.exited <- cmd.Wait() }() // after the read: Wait closes stdout
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-n.exited
	})
	if err != nil {
		t.Fatalf("no connection string: %v\n%s", err, n.log)
	}
	eventually(t, "the listening log line", func() bool { return listeningAddr.MatchString(n.log.String()) })
	n.url = "http://" + listeningAddr.FindStringSubmatch(n.log.String())[1]
	return n
}

// cs is the cluster's connection string with this node as its endpoint,
// for REST calls made to the node directly.
func (n *serverNode) cs(t *testing.T) pubsub.ConnectionString {
	t.Helper()
	cs, err := pubsub.ParseConnectionString(clusterCS)
	if err != nil {
		t.Fatal(err)
	}
	cs.Endpoint = n.url
	return cs
}

// dial connects a JSON client to hub "chat" on this node with a token for
// the cluster (audience: the load balancer), as a client that the balancer
// sent here would.
func (n *serverNode) dial(t *testing.T, user string) (*wstest.Client, string) {
	t.Helper()
	cs, err := pubsub.ParseConnectionString(clusterCS)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	if err != nil {
		t.Fatal(err)
	}
	u, err := minter.ClientURL("chat", pubsub.TokenOptions{UserID: user})
	if err != nil {
		t.Fatal(err)
	}
	return wstest.DialJSON(t, strings.Replace(u, "ws://lb.test", "ws://"+strings.TrimPrefix(n.url, "http://"), 1))
}

// stop sends SIGTERM and waits for a clean exit.
func (n *serverNode) stop(t *testing.T) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		n.exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(wstest.WaitFor):
		t.Fatal("no exit on SIGTERM")
	}
}

// eventually polls cond until it holds, failing the test after WaitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wstest.WaitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, wstest.WaitFor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// seesConnection polls node's REST API until it finds the connection, which
// another node holds: the nodes found each other on NATS.
func seesConnection(t *testing.T, node *serverNode, id string) {
	t.Helper()
	eventually(t, node.url+" sees connection "+id, func() bool {
		return sdkDo(t, node.cs(t), "HEAD", "hubs/chat/connections/"+id, "", "").StatusCode == http.StatusOK
	})
}

// expectMessage reads c's next frame, which must be a message with data.
func expectMessage(t *testing.T, c *wstest.Client, data string) {
	t.Helper()
	if m := c.NextJSON(); m["type"] != "message" || m["data"] != data {
		t.Fatalf("got %v, want the message %q", m, data)
	}
}

// TestNATSCluster: two cmd/webpubsub processes on one NATS, with the same
// connection string, are one service. Node A is configured through the
// environment, node B through flags that win over an environment pointing
// elsewhere. A client of node B gets a connection id naming node B, and a
// REST send to that connection made on node A reaches it.
func TestNATSCluster(t *testing.T) {
	natsURL := startNATS(t, -1)
	bin := buildServer(t)
	withCreds := strings.Replace(natsURL, "nats://", "nats://someone:hunter2@", 1) // a NATS without auth ignores them

	a := startNode(t, bin, []string{"WEBPUBSUB_NATS_URL=" + withCreds, "WEBPUBSUB_NODE_ID=node-a"}, "-connection-string", clusterCS)
	b := startNode(t, bin, []string{"WEBPUBSUB_NATS_URL=nats://127.0.0.1:1", "WEBPUBSUB_NODE_ID=wrong"},
		"-nats", natsURL, "-node-id", "node-b", "-connection-string", clusterCS)

	for _, n := range []struct {
		node      *serverNode
		id, nats  string
		mustNotBe string
	}{{a, "node-a", "nats://someone:***@127.0.0.1:", "hunter2"}, {b, "node-b", natsURL, ""}} {
		log := n.node.log.String()
		if !strings.Contains(log, `msg="cluster node" node=`+n.id+" nats="+n.nats) || n.mustNotBe != "" && strings.Contains(log, n.mustNotBe) {
			t.Fatalf("%s logged:\n%s", n.id, log)
		}
	}

	bob, bobID := b.dial(t, "bob")
	if !strings.HasPrefix(bobID, "node-b.") {
		t.Fatalf("connection id %q on node B does not name it", bobID)
	}
	seesConnection(t, a, bobID)
	if resp := sdkDo(t, a.cs(t), "POST", "hubs/chat/connections/"+bobID+"/:send", "text/plain", "from node A"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("send on node A: %d", resp.StatusCode)
	}
	expectMessage(t, bob, "from node A")

	a.stop(t)
	b.stop(t)
}

// TestNATSUnreachableAtStart: a node whose NATS is down at start still
// starts and serves its own connections, and joins the cluster once NATS
// is up.
func TestNATSUnreachableAtStart(t *testing.T) {
	// A free port for NATS, which starts later. (Another process could
	// take it meanwhile; nothing here runs long enough to make that likely.)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	natsURL := "nats://127.0.0.1:" + strconv.Itoa(port)
	bin := buildServer(t)

	a := startNode(t, bin, nil, "-nats", natsURL, "-node-id", "node-a", "-connection-string", clusterCS)
	alice, aliceID := a.dial(t, "alice")
	if !strings.HasPrefix(aliceID, "node-a.") {
		t.Fatalf("connection id %q on node A does not name it", aliceID)
	}
	if resp := sdkDo(t, a.cs(t), "POST", "hubs/chat/connections/"+aliceID+"/:send", "text/plain", "without NATS"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("send on node A without NATS: %d", resp.StatusCode)
	}
	expectMessage(t, alice, "without NATS")

	startNATS(t, port)
	b := startNode(t, bin, nil, "-nats", natsURL, "-node-id", "node-b", "-connection-string", clusterCS)
	seesConnection(t, b, aliceID)
	if resp := sdkDo(t, b.cs(t), "POST", "hubs/chat/connections/"+aliceID+"/:send", "text/plain", "from node B"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("send on node B: %d", resp.StatusCode)
	}
	expectMessage(t, alice, "from node B")

	a.stop(t)
	b.stop(t)
}

func TestClusterSettings(t *testing.T) {
	parse := func(args ...string) (clusterConfig, error) {
		t.Helper()
		fs := flag.NewFlagSet("webpubsub", flag.ContinueOnError)
		natsURL := fs.String("nats", "", "")
		nodeID := fs.String("node-id", "", "")
		prefix := fs.String("nats-prefix", "webpubsub", "")
		connStr := fs.String("connection-string", "", "")
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return clusterSettings(fs, *natsURL, *nodeID, *prefix, *connStr)
	}
	t.Setenv("WEBPUBSUB_CONNECTION_STRING", "")
	t.Setenv("WEBPUBSUB_NATS_URL", "")
	t.Setenv("WEBPUBSUB_NODE_ID", "")

	if c, err := parse(); err != nil || c.url != "" {
		t.Fatalf("no NATS: %+v %v", c, err)
	}
	if _, err := parse("-node-id", "n1"); err == nil {
		t.Fatal("-node-id without -nats was accepted")
	}
	if _, err := parse("-nats", "nats://x:4222"); err == nil || !strings.Contains(err.Error(), "-connection-string") {
		t.Fatalf("-nats without a shared key: %v", err)
	}
	if _, err := parse("-nats", "nats://x:4222", "-connection-string", clusterCS, "-node-id", "has.dot"); err == nil {
		t.Fatal("a node id with a dot was accepted")
	}

	t.Setenv("WEBPUBSUB_CONNECTION_STRING", clusterCS)
	t.Setenv("WEBPUBSUB_NATS_URL", "nats://env:4222")
	t.Setenv("WEBPUBSUB_NODE_ID", "env-node")
	if c, err := parse(); err != nil || c != (clusterConfig{url: "nats://env:4222", nodeID: "env-node", prefix: "webpubsub"}) {
		t.Fatalf("from the environment: %+v %v", c, err)
	}
	if c, err := parse("-nats", "nats://flag:4222", "-node-id", "flag-node", "-nats-prefix", "other"); err != nil || c != (clusterConfig{url: "nats://flag:4222", nodeID: "flag-node", prefix: "other"}) {
		t.Fatalf("the flags win: %+v %v", c, err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                        "nats://127.0.0.1:4222",
		"nats://user:pa:ss@host:4222":                  "nats://user:***@host:4222",
		"nats://s3cr3t-token@host:4222":                "nats://***@host:4222",
		"tls://u:p@a:4222, nats://b:4222,nats://t@c:1": "tls://u:***@a:4222,nats://b:4222,nats://***@c:1",
		"u:p@host:4222":                                "u:***@host:4222",
		"nats://host:4222/path@x":                      "nats://host:4222/path@x",
		"nats://user:p%40ss@host:4222?opt=1":           "nats://user:***@host:4222?opt=1",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
