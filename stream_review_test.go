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

// Review: a publisher whose send permission was revoked must not keep its
// stream open (and its place in the group's bound, and its receivers
// waiting) with keepalives: a keepalive is a frame of the stream, and is
// checked as a data fragment is.
func TestReviewGroupStreamRevokedPermissionIsNotKeptAliveByKeepalives(t *testing.T) {
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

// Review (passes: lock order): publishers that are members of their own
// group (no noEcho: every fragment is delivered to the publisher's own
// connection under its stream's lock), with idle timers ending streams
// while fragments are published and the publishers leaving mid-stream.
// Streams and counters must all come back to zero, with no deadlock.
func TestReviewGroupStreamSelfDeliveryUnderIdleTimersAndCloses(t *testing.T) {
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
