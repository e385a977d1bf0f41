package pubsub_test

// FuzzClientFrames fuzzes the frame path through the service's own handler,
// not gws alone: arbitrary bytes written after a real handshake, for every
// subprotocol, must never panic the service, never leave a connection
// hanging, and never disturb another client.

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol/pb"
)

// fuzzSubprotocols are every way a client can speak: simple (none), and
// the four predefined subprotocols.
var fuzzSubprotocols = []string{"", jsonProtocol, reliableJSON, protobufProtocol, reliableProtobufProtocol}

const (
	fuzzMessageTimeout = 200 * time.Millisecond
	fuzzMaxMessageSize = 64 << 10
	// fuzzEndWithin bounds how long the server may take to end a
	// connection once the client has half-closed it, or has sent its close
	// frame (after an unfinished frame, that waits for MessageTimeout).
	fuzzEndWithin = 5 * time.Second
)

// FuzzClientFrames: data is written as it is after the handshake; then the
// client half-closes (closeAfter false) or sends a close frame and waits
// (closeAfter true: an unfinished frame swallows it, and only
// MessageTimeout ends the connection). Either way the server must end the
// connection within a bound, with no panic, every byte it held for the
// message released, and a sentinel client still served.
func FuzzClientFrames(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s, false)
	}
	// Unfinished messages, ended by MessageTimeout or by the close frame.
	f.Add(wstest.ClientFrame(true, 0x1, []byte(`{"type":"ping"}`))[:8], true)
	f.Add(append(wstest.ClientFrame(true, 0x2, []byte{0x08}), wstest.ClientFrame(false, 0x2, []byte{0x3a})...), true)
	f.Add(wstest.ClientFrame(true, 0x1, []byte(`{"type":"ping"}`)), true)
	fz := newFuzzEnv(f)
	f.Fuzz(func(t *testing.T, data []byte, closeAfter bool) { fz.run(t, data, closeAfter) })
}

// fuzzEnv is one service for the whole fuzz target, with a sentinel
// client that must stay served whatever the other clients send.
type fuzzEnv struct {
	svc        *pubsub.Service
	hub        *pubsub.Hub
	url        string
	sentinel   *wstest.Client
	sentinelID string
}

func newFuzzEnv(tb testing.TB) *fuzzEnv {
	tb.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	svc, err := pubsub.New(pubsub.Config{
		Endpoint:  srv.URL,
		AccessKey: stressKey,
		Logger:    slog.New(slog.DiscardHandler),
		EventHandler: pubsub.EventHandlerFuncs{
			OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
				return &pubsub.UserEventResponse{DataType: req.DataType, Data: req.Data}, nil // echo: the write path too
			},
		},
		MessageTimeout: fuzzMessageTimeout,
		MaxMessageSize: fuzzMaxMessageSize,
		RecoveryWindow: 20 * time.Millisecond, // a dropped reliable connection goes soon
	})
	if err != nil {
		tb.Fatal(err)
	}
	mux.Handle("/client/", svc.ClientHandler())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		if st := svc.Stats(); st.Connections != 0 || st.InboundBytes != 0 || st.BufferedBytes != 0 || st.Panics != 0 || st.Streams != 0 {
			tb.Errorf("after Shutdown: %+v", st)
		}
		srv.Close()
	})
	hub, _ := svc.Hub("chat")
	fz := &fuzzEnv{svc: svc, hub: hub}
	u := func(user string) string {
		u, err := svc.ClientURL("chat", pubsub.TokenOptions{UserID: user, Roles: allRoles})
		if err != nil {
			tb.Fatal(err)
		}
		return u
	}
	fz.url = u("fuzz")
	fz.sentinel, fz.sentinelID = wstest.DialJSON(tb, u("sentinel"))
	return fz
}

// run writes data on a connection of each subprotocol at once, then
// checks the service.
func (fz *fuzzEnv) run(t *testing.T, data []byte, closeAfter bool) {
	var wg sync.WaitGroup
	for _, p := range fuzzSubprotocols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fz.one(p, data, closeAfter); err != nil {
				t.Errorf("subprotocol %q: %v", p, err)
			}
		}()
	}
	wg.Wait()
	if n := fz.svc.Stats().Panics; n != 0 {
		t.Fatalf("%d panics", n)
	}
	// The sentinel is still served, and nothing came to it meanwhile.
	if err := fz.hub.SendToConnection(context.Background(), fz.sentinelID, pubsub.TextMessage("barrier")); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-fz.sentinel.Frames():
		if !strings.Contains(string(f.Data), "barrier") {
			t.Fatalf("the sentinel got %q", f.Data)
		}
	case <-timeAfter():
		t.Fatal("the sentinel was not served")
	}
	// The fuzzed connections are released (a reliable one after its short
	// recovery window) with whatever they held, their streams included.
	deadline := time.Now().Add(fuzzEndWithin)
	for {
		st := fz.svc.Stats()
		if st.Connections == 1 && st.InboundBytes == 0 && st.Streams == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not released: %+v", st)
		}
		time.Sleep(time.Millisecond) // no event says so: poll, bounded
	}
}

