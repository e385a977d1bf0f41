package pubsub_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// streamEnv is a hub with a publisher and a JSON receiver in group "room".
type streamEnv struct {
	*testEnv
	pub, recv     *wstest.Client
	pubID, recvID string
}

func newStreamEnv(t *testing.T, cfg pubsub.Config) *streamEnv {
	e := &streamEnv{testEnv: newEnv(t, cfg)}
	e.pub, e.pubID = wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "pub", Roles: allRoles}))
	e.recv, e.recvID = wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "recv", Groups: []string{"room"}}))
	return e
}

// expect reads c's next frame and compares it with want, exactly.
func expect(t *testing.T, c *wstest.Client, want string) {
	t.Helper()
	if f := c.Next(); string(f.Data) != want {
		t.Fatalf("got  %s\nwant %s", f.Data, want)
	}
}

func fragment(stream string, seq int, data string) string {
	return `{"type":"message","from":"group","group":"room","fromUserId":"pub","stream":{"streamId":"` + stream + `","streamSequenceId":` + itoa(seq) + `},"dataType":"text","data":"` + data + `"}`
}

func endFragment(stream string, seq int, errJSON string) string {
	e := ""
	if errJSON != "" {
		e = `,"error":` + errJSON
	}
	return `{"type":"message","from":"group","group":"room","fromUserId":"pub","stream":{"streamId":"` + stream + `","streamSequenceId":` + itoa(seq) + `,"endOfStream":true` + e + `},"dataType":"text","data":""}`
}

func streamAck(stream string, expected int) string {
	return `{"type":"streamAck","streamId":"` + stream + `","expectedSequenceId":` + itoa(expected) + `}`
}

func streamData(stream string, seq int, data string) string {
	return `{"type":"streamData","streamId":"` + stream + `","streamSequenceId":` + itoa(seq) + `,"dataType":"text","data":"` + data + `"}`
}

func startStream(stream string, extra string) string {
	return `{"type":"sendToGroup","group":"room"` + extra + `,"stream":{"streamId":"` + stream + `"}}`
}

// TestGroupStream: a stream's fragments reach the group in order as group
// messages carrying the stream (JSON, reliable JSON), or as plain group
// messages (protobuf, simple), each acknowledged to the publisher; the end
// reaches JSON receivers as a terminal fragment and the publisher as
// streamClosed.
func TestGroupStream(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	rel := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "rel", Groups: []string{"room"}}), nil, "json.reliable.webpubsub.azure.v1")
	rel.NextJSON()
	pbc, _ := dialProtobuf(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}), "protobuf.webpubsub.azure.v1")
	simple := wstest.Dial(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}), nil)

	e.pub.Send(startStream("s1", `,"noEcho":false`))
	expect(t, e.pub, streamAck("s1", 1))
	for i := 1; i <= 3; i++ {
		e.pub.Send(streamData("s1", i, "chunk"+itoa(i)))
		expect(t, e.pub, streamAck("s1", i+1))
	}
	e.pub.Send(`{"type":"streamEnd","streamId":"s1"}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s1"}`)

	for i := 1; i <= 3; i++ {
		expect(t, e.recv, fragment("s1", i, "chunk"+itoa(i)))
		expect(t, rel, `{"sequenceId":`+itoa(i)+`,`+strings.TrimPrefix(fragment("s1", i, "chunk"+itoa(i)), "{"))
		if m := pbc.next().GetDataMessage(); m.GetGroup() != "room" || m.GetData().GetTextData() != "chunk"+itoa(i) {
			t.Fatalf("protobuf receiver got %v", m)
		}
		if f := simple.Next(); f.Binary || string(f.Data) != "chunk"+itoa(i) {
			t.Fatalf("simple receiver got %q", f.Data)
		}
	}
	expect(t, e.recv, endFragment("s1", 4, ""))
	expect(t, rel, `{"sequenceId":4,`+strings.TrimPrefix(endFragment("s1", 4, ""), "{"))
	// Nothing more: the protobuf and simple receivers got no terminal
	// fragment, and the next message is the barrier.
	e.barrier(e.recv, e.recvID)
	if err := e.hub.SendToGroup(context.Background(), "room", pubsub.TextMessage("after")); err != nil {
		t.Fatal(err)
	}
	if m := pbc.next().GetDataMessage(); m.GetData().GetTextData() != "after" {
		t.Fatalf("protobuf receiver got %v, want the message after the stream", m)
	}
	if f := simple.Next(); string(f.Data) != "after" {
		t.Fatalf("simple receiver got %q, want the message after the stream", f.Data)
	}
	if n := e.svc.Stats().Streams; n != 0 {
		t.Fatalf("Stats().Streams = %d after the stream ended", n)
	}
}

