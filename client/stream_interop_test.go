package client_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol"
)

// TestOfficialJSClientGroupStreamsWithGoClient: group streams between the
// Go client and Azure's @azure/web-pubsub-client (interop/
// client-go-stream.mjs), both ways, in one group of the library's service,
// over the reliable JSON subprotocol and the plain one. The Go client
// publishes three streams at once (every data type, an empty text and a
// keep-alive among them, ended; 600 fragments, past its window of 256
// unacknowledged, ended; aborted with an error code), which the JS client
// reads with each fragment's data type, data and sequence id as written, and
// the end; once it read them, the JS client publishes three (every data
// type, ended; 400 fragments, ended; aborted), which the Go client reads
// the same way through OnGroupStream and GroupStream.Next: io.EOF at an end,
// a *StreamError named UserError with the JS client's message and code at
// the abort. The processes wait on each other's signals (the JS client's
// stdout lines, a line to its stdin), never on time.
func TestOfficialJSClientGroupStreamsWithGoClient(t *testing.T) {
	dir := wstest.Interop(t, "../interop")
	for _, tc := range []struct {
		js string
		p  client.Protocol
	}{{"reliable", client.JSONReliable()}, {"json", client.JSON()}} {
		t.Run(tc.js, func(t *testing.T) { testGroupStreamsWithJS(t, dir, tc.js, tc.p) })
	}
}

// jsReadFragment is a fragment as the JS client read it: binary data in hex,
// JSON as JSON.stringify writes it.
type jsReadFragment struct {
	Type string `json:"type"`
	Data string `json:"data"`
	Seq  uint64 `json:"seq"`
	Last bool   `json:"last"`
}

// jsReadStream is a stream as the JS client read it to its end.
type jsReadStream struct {
	Group     string           `json:"group"`
	From      []any            `json:"from"`
	Fragments []jsReadFragment `json:"fragments"`
	End       map[string]any   `json:"end"`
}

// writtenFragment is a fragment written or expected: binary data is given
// raw and compared in hex.
type writtenFragment struct {
	dt   protocol.DataType
	data string
}

func (f writtenFragment) String() string {
	if f.dt == protocol.Binary {
		return fmt.Sprintf("%v:%x", f.dt, f.data)
	}
	return fmt.Sprintf("%v:%s", f.dt, f.data)
}

// asJS is how the JS client reports f, the seq'th fragment.
func (f writtenFragment) asJS(seq int) jsReadFragment {
	d := f.data
	if f.dt == protocol.Binary {
		d = hex.EncodeToString([]byte(d))
	}
	return jsReadFragment{Type: f.dt.String(), Data: d, Seq: uint64(seq)}
}

// mixedStreamFragments are n fragments cycling through the data types, as both
// sides write their long streams: i%3 is 0 text "t<i>", 1 JSON {"i":<i>}, 2
// binary [i&255, i>>8], for i from 1.
func mixedStreamFragments(n int) []writtenFragment {
	out := make([]writtenFragment, 0, n)
	for i := 1; i <= n; i++ {
		switch i % 3 {
		case 0:
			out = append(out, writtenFragment{protocol.Text, fmt.Sprintf("t%d", i)})
		case 1:
			out = append(out, writtenFragment{protocol.JSON, fmt.Sprintf(`{"i":%d}`, i)})
		default:
			out = append(out, writtenFragment{protocol.Binary, string([]byte{byte(i), byte(i >> 8)})})
		}
	}
	return out
}

