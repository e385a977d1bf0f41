package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub/internal/wstest"
)

// systemPython is the Python that Debian's python3-azure and
// python3-websocket are installed for; a python3 earlier on PATH (pyenv)
// would not have them.
const systemPython = "/usr/bin/python3"

// azurePython skips the test when Azure's Python server SDK is missing,
// unless under CI, where it must be there (.ci/run installs it).
func azurePython(t *testing.T) {
	t.Helper()
	out, err := exec.Command(systemPython, "-c", "import azure.messaging.webpubsubservice, websocket").CombinedOutput()
	if err == nil {
		return
	}
	msg := "Azure's Python server SDK is not installed for " + systemPython + " (apt-get install python3-azure python3-websocket): " + err.Error() + "\n" + string(out)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// pyScript is a running interop/python script that prints a JSON line
// before each step and waits for the test's JSON answer.
type pyScript struct {
	t     *testing.T
	lines chan map[string]any
	stdin io.WriteCloser
}

// startPython runs interop/python/script with env added to the test's
// environment (less any CA trust of its own); it stops when the test ends.
func startPython(t *testing.T, env []string, script string, args ...string) *pyScript {
	t.Helper()
	path, _ := filepath.Abs(filepath.Join("../../interop/python", script))
	cmd := exec.Command(systemPython, append([]string{path}, args...)...)
	// PYTHON* of another Python (pyenv) must not reach the system one;
	// loopback never goes through a proxy.
	cmd.Env = append(envWithout(append([]string{"PYTHONPATH", "PYTHONHOME"}, caTrust...)...), "NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &pyScript{t: t, lines: make(chan map[string]any, 16), stdin: stdin}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.lines <- m
			}
		}
		close(p.lines)
	}()
	t.Cleanup(func() { stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return p
}

// next returns the script's next line, which must be step.
func (p *pyScript) next(step string) map[string]any {
	p.t.Helper()
	select {
	case m, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("the Python script stopped before %s", step)
		}
		if m["step"] != step {
			p.t.Fatalf("the Python script is at %v, want %s", m["step"], step)
		}
		return m
	case <-time.After(30 * time.Second): // the SDK's first import is slow
		p.t.Fatalf("the Python script did not reach %s", step)
	}
	return nil
}

// answer lets the script go on, telling it v.
func (p *pyScript) answer(v any) {
	p.t.Helper()
	b, _ := json.Marshal(v)
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		p.t.Fatal(err)
	}
}

// TestPythonServerSDK: Azure's Python server SDK, from the connection
// string cmd/webpubsub printed, over http and over https (the CA trusted
// through REQUESTS_CA_BUNDLE only): the README's examples reach a plain
// WebSocket client as exactly the bytes sent, in the right frame type, and
// group, connection, existence and token calls do what Azure does.
func TestPythonServerSDK(t *testing.T) {
	azurePython(t)
	bin := buildServer(t)

	t.Run("http", func(t *testing.T) {
		cs, _ := startBinary(t, bin, nil)
		checkPythonSDK(t, cs.String(), "ws://"+strings.TrimPrefix(cs.Endpoint, "http://"), nil, nil)
	})
	t.Run("https", func(t *testing.T) {
		tlsDir := t.TempDir()
		cs, _ := startBinary(t, bin, nil, "-tls", "self-signed", "-tls-dir", tlsDir)
		ca := filepath.Join(tlsDir, "ca.pem")
		env := []string{"REQUESTS_CA_BUNDLE=" + ca, "SSL_CERT_FILE=" + ca}
		checkPythonSDK(t, cs.String(), "wss://"+strings.TrimPrefix(cs.Endpoint, "https://"), env, &tls.Config{RootCAs: rootsOf(t, ca)})

		// Without the CA the SDK refuses the server: TLS is verified.
		m := startPython(t, nil, "server_sdk.py", cs.String(), "certificate-error").next("certificate-error")
		if msg, _ := m["message"].(string); !strings.Contains(msg, "CERTIFICATE_VERIFY_FAILED") {
			t.Fatalf("without the CA: %v", m)
		}
	})
}