// TestGroupStreamSequence: a duplicate fragment is acknowledged again and not
// republished, a gap is refused with streamNack, a keepalive is not
// delivered, and noEcho keeps the publisher's own fragments from it.
func TestGroupStreamSequence(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	e.pub.Send(`{"type":"joinGroup","group":"room","ackId":1}`)
	e.pub.ExpectAck(1, "")

	e.pub.Send(startStream("s", `,"noEcho":true`))
	expect(t, e.pub, streamAck("s", 1))
	e.pub.Send(streamData("s", 1, "a"))
	expect(t, e.pub, streamAck("s", 2))
	e.pub.Send(streamData("s", 1, "a"))
	expect(t, e.pub, streamAck("s", 2))
	e.pub.Send(streamData("s", 3, "c"))
	expect(t, e.pub, `{"type":"streamNack","streamId":"s","expectedSequenceId":2,"name":"InvalidSequenceId","message":"Expected streamSequenceId 2, got 3."}`)
	e.pub.Send(`{"type":"streamData","streamId":"s"}`)
	e.pub.Send(streamData("s", 2, "b"))
	expect(t, e.pub, streamAck("s", 3))
	// A start sent again is answered with what the stream expects now.
	e.pub.Send(startStream("s", ""))
	expect(t, e.pub, streamAck("s", 3))
	e.pub.Send(`{"type":"streamEnd","streamId":"s"}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s"}`)

	expect(t, e.recv, fragment("s", 1, "a"))
	expect(t, e.recv, fragment("s", 2, "b"))
	expect(t, e.recv, endFragment("s", 3, ""))
	e.barrier(e.recv, e.recvID)
	e.barrier(e.pub, e.pubID) // noEcho: none of its fragments
}

// TestGroupStreamErrors: every refusal is a stream frame, and the
// connection stays.
func TestGroupStreamErrors(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	noSend, noSendID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroup.other"}}))

	noSend.Send(startStream("s", ""))
	expect(t, noSend, `{"type":"streamClosed","streamId":"s","error":{"name":"Forbidden","message":"The client does not have permission to send to group 'room'."}}`)
	noSend.Send(streamData("s", 1, "x"))
	expect(t, noSend, `{"type":"streamClosed","streamId":"s","error":{"name":"StreamNotFound","message":"The stream 's' is not open."}}`)
	noSend.Send(`{"type":"streamEnd","streamId":"s"}`)
	expect(t, noSend, `{"type":"streamClosed","streamId":"s","error":{"name":"StreamNotFound","message":"The stream 's' is not open."}}`)
	e.barrier(noSend, noSendID)

	e.pub.Send(`{"type":"sendToGroup","group":"room","ackId":1,"stream":{"streamId":"s"}}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s","error":{"name":"BadRequest","message":"A stream start carries no ackId, data, dataType, metadata or ttlSeconds."}}`)
	e.pub.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"s","idleTimeoutMs":3600001}}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s","error":{"name":"BadRequest","message":"idleTimeoutMs must be at most 3600000."}}`)

	// A client's error reaches receivers as a UserError.
	e.pub.Send(startStream("a", ""))
	expect(t, e.pub, streamAck("a", 1))
	e.pub.Send(streamData("a", 1, "x"))
	expect(t, e.pub, streamAck("a", 2))
	e.pub.Send(`{"type":"streamEnd","streamId":"a","error":{"message":"gave up","userErrorCode":"E42"}}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"a"}`)
	expect(t, e.recv, fragment("a", 1, "x"))
	expect(t, e.recv, endFragment("a", 2, `{"name":"UserError","message":"gave up","userErrorCode":"E42"}`))

	// A bad frame of an open stream ends it: BadRequest to the publisher,
	// Cancelled to receivers.
	e.pub.Send(startStream("b", ""))
	expect(t, e.pub, streamAck("b", 1))
	e.pub.Send(`{"type":"streamEnd","streamId":"b","error":{"name":"Forbidden","message":"m"}}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"b","error":{"name":"BadRequest","message":"A client's stream error must not carry a name."}}`)
	expect(t, e.recv, endFragment("b", 1, `{"name":"Cancelled","message":"A client's stream error must not carry a name."}`))

	// The same stream id in another group while it is open.
	e.pub.Send(startStream("c", ""))
	expect(t, e.pub, streamAck("c", 1))
	e.pub.Send(`{"type":"sendToGroup","group":"other","stream":{"streamId":"c"}}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"c","error":{"name":"BadRequest","message":"The stream 'c' is already open to another group."}}`)

	// A permission revoked while the stream is open ends it.
	if err := e.hub.RevokePermission(context.Background(), e.pubID, pubsub.PermissionSendToGroup, ""); err != nil {
		t.Fatal(err)
	}
	e.pub.Send(streamData("c", 1, "x"))
	expect(t, e.pub, `{"type":"streamClosed","streamId":"c","error":{"name":"Forbidden","message":"The publisher lost its permission to send to the group."}}`)
	expect(t, e.recv, endFragment("c", 1, `{"name":"Forbidden","message":"The publisher lost its permission to send to the group."}`))

	e.barrier(e.pub, e.pubID)
	e.barrier(e.recv, e.recvID)
	if n := e.svc.Stats().Streams; n != 0 {
		t.Fatalf("Stats().Streams = %d after every stream ended", n)
	}
}