func testGroupStreamsWithJS(t *testing.T, dir, kind string, p client.Protocol) {
	e := newEnv(t, pubsub.Config{})
	roles := []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}
	o, received := streamsOf(client.Options{Protocol: p})
	goc := start(t, e.url(pubsub.TokenOptions{UserID: "go", Roles: roles}), o)
	ctx := ctxFor(t)
	if err := goc.JoinGroup(ctx, "room"); err != nil {
		t.Fatal(err)
	}

	// The Go streams, written at once.
	goStreams := map[string][]writtenFragment{
		"go-typed": {
			{protocol.Text, "héllo"}, {protocol.JSON, `{"n":1,"list":["a",true]}`}, {protocol.Binary, "\x00\x01\x02\xff"},
			{protocol.Text, "world ✓"}, {protocol.JSON, `"str"`}, {protocol.JSON, `3.5`}, {protocol.Text, ""},
			{protocol.Binary, "\x07"},
		},
		"go-long":  mixedStreamFragments(600),
		"go-abort": {{protocol.Text, "g1"}, {protocol.JSON, `{"g":2}`}, {protocol.Binary, "\x03"}},
	}

	// The JS client, its stdout read line by line into steps.
	nctx, cancel := context.WithTimeout(context.Background(), 6*waitFor)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(nctx, "node", "client-go-stream.mjs",
		e.url(pubsub.TokenOptions{UserID: "js", Roles: roles}), kind, fmt.Sprint(len(goStreams)))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan []byte)
	stopReading, readerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(readerDone)
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<22)
		for sc.Scan() {
			select {
			case lines <- append([]byte(nil), sc.Bytes()...):
			case <-stopReading:
				return
			}
		}
	}()
	waited := false
	t.Cleanup(func() {
		cancel() // kills node, unless it exited
		close(stopReading)
		<-readerDone
		if !waited {
			_ = cmd.Wait()
		}
	})
	steps := map[string]json.RawMessage{}
	awaitStep := func(want string) json.RawMessage {
		t.Helper()
		for {
			if s, ok := steps[want]; ok {
				return s
			}
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("node ended before step %q; steps %v", want, stepNames(steps))
				}
				var step struct{ Step string }
				if err := json.Unmarshal(l, &step); err != nil || step.Step == "" {
					t.Fatalf("node printed %q", l)
				}
				if _, dup := steps[step.Step]; dup {
					t.Fatalf("step %q twice", step.Step)
				}
				steps[step.Step] = l
			case <-nctx.Done():
				t.Fatalf("no step %q from node; steps %v", want, stepNames(steps))
			}
		}
	}

	// Go to JS.
	awaitStep("ready")
	var wg sync.WaitGroup
	errs := make(chan error, len(goStreams))
	for id, frags := range goStreams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				s, err := goc.OpenGroupStream(ctx, "room", client.StreamOptions{StreamID: id, NoEcho: true})
				if err != nil {
					return fmt.Errorf("open %s: %w", id, err)
				}
				for i, f := range frags {
					if err := s.Write(ctx, f.dt, []byte(f.data)); err != nil {
						return fmt.Errorf("%s: write %d: %w", id, i+1, err)
					}
					if i == 0 {
						// Not a fragment: the JS client reads none.
						if err := s.KeepAlive(ctx); err != nil {
							return fmt.Errorf("%s: keep-alive: %w", id, err)
						}
					}
				}
				if id == "go-abort" {
					err = s.Abort(ctx, "go gave up", "GO-42")
				} else {
					err = s.End(ctx)
				}
				if err != nil {
					return fmt.Errorf("%s: end: %w", id, err)
				}
				select {
				case <-s.Done():
				default:
					return fmt.Errorf("%s: Done open after the end", id)
				}
				if err := s.Err(); err != nil {
					return fmt.Errorf("%s: Err %w after the end", id, err)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for id, frags := range goStreams {
		var got jsReadStream
		if err := json.Unmarshal(awaitStep("received "+id), &got); err != nil {
			t.Fatal(err)
		}
		want := jsReadStream{Group: "room", From: []any{"go"}, End: map[string]any{"done": true}}
		if id == "go-abort" {
			want.End = map[string]any{"name": "UserError", "message": "go gave up", "userErrorCode": "GO-42"}
		}
		for i, f := range frags {
			want.Fragments = append(want.Fragments, f.asJS(i+1))
		}
		if !reflect.DeepEqual(got, want) {
			if !reflect.DeepEqual(got.Fragments, want.Fragments) {
				t.Errorf("the JS client read %s: %s", id, firstDifference(got.Fragments, want.Fragments))
			}
			got.Fragments, want.Fragments = nil, nil
			t.Errorf("the JS client read %s as %+v, want %+v (fragments aside)", id, got, want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// JS to Go: the JS client publishes once it read the Go streams.
	awaitStep("published")
	jsStreams := map[string][]writtenFragment{
		"js-typed": {
			{protocol.Text, "js-1"}, {protocol.JSON, `{"k":"v","n":[1,2.5,null],"ok":true}`}, {protocol.Binary, "\x09\x08\x07\x00\xff"},
			{protocol.Text, "ünïcode ✓"}, {protocol.JSON, `42`}, {protocol.JSON, `"a string"`}, {protocol.Text, ""},
			{protocol.Binary, "\x01"},
		},
		"js-long":  mixedStreamFragments(400),
		"js-abort": {{protocol.Text, "a1"}, {protocol.JSON, `{"a":2}`}},
	}
	for range len(jsStreams) { // not the map: it shrinks
		s := next(t, received, "a stream of the JS client")
		want, ok := jsStreams[s.StreamID]
		if !ok || s.Group != "room" {
			t.Fatalf("a stream %q of group %q: not one the JS client wrote", s.StreamID, s.Group)
		}
		delete(jsStreams, s.StreamID)
		var got []string
		var end error
		bad := false
		rctx, rcancel := context.WithTimeout(context.Background(), waitFor)
		for {
			m, err := s.Next(rctx)
			if err != nil {
				end = err
				break
			}
			if !bad && (m.Group != "room" || m.FromUserID != "js" || m.Stream == nil || m.Stream.ID != s.StreamID ||
				m.Stream.Sequence != uint64(len(got)+1) || m.Stream.End) {
				bad = true // the first is enough
				t.Errorf("%s: fragment %d: %+v, stream %+v", s.StreamID, len(got)+1, m, m.Stream)
			}
			got = append(got, writtenFragment{m.DataType, string(m.Data)}.String())
		}
		rcancel()
		var wantS []string
		for _, f := range want {
			wantS = append(wantS, f.String())
		}
		if !reflect.DeepEqual(got, wantS) {
			t.Errorf("the Go client read %s: %s", s.StreamID, firstDifference(got, wantS))
		}
		if s.StreamID != "js-abort" {
			if end != io.EOF {
				t.Errorf("%s ended with %v, want io.EOF", s.StreamID, end)
			}
			continue
		}
		var se *client.StreamError
		if !errors.Is(end, client.ErrUserError) || !errors.As(end, &se) ||
			*se != (client.StreamError{StreamID: "js-abort", Name: "UserError", Message: "js gave up", UserErrorCode: "JS-7"}) {
			t.Errorf("js-abort ended with %#v, want the JS client's abort as a UserError", end)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	select {
	case s := <-received:
		t.Fatalf("a stream %q more", s.StreamID)
	default:
	}

	// The Go side read them: the JS client stops.
	if _, err := io.WriteString(stdin, "read\n"); err != nil {
		t.Fatal(err)
	}
	var done struct{ Errors []any }
	if err := json.Unmarshal(awaitStep("done"), &done); err != nil {
		t.Fatal(err)
	}
	if len(done.Errors) > 0 {
		t.Errorf("the JS client's streams had errors: %v", done.Errors)
	}
	for l := range lines {
		t.Errorf("node printed %q after done", l)
	}
	waited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node: %v", err)
	}
	if want := []string{"done", "published", "ready", "received go-abort", "received go-long", "received go-typed"}; !reflect.DeepEqual(stepNames(steps), want) {
		t.Fatalf("steps %v, want %v", stepNames(steps), want)
	}
}

// firstDifference describes where got and want, fragments, first differ.
func firstDifference[T comparable](got, want []T) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("fragment %d is %+v, want %+v (%d fragments, want %d)", i+1, got[i], want[i], len(got), len(want))
		}
	}
	if len(got) != len(want) {
		return fmt.Sprintf("%d fragments, want %d", len(got), len(want))
	}
	return "the same fragments"
}

func stepNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
