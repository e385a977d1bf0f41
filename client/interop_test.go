package client_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"reflect"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol"
)

// payload is a group message's data, as sent.
type payload struct {
	dt       protocol.DataType
	data     string
	noEcho   bool
	metadata map[string]string
}

// What the Go client sends (interop/client-go-peer.mjs waits for "go-done"),
// and what the JS client sends (ending with "js-done"); noEcho is on both
// sides, so that each sender gets back only some of its own messages. The
// Go client's second binary message has metadata (which the JS client
// cannot send): its echo is a frame the JSON decoder's fast path leaves to
// the general one.
var (
	goSends = []payload{
		{protocol.Text, "hello from go é 😀 \"q\" \\ \n\t <&>", false, nil},
		{protocol.JSON, `{"from":"go","n":[1,2.5,-3,null],"ok":false,"s":"é <&>"}`, true, nil},
		{protocol.Binary, "\x00\x01\x7f\x80\xfe\xff", false, nil},
		{protocol.Binary, "\xff\x00with metadata", false, map[string]string{"k": "v", "x-note": "a \"quoted\" <&>"}},
		{protocol.Text, "go-done", true, nil},
	}
	jsSends = []payload{
		{protocol.Text, "héllo from js 😀 \"q\" \\ \n\t", true, nil},
		{protocol.JSON, `{"from":"js","list":[1,"two",null,true,-0.5],"nested":{"é":"ü <&>"}}`, false, nil},
		{protocol.Binary, "\x00\x01\x02\x7f\x80\xfd\xfe\xff", true, nil},
		{protocol.Text, "js-done", false, nil},
	}
)

func echoed(ps []payload) []payload {
	var out []payload
	for _, p := range ps {
		if !p.noEcho {
			out = append(out, p)
		}
	}
	return out
}

// TestOfficialJSClientInTheSameGroup puts this package's client, on each of
// its subprotocols, in a group with Azure's official JavaScript client
// (@azure/web-pubsub-client, on both of its JSON protocols), against the
// library's service: each receives what the other sends, text, JSON and
// binary, with the exact data and data type, the group and the sender's
// user id; a noEcho message reaches the other client and not its sender;
// and nothing else arrives on either side. (Protobuf data messages carry
// no fromUserId: there the Go client gets "".)
func TestOfficialJSClientInTheSameGroup(t *testing.T) {
	dir := wstest.Interop(t, "../interop")
	for _, p := range protocols {
		for _, js := range []string{"reliable", "json"} {
			t.Run(p.Name()+"+js-"+js, func(t *testing.T) { testJSPeer(t, dir, p, js) })
		}
	}
}

func testJSPeer(t *testing.T, dir string, p client.Protocol, jsKind string) {
	roles := []string{"webpubsub.joinLeaveGroup.room", "webpubsub.sendToGroup.room"}
	e := newEnv(t, pubsub.Config{})
	ev := newEvents()
	// One connection throughout: a new one would be a failure, reported at
	// once rather than retried (a request the service closes the connection
	// over would be sent again on each new one).
	c := start(t, e.url(pubsub.TokenOptions{UserID: "gopher", Roles: roles}), ev.options(client.Options{Protocol: p, DisableAutoReconnect: true}))
	ctx := ctxFor(t)
	goConn := next(t, ev.connected, "connected")
	if err := c.JoinGroup(ctx, "room"); err != nil {
		t.Fatal(err)
	}

	node := runNode(t, dir, "client-go-peer.mjs", e.url(pubsub.TokenOptions{UserID: "js-user", Roles: roles}), jsKind)
	if got := node.step("connected"); got["userId"] != "js-user" || got["connectionId"] == "" || got["connectionId"] == goConn.ConnectionID {
		t.Fatalf("the JS client connected as %v (the Go client is %+v)", got, goConn)
	}
	node.step("ready") // it is in the group

	// Go → JS, and back to Go but for its noEcho messages.
	for _, m := range goSends {
		var opts []client.SendOption
		if m.noEcho {
			opts = append(opts, client.NoEcho())
		}
		if m.metadata != nil {
			opts = append(opts, client.WithMetadata(m.metadata))
		}
		if err := c.SendToGroup(ctx, "room", m.dt, []byte(m.data), opts...); err != nil {
			t.Fatalf("send %v %q: %v", m.dt, m.data, err)
		}
	}
	goSeq := &seqCheck{t: t, reliable: p.Reliable(), what: "the Go client on " + p.Name()}
	fromForGo := func(user string) string {
		if isProtobuf(p) {
			return "" // protobuf data messages carry no fromUserId
		}
		return user
	}
	for _, want := range echoed(goSends) {
		checkGoReceived(t, next(t, ev.group, "the Go client's echo"), want, fromForGo("gopher"), goSeq)
	}
	jsSeq := &seqCheck{t: t, reliable: jsKind == "reliable", what: "the JS client on " + jsKind}
	checkJSReceived(t, "from Go", node.step("received-from-go")["messages"], goSends, "gopher", jsSeq)

	// JS → Go, and back to JS but for its noEcho messages.
	acks, _ := node.step("sent")["acks"].([]any)
	if len(acks) != len(jsSends) {
		t.Fatalf("the JS client's acks: %v", acks)
	}
	for _, a := range acks {
		if a.(map[string]any)["isDuplicated"] != false {
			t.Fatalf("the JS client's acks: %v", acks)
		}
	}
	for _, want := range jsSends {
		checkGoReceived(t, next(t, ev.group, "a message from the JS client"), want, fromForGo("js-user"), goSeq)
	}
	checkJSReceived(t, "its own echoes", node.step("echoes")["messages"], echoed(jsSends), "js-user", jsSeq)
	if got := node.step("done"); got["serverMessages"] != 0.0 || got["later"] != 0.0 {
		t.Fatalf("the JS client got more: %v", got)
	}
	node.end()

	// Nothing more for the Go client: a barrier sent now is what comes next.
	e.noGroupMessage(ctx, goConn.ConnectionID, ev, "a group message more")
	select {
	case m := <-ev.server:
		t.Fatalf("a server message more: %+v", m)
	case d := <-ev.disconnected:
		t.Fatalf("disconnected: %+v", d)
	default:
	}
}