// TestGroupStreamIdleTimeout: a stream with no frame for its idleTimeoutMs
// is closed, for the publisher and the receivers.
func TestGroupStreamIdleTimeout(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	e.pub.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"s","idleTimeoutMs":50}}`)
	expect(t, e.pub, streamAck("s", 1))
	e.pub.Send(streamData("s", 1, "x"))
	expect(t, e.pub, streamAck("s", 2))
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s","error":{"name":"IdleTimeout","message":"The stream had no frame for 50 ms."}}`)
	expect(t, e.recv, fragment("s", 1, "x"))
	expect(t, e.recv, endFragment("s", 2, `{"name":"IdleTimeout","message":"The stream had no frame for 50 ms."}`))
	e.pub.Send(streamData("s", 2, "y"))
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s","error":{"name":"StreamNotFound","message":"The stream 's' is not open."}}`)
}

// TestGroupStreamEndsWithItsPublisher: a publisher's disconnect ends its
// streams for the receivers, with Cancelled.
func TestGroupStreamEndsWithItsPublisher(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	for _, id := range []string{"a", "b"} {
		e.pub.Send(startStream(id, ""))
		expect(t, e.pub, streamAck(id, 1))
	}
	e.pub.Send(streamData("a", 1, "x"))
	expect(t, e.pub, streamAck("a", 2))
	expect(t, e.recv, fragment("a", 1, "x"))
	e.pub.Conn.WriteClose(1000, nil)

	got := map[string]bool{}
	for range 2 {
		f := string(e.recv.Next().Data)
		got[f] = true
	}
	for _, want := range []string{
		endFragment("a", 2, `{"name":"Cancelled","message":"The publisher disconnected."}`),
		endFragment("b", 1, `{"name":"Cancelled","message":"The publisher disconnected."}`),
	} {
		if !got[want] {
			t.Fatalf("receiver got %v, missing %s", got, want)
		}
	}
	eventually(t, "Stats().Streams back to 0", func() bool { return e.svc.Stats().Streams == 0 })
}

// TestGroupStreamLimits: the streams of a connection and of a group are
// bounded; the excess is refused with streamClosed and the connection stays.
func TestGroupStreamLimits(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{MaxStreamsPerConnection: 2, MaxStreamsPerGroup: 3})
	other, otherID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "pub", Roles: allRoles}))

	for _, id := range []string{"a", "b"} {
		e.pub.Send(startStream(id, ""))
		expect(t, e.pub, streamAck(id, 1))
	}
	e.pub.Send(startStream("c", ""))
	expect(t, e.pub, `{"type":"streamClosed","streamId":"c","error":{"name":"BadRequest","message":"The connection has 2 open streams, the most it may have."}}`)
	other.Send(startStream("c", ""))
	expect(t, other, streamAck("c", 1))
	other.Send(startStream("d", ""))
	expect(t, other, `{"type":"streamClosed","streamId":"d","error":{"name":"BadRequest","message":"The group 'room' has 3 open streams, the most it may have."}}`)
	other.Send(`{"type":"sendToGroup","group":"elsewhere","stream":{"streamId":"d"}}`)
	expect(t, other, streamAck("d", 1))

	// Ending one frees its place.
	e.pub.Send(`{"type":"streamEnd","streamId":"a"}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"a"}`)
	other.Send(startStream("e", ""))
	expect(t, other, `{"type":"streamClosed","streamId":"e","error":{"name":"BadRequest","message":"The connection has 2 open streams, the most it may have."}}`)
	e.pub.Send(startStream("e", ""))
	expect(t, e.pub, streamAck("e", 1))
	if n := e.svc.Stats().Streams; n != 4 {
		t.Fatalf("Stats().Streams = %d, want 4", n)
	}
	e.barrier(other, otherID)
}