// checkPythonSDK runs interop/python/server_sdk.py against the server of
// connection string cs, whose client endpoint is wsBase, and checks each
// step with a plain client and a json.webpubsub.azure.v1 one.
func checkPythonSDK(t *testing.T, cs, wsBase string, env []string, tlsConfig *tls.Config) {
	py := startPython(t, env, "server_sdk.py", cs)
	tokens := py.next("tokens")
	if want := wsBase + "/client/hubs/hub"; tokens["baseUrl"] != want {
		t.Fatalf("client URL %v, want %s", tokens["baseUrl"], want)
	}
	simple := wstest.DialTLS(t, tokens["simple"].(string), tlsConfig)
	js := wstest.DialTLS(t, tokens["json"].(string), tlsConfig, "json.webpubsub.azure.v1")
	connected := js.NextJSON()
	if connected["event"] != "connected" || connected["userId"] != "py-user" {
		t.Fatalf("first message %v", connected)
	}
	py.answer(map[string]any{"connectionId": connected["connectionId"]})

	// The README's examples, byte for byte: JSON and text in text frames,
	// binary in binary frames.
	for _, tc := range []struct {
		step     string
		frame    wstest.Frame
		dataType string
		data     any
	}{
		{"json", wstest.Frame{Data: []byte(`{"from": "user1", "data": "Hello world"}`)}, "json", map[string]any{"from": "user1", "data": "Hello world"}},
		{"text", wstest.Frame{Data: []byte("Hello world")}, "text", "Hello world"},
		{"binary stream", wstest.Frame{Binary: true, Data: []byte("Hello world")}, "binary", "SGVsbG8gd29ybGQ="},
		{"binary bytes", wstest.Frame{Binary: true, Data: []byte("Hello world")}, "binary", "SGVsbG8gd29ybGQ="},
	} {
		py.next(tc.step)
		if got := simple.Next(); got.Binary != tc.frame.Binary || string(got.Data) != string(tc.frame.Data) {
			t.Fatalf("%s: the plain client got %+v (%q), want %+v (%q)", tc.step, got, got.Data, tc.frame, tc.frame.Data)
		}
		want := map[string]any{"type": "message", "from": "server", "dataType": tc.dataType, "data": tc.data}
		if got := js.NextJSON(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: the JSON client got %v, want %v", tc.step, got, want)
		}
		py.answer(struct{}{})
	}

	// Existence, and a group the connection was added to by the SDK.
	g := py.next("group")
	for k, want := range map[string]bool{"connection": true, "missingConnection": false, "user": true, "groupBefore": false, "groupAfterAdd": true} {
		if g[k] != want {
			t.Errorf("%s: %v, want %v", k, g[k], want)
		}
	}
	if m := js.NextJSON(); m["from"] != "group" || m["group"] != "room" || m["data"] != "to room" {
		t.Fatalf("group message: %v", m)
	}
	expectData(t, js, "barrier")
	if f := simple.Next(); string(f.Data) != "barrier" {
		t.Fatalf("the plain client, outside the group, got %q", f.Data)
	}
	// The token's role: sendToGroup on room only.
	js.Send(`{"type":"sendToGroup","group":"other","dataType":"text","data":"no","ackId":1}`)
	js.ExpectAck(1, "Forbidden")
	js.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"from the client","ackId":2}`)
	var acked, echoed bool
	for range 2 {
		m := js.NextJSON()
		switch {
		case m["type"] == "ack" && m["ackId"] == float64(2) && m["success"] == true:
			acked = true
		case m["from"] == "group" && m["fromUserId"] == "py-user" && m["data"] == "from the client":
			echoed = true
		default:
			t.Fatalf("after a sendToGroup: %v", m)
		}
	}
	if !acked || !echoed {
		t.Fatal("sendToGroup with the role: no ack or no message")
	}
	py.answer(struct{}{})

	if l := py.next("left"); l["groupAfterRemove"] != false {
		t.Fatalf("group after remove: %v", l["groupAfterRemove"])
	}
	expectData(t, js, "barrier 2") // not "after leave"
	if f := simple.Next(); string(f.Data) != "barrier 2" {
		t.Fatalf("the plain client got %q", f.Data)
	}
	py.answer(struct{}{})

	if c := py.next("closed"); c["connectionAfterClose"] != false {
		t.Fatalf("connection after close: %v", c["connectionAfterClose"])
	}
	info, frames := js.ExpectClose()
	if len(frames) != 1 || !strings.Contains(string(frames[0].Data), `"event":"disconnected"`) || !strings.Contains(string(frames[0].Data), "bye from python") {
		t.Fatalf("closed %+v after %d frames: %+v", info, len(frames), frames)
	}
	py.answer(struct{}{})

	ws := py.next("websocket-client")
	if want := []any{float64(1), "Hello websocket"}; !reflect.DeepEqual(ws["text"], want) {
		t.Errorf("websocket-client text: %v, want %v", ws["text"], want)
	}
	if want := []any{float64(2), []any{float64(0), float64(1), float64(255)}}; !reflect.DeepEqual(ws["binary"], want) {
		t.Errorf("websocket-client binary: %v, want %v", ws["binary"], want)
	}
	py.answer(struct{}{})
	py.next("done")
	py.answer(struct{}{})
	select {
	case f := <-simple.Frames():
		t.Fatalf("the plain client got %q, meant for others", f.Data)
	default:
	}
}

// expectData reads the JSON client's next message and checks its data.
func expectData(t *testing.T, c *wstest.Client, data string) {
	t.Helper()
	if m := c.NextJSON(); m["type"] != "message" || m["data"] != data {
		t.Fatalf("got %v, want the message %q", m, data)
	}
}