// seqCheck checks that a client's group messages have sequence ids, rising,
// on a reliable protocol, and none otherwise.
type seqCheck struct {
	t        *testing.T
	reliable bool
	what     string
	last     uint64
}

func (s *seqCheck) next(id uint64) {
	s.t.Helper()
	switch {
	case !s.reliable && id != 0:
		s.t.Fatalf("%s: sequence id %d on a protocol without", s.what, id)
	case s.reliable && id <= s.last:
		s.t.Fatalf("%s: sequence id %d after %d", s.what, id, s.last)
	}
	s.last = id
}

func checkGoReceived(t *testing.T, got client.Message, want payload, from string, seq *seqCheck) {
	t.Helper()
	if got.Group != "room" || got.FromUserID != from || got.DataType != want.dt || string(got.Data) != want.data || !reflect.DeepEqual(got.Metadata, want.metadata) {
		t.Fatalf("the Go client got %+v (data %q)\nwant group room, from %q, %v %q, metadata %v", got, got.Data, from, want.dt, want.data, want.metadata)
	}
	seq.next(got.SequenceID)
}

// checkJSReceived compares the group messages the JS client reported with
// those sent: the data as the SDK decodes it (a string, a JSON value, an
// ArrayBuffer, reported as its bytes), of the JavaScript type that goes
// with the data type.
func checkJSReceived(t *testing.T, what string, got any, want []payload, from string, seq *seqCheck) {
	t.Helper()
	msgs, _ := got.([]any)
	if len(msgs) != len(want) {
		t.Fatalf("the JS client got %d messages %s, want %d: %v", len(msgs), what, len(want), got)
	}
	for i, w := range want {
		m := msgs[i].(map[string]any)
		id, _ := m["sequenceId"].(float64)
		if m["sequenceId"] != nil && (id < 1 || id != float64(uint64(id))) {
			t.Fatalf("the JS client got sequence id %v", m["sequenceId"])
		}
		seq.next(uint64(id))
		delete(m, "sequenceId")
		exp := map[string]any{"group": "room", "fromUserId": from, "dataType": w.dt.String(), "metadata": nil}
		if w.metadata != nil {
			md := map[string]any{}
			for k, v := range w.metadata {
				md[k] = v
			}
			exp["metadata"] = md
		}
		switch w.dt {
		case protocol.Text:
			exp["data"], exp["jsType"] = w.data, "string"
		case protocol.JSON:
			var v any
			if err := json.Unmarshal([]byte(w.data), &v); err != nil {
				t.Fatal(err)
			}
			exp["data"], exp["jsType"] = v, "object"
		case protocol.Binary:
			b := []any{}
			for _, c := range []byte(w.data) {
				b = append(b, float64(c))
			}
			exp["data"], exp["jsType"] = b, "ArrayBuffer"
		}
		if !reflect.DeepEqual(m, exp) {
			t.Fatalf("the JS client's message %d %s is %v\nwant %v", i, what, m, exp)
		}
	}
}

// nodeScript is a running Node script of interop/ that prints one JSON
// object per step ({"step": name, ...}), read as it comes.
type nodeScript struct {
	t      *testing.T
	script string
	cmd    *exec.Cmd
	lines  *bufio.Scanner
	stderr bytes.Buffer
	waited bool
	err    error
}

// runNode starts a script; it is killed, if still running, when the test
// ends.
func runNode(t *testing.T, dir, script string, args ...string) *nodeScript {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	n := &nodeScript{t: t, script: script}
	n.cmd = exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	n.cmd.Dir = dir
	n.cmd.Stderr = &n.stderr
	n.cmd.WaitDelay = waitFor
	stdout, err := n.cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = n.wait()
	})
	n.lines = bufio.NewScanner(stdout)
	n.lines.Buffer(nil, 1<<20)
	return n
}

func (n *nodeScript) wait() error {
	if !n.waited {
		n.waited, n.err = true, n.cmd.Wait()
	}
	return n.err
}

// step reads the script's next line, which must be the step named, and
// returns its fields.
func (n *nodeScript) step(name string) map[string]any {
	n.t.Helper()
	if !n.lines.Scan() {
		err := n.wait()
		n.t.Fatalf("node %s ended before step %q: %v\n%s", n.script, name, err, n.stderr.String())
	}
	var line map[string]any
	if err := json.Unmarshal(n.lines.Bytes(), &line); err != nil {
		n.t.Fatalf("node %s printed %q", n.script, n.lines.Text())
	}
	if line["step"] != name {
		n.t.Fatalf("node %s: step %s, want %q", n.script, n.lines.Text(), name)
	}
	delete(line, "step")
	return line
}

// end checks that the script printed nothing more and exited with 0.
func (n *nodeScript) end() {
	n.t.Helper()
	if n.lines.Scan() {
		n.t.Fatalf("node %s printed %q after its last step", n.script, n.lines.Text())
	}
	if err := n.wait(); err != nil {
		n.t.Fatalf("node %s: %v\n%s", n.script, err, n.stderr.String())
	}
}