// TestGroupStreamsInParallel: many streams of several publishers to one
// group, their fragments interleaved, each in order at every receiver.
func TestGroupStreamsInParallel(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	const publishers, streams, fragments = 4, 5, 40
	var wg sync.WaitGroup
	for p := range publishers {
		c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "pub", Roles: allRoles}))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range streams {
				c.Send(startStream(fmt.Sprintf("p%d-s%d", p, s), ""))
			}
			for i := 1; i <= fragments; i++ {
				for s := range streams {
					c.Send(streamData(fmt.Sprintf("p%d-s%d", p, s), i, itoa(i)))
				}
			}
			for s := range streams {
				c.Send(`{"type":"streamEnd","streamId":"` + fmt.Sprintf("p%d-s%d", p, s) + `"}`)
			}
		}()
	}
	next := map[string]int{}
	ended := 0
	for ended < publishers*streams {
		m := e.recv.NextJSON()
		st, _ := m["stream"].(map[string]any)
		id, _ := st["streamId"].(string)
		seq := int(st["streamSequenceId"].(float64))
		if seq != next[id]+1 {
			t.Fatalf("stream %s: fragment %d after %d", id, seq, next[id])
		}
		next[id] = seq
		if st["endOfStream"] == true {
			if seq != fragments+1 {
				t.Fatalf("stream %s ended at %d", id, seq)
			}
			ended++
		} else if m["data"] != itoa(seq) {
			t.Fatalf("stream %s fragment %d has data %v", id, seq, m["data"])
		}
	}
	wg.Wait()
	e.barrier(e.recv, e.recvID)
}

// TestGroupStreamRateLimit: a fragment over the message rate ends the
// stream (the official client would not send a refused fragment again):
// streamClosed TooManyRequests to the publisher, Cancelled to receivers.
// Keepalives and ends are not counted.
func TestGroupStreamRateLimit(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{MaxMessagesPerSecond: 3})
	e.pub.Send(startStream("s", ""))
	expect(t, e.pub, streamAck("s", 1))
	e.pub.Send(`{"type":"streamData","streamId":"s"}`)
	e.pub.Send(streamData("s", 1, "a"))
	expect(t, e.pub, streamAck("s", 2))
	e.pub.Send(startStream("t", ""))
	expect(t, e.pub, streamAck("t", 1))
	e.pub.Send(`{"type":"streamEnd","streamId":"t"}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"t"}`)
	e.pub.Send(streamData("s", 2, "b"))
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s","error":{"name":"TooManyRequests","message":"The publisher sent more than 3 messages per second."}}`)
	expect(t, e.recv, fragment("s", 1, "a"))
	expect(t, e.recv, endFragment("t", 1, ""))
	expect(t, e.recv, endFragment("s", 2, `{"name":"Cancelled","message":"The publisher sent more than 3 messages per second."}`))
}

// TestGroupStreamEndAfterAGap: an end while a refused fragment was never
// sent again ends the stream with an error, not as complete.
func TestGroupStreamEndAfterAGap(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	e.pub.Send(startStream("s", ""))
	expect(t, e.pub, streamAck("s", 1))
	e.pub.Send(streamData("s", 1, "a"))
	expect(t, e.pub, streamAck("s", 2))
	e.pub.Send(streamData("s", 3, "c"))
	expect(t, e.pub, `{"type":"streamNack","streamId":"s","expectedSequenceId":2,"name":"InvalidSequenceId","message":"Expected streamSequenceId 2, got 3."}`)
	e.pub.Send(`{"type":"streamEnd","streamId":"s"}`)
	expect(t, e.pub, `{"type":"streamClosed","streamId":"s","error":{"name":"BadRequest","message":"The stream ended with fragment 2 missing."}}`)
	expect(t, e.recv, fragment("s", 1, "a"))
	expect(t, e.recv, endFragment("s", 2, `{"name":"Cancelled","message":"The stream ended with fragment 2 missing."}`))
}