// one connects a client of subprotocol p, writes data, ends its side and
// waits for the server to end the connection.
func (fz *fuzzEnv) one(p string, data []byte, closeAfter bool) error {
	var opts wstest.RawOptions
	if p != "" {
		opts.Subprotocols = []string{p}
	}
	c, err := wstest.TryRawDial(fz.url, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(fuzzEndWithin))
	_ = c.Write(data) // the server may have closed already: no matter
	if closeAfter {
		_ = c.Write(wstest.ClientFrame(true, 0x8, []byte{0x03, 0xe8}))
	} else {
		_ = c.CloseWrite()
	}
	return c.DiscardUntilClosed(fuzzEndWithin)
}

// frames concatenates frames.
func frames(fs ...[]byte) []byte {
	var out []byte
	for _, f := range fs {
		out = append(out, f...)
	}
	return out
}

// pbFrame is a binary frame of an upstream protobuf message.
func pbFrame(m *pb.UpstreamMessage) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return wstest.ClientFrame(true, 0x2, b)
}

// fuzzSeeds are valid frames of each protocol and the malformed ones a
// hostile client would try.
func fuzzSeeds() [][]byte {
	text := func(s string) []byte { return wstest.ClientFrame(true, 0x1, []byte(s)) }
	data := &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "hi"}}
	closePayload := func(code uint16, reason string) []byte {
		return append(binary.BigEndian.AppendUint16(nil, code), reason...)
	}
	masked := func(key [4]byte, payload []byte) []byte { // a real mask key
		out := []byte{0x81, 0x80 | byte(len(payload)), key[0], key[1], key[2], key[3]}
		for i, b := range payload {
			out = append(out, b^key[i%4])
		}
		return out
	}
	length64 := func(opcode byte, n uint64) []byte {
		return binary.BigEndian.AppendUint64([]byte{0x80 | opcode, 0x80 | 127}, n)
	}
	return [][]byte{
		{},
		// JSON requests.
		text(`{"type":"joinGroup","group":"g","ackId":1}`),
		frames(
			text(`{"type":"joinGroup","group":"g","ackId":1}`),
			text(`{"type":"sendToGroup","group":"g","ackId":2,"dataType":"text","data":"x"}`),
			text(`{"type":"event","event":"e","ackId":3,"dataType":"json","data":{"a":[1,2]}}`),
			text(`{"type":"ping"}`),
			text(`{"type":"sequenceAck","sequenceId":1}`),
			text(`{"type":"leaveGroup","group":"g","ackId":4}`),
			text(`{"type":"joinGroup","group":"g","ackId":1}`), // a duplicate ackId
		),
		text(`{"type":"sendToGroup","group":"g","dataType":"binary","data":"AAEC"}`),
		// Group streams: one ended, one left open for the disconnect to end.
		frames(
			text(`{"type":"sendToGroup","group":"g","stream":{"streamId":"a","idleTimeoutMs":100}}`),
			text(`{"type":"streamData","streamId":"a","streamSequenceId":1,"dataType":"text","data":"x"}`),
			text(`{"type":"streamData","streamId":"a","streamSequenceId":3,"dataType":"text","data":"x"}`),
			text(`{"type":"streamData","streamId":"a"}`),
			text(`{"type":"sendToGroup","group":"g","stream":{"streamId":"b"}}`),
			text(`{"type":"streamEnd","streamId":"a","error":{"message":"m"}}`),
		),
		// Unsupported requests: answered, the connection kept.
		frames(
			text(`{"type":"sendToGroup","group":"g","stream":{"streamId":"s"}}`),
			text(`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":"x"}`),
			text(`{"type":"streamEnd","streamId":"s"}`),
			text(`{"type":"setGroupState","group":"g","state":{"a":"b"},"ackId":5}`),
			text(`{"type":"dance"}`),
		),
		wstest.ClientFrame(true, 0x2, []byte{0x82, 0x01, 0x05, 0x0a, 0x01, 'g', 0x10, 0x07}),
		// Group state: set, subscribe (snapshot), update, clear, leave.
		frames(
			text(`{"type":"joinGroup","group":"g","ackId":1}`),
			text(`{"type":"setGroupState","group":"g","state":{"a":"b"},"ackId":2}`),
			text(`{"type":"subscribeGroupState","group":"g","ackId":3}`),
			text(`{"type":"subscribeGroupState","group":"g","ackId":3}`),
			text(`{"type":"setGroupState","group":"g","state":{"a":"c"}}`),
			text(`{"type":"setGroupState","group":"g","state":null,"ackId":4}`),
			text(`{"type":"setGroupState","group":"g","state":{"a":"d"}}`),
			text(`{"type":"unsubscribeGroupState","group":"g","ackId":5}`),
			text(`{"type":"subscribeGroupState","group":"g"}`),
			text(`{"type":"leaveGroup","group":"g","ackId":6}`),
			text(`{"type":"setGroupState","group":"g","state":{"a":"e"},"ackId":7}`),
		),
		text(`{"type":"event","event":"e","dataType":"text","data":"\ud800"}`),
		frames(
			text(`{"type":"invoke","invocationId":"1","target":"event","event":"e","dataType":"json","data":{"a":1}}`),
			text(`{"type":"cancelInvocation","invocationId":"1"}`),
			text(`{"type":"invoke","invocationId":"2","target":"other","event":"e"}`),
		),
		// Protobuf requests.
		pbFrame(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: "g", AckId: u64(1)}}}),
		frames(
			pbFrame(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: "g", AckId: u64(1)}}}),
			pbFrame(sendToGroup("g", 2, data, false)),
			pbFrame(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{Event: "e", AckId: u64(3), Data: data}}}),
			pbFrame(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_PingMessage_{PingMessage: &pb.UpstreamMessage_PingMessage{}}}),
			pbFrame(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SequenceAckMessage_{SequenceAckMessage: &pb.UpstreamMessage_SequenceAckMessage{SequenceId: 1}}}),
			pbFrame(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_LeaveGroupMessage_{LeaveGroupMessage: &pb.UpstreamMessage_LeaveGroupMessage{Group: "g", AckId: u64(4)}}}),
		),
		// Simple client messages.
		frames(text("hello"), wstest.ClientFrame(true, 0x2, []byte{0, 1, 2, 0xff})),
		// Fragmented messages, with pings (and a pong) between fragments.
		frames(wstest.ClientFrame(false, 0x1, []byte(`{"type":`)), wstest.ClientFrame(true, 0x0, []byte(`"ping"}`))),
		frames(wstest.ClientFrame(false, 0x1, []byte(`{"type":`)), wstest.ClientFrame(true, 0x9, []byte("p")), wstest.ClientFrame(false, 0x0, []byte(`"pi`)),
			wstest.ClientFrame(true, 0xA, nil), wstest.ClientFrame(true, 0x0, []byte(`ng"}`))),
		frames(wstest.ClientFrame(false, 0x2, []byte{0x3a}), wstest.ClientFrame(true, 0x9, nil), wstest.ClientFrame(true, 0x0, []byte{0x00})),
		wstest.ClientFrame(false, 0x1, []byte("never finished")),
		frames(wstest.ClientFrame(true, 0x0, []byte("a continuation with no start"))),
		frames(wstest.ClientFrame(false, 0x1, []byte("a")), wstest.ClientFrame(true, 0x1, []byte("a new message before the end"))),
		// Lengths: over MaxMessageSize, huge, negative, and longer than what
		// follows.
		{0x81, 0x80 | 126, 0xff, 0xff, 0, 0, 0, 0},
		append(length64(0x2, fuzzMaxMessageSize+1), 0, 0, 0, 0),
		append(length64(0x2, 1<<40), 0, 0, 0, 0),
		append(length64(0x2, 1<<63), 0, 0, 0, 0),
		append(length64(0x1, 0xffffffffffffffff), 0, 0, 0, 0),
		wstest.ClientFrame(true, 0x1, []byte(strings.Repeat("x", 1000)))[:40],
		wstest.ClientFrame(true, 0x2, make([]byte, 2000)),
		// Close frames: with a code, without, malformed.
		wstest.ClientFrame(true, 0x8, closePayload(1000, "bye")),
		wstest.ClientFrame(true, 0x8, nil),
		wstest.ClientFrame(true, 0x8, []byte{0x03}),
		wstest.ClientFrame(true, 0x8, closePayload(999, "")),
		wstest.ClientFrame(true, 0x8, closePayload(1005, "")),
		wstest.ClientFrame(true, 0x8, closePayload(5000, "")),
		wstest.ClientFrame(true, 0x8, closePayload(1000, "\xff\xfe")),
		frames(wstest.ClientFrame(true, 0x8, closePayload(1001, "")), text(`{"type":"ping"}`)),
		// Invalid UTF-8; binary on JSON; text on protobuf.
		wstest.ClientFrame(true, 0x1, []byte{0xff, 0xfe, 0xfd}),
		wstest.ClientFrame(true, 0x2, []byte(`{"type":"ping"}`)),
		text("not protobuf"),
		wstest.ClientFrame(true, 0x2, []byte{0xff, 0xff, 0xff, 0xff}),
		// Frames RFC 6455 forbids.
		[]byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, // unmasked
		append([]byte{0xC1}, wstest.ClientFrame(true, 0x1, []byte("rsv1"))[1:]...),
		wstest.ClientFrame(true, 0x3, []byte("reserved opcode")),
		wstest.ClientFrame(true, 0xB, nil),
		wstest.ClientFrame(true, 0x9, make([]byte, 126)), // a control frame over 125 bytes
		wstest.ClientFrame(false, 0x9, nil),              // a fragmented control frame
		masked([4]byte{1, 2, 3, 4}, []byte(`{"type":"ping"}`)),
		append(text(`{"type":"ping"}`), "garbage after a frame"...),
		frames(func() [][]byte {
			var fs [][]byte
			for range 100 {
				fs = append(fs, wstest.ClientFrame(true, 0x9, []byte("ping")))
			}
			return fs
		}()...),
	}
}