// TestGroupStreamOutlivesARecovery: a reliable publisher's streams belong
// to its session: after a dropped transport and a recovery, the fragments
// the client sends again are acknowledged, not republished, and the stream
// goes on.
func TestGroupStreamOutlivesARecovery(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "pub", Roles: allRoles})))

	r.c.Send(startStream("s", ""))
	expect(t, r.c, streamAck("s", 1))
	r.c.Send(streamData("s", 1, "a"))
	expect(t, r.c, streamAck("s", 2))
	expect(t, e.recv, fragment("s", 1, "a"))

	proxy.Drop()
	r.lost()
	r.recover()
	// The JS client replays from its oldest unacknowledged fragment.
	r.c.Send(streamData("s", 1, "a"))
	expect(t, r.c, streamAck("s", 2))
	r.c.Send(streamData("s", 2, "b"))
	expect(t, r.c, streamAck("s", 3))
	r.c.Send(`{"type":"streamEnd","streamId":"s"}`)
	expect(t, r.c, `{"type":"streamClosed","streamId":"s"}`)
	expect(t, e.recv, fragment("s", 2, "b"))
	expect(t, e.recv, endFragment("s", 3, ""))
}

// A publisher whose send permission was revoked must not keep its
// stream open (and its place in the group's bound, and its receivers
// waiting) with keepalives: a keepalive is a frame of the stream, and is
// checked as a data fragment is.
func TestGroupStreamRevokedPermissionIsNotKeptAliveByKeepalives(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	e.pub.Send(startStream("s", ""))
	expect(t, e.pub, streamAck("s", 1))
	if err := e.hub.RevokePermission(context.Background(), e.pubID, pubsub.PermissionSendToGroup, ""); err != nil {
		t.Fatal(err)
	}
	e.pub.Send(`{"type":"streamData","streamId":"s"}`)
	// A ping is answered on the read loop after the keepalive was handled.
	e.pub.Send(`{"type":"ping"}`)
	var before []string
	for {
		f := string(e.pub.Next().Data)
		if f == `{"type":"pong"}` {
			break
		}
		before = append(before, f)
	}
	want := `{"type":"streamClosed","streamId":"s","error":{"name":"Forbidden","message":"The publisher lost its permission to send to the group."}}`
	if len(before) != 1 || before[0] != want {
		t.Errorf("before the pong the publisher got %q, want %s", before, want)
	}
	if n := e.svc.Stats().Streams; n != 0 {
		t.Fatalf("Stats().Streams = %d: the stream of a publisher without the permission is kept open by its keepalives", n)
	}
}

// Publishers that are members of their own
// group (no noEcho: every fragment is delivered to the publisher's own
// connection under its stream's lock), with idle timers ending streams
// while fragments are published and the publishers leaving mid-stream.
// Streams and counters must all come back to zero, with no deadlock.
func TestGroupStreamSelfDeliveryUnderIdleTimersAndCloses(t *testing.T) {
	e := newStreamEnv(t, pubsub.Config{})
	const publishers, streams, fragments = 4, 6, 30
	var wg sync.WaitGroup
	for p := range publishers {
		c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "pub", Roles: allRoles, Groups: []string{"room"}}))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range streams {
				c.Send(`{"type":"sendToGroup","group":"room","stream":{"streamId":"` + fmt.Sprintf("p%d-s%d", p, s) + `","idleTimeoutMs":1}}`)
			}
			for i := 1; i <= fragments; i++ {
				for s := range streams {
					c.Send(streamData(fmt.Sprintf("p%d-s%d", p, s), i, itoa(i)))
				}
			}
			c.Conn.WriteClose(1000, nil)
		}()
	}
	wg.Wait()
	eventually(t, "every stream ended", func() bool { return e.svc.Stats().Streams == 0 })
	eventually(t, "every publisher gone", func() bool { return e.svc.Stats().Connections == 2 })
	// The receiver is still served: drain it up to a marker.
	if err := e.hub.SendToConnection(context.Background(), e.recvID, pubsub.TextMessage("marker")); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(string(e.recv.Next().Data), `"data":"marker"`) {
	}
}
