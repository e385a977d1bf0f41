package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/protocol"
)

// A stream given up (a fragment nacked 4 times) is ended at the service
// with a streamEnd, which the service answers with streamClosed, no error
// name. A stream opened again with the same id (the application's retry)
// is not closed by that answer: found in review, when OpenGroupStream
// returned no writer and no error.
func TestReusedStreamIDIsNotClosedByTheOldStreamsClose(t *testing.T) {
	svc := &scriptService{}
	svc.onFrame = func(c *gws.Conn, _ int, f scriptFrame) {
		switch {
		case f.Type == "sendToGroup" && f.Stream != nil:
			_ = c.WriteString(streamAckFrame(f.Stream.StreamID, 1))
		case f.Type == "streamData":
			_ = c.WriteString(streamNackFrame(f.StreamID, 1, "TransientError"))
		case f.Type == "streamEnd": // the abandon's
			_ = c.WriteString(fmt.Sprintf(`{"type":"streamClosed","streamId":%q,"message":"ended by the publisher"}`, f.StreamID))
		}
	}
	u := serveScript(t, svc)
	ctx := ctxFor(t)
	c := start(t, u, client.Options{Protocol: client.JSON()})
	s, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, protocol.Text, []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("the stream was not given up")
	}
	var se *client.StreamError
	if !errors.As(s.Err(), &se) {
		t.Fatalf("given up with %v", s.Err())
	}
	// The application tries again, with the same id.
	s2, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "s"})
	if s2 == nil && err == nil {
		t.Fatal("OpenGroupStream returned (nil, nil): the old stream's streamClosed ended the new one")
	}
	if err != nil {
		t.Fatalf("OpenGroupStream again: %v", err)
	}
	select {
	case <-s2.Done():
		t.Fatalf("the new stream ended at once (Err %v): the old stream's streamClosed was taken as its own", s2.Err())
	default:
	}
}

// On json.webpubsub.azure.v1, a transport that ends before a stream's
// start is acknowledged ends the connection and the stream: OpenGroupStream
// returns ErrConnectionLost at once, rather than waiting for a next
// connection it does not need until its ctx ends (found in review).
func TestOpenGroupStreamFailsWithItsConnection(t *testing.T) {
	svc := &scriptService{onFrame: func(c *gws.Conn, _ int, f scriptFrame) {
		if f.Type == "sendToGroup" && f.Stream != nil {
			_ = c.NetConn().Close() // the transport drops before the ack
		}
	}}
	u := serveScript(t, svc)
	first := true
	cred := func(ctx context.Context) (string, error) {
		if first {
			first = false
			return u, nil
		}
		<-ctx.Done() // no new connection: until Stop
		return "", ctx.Err()
	}
	c := start(t, cred, client.Options{Protocol: client.JSON(), RetryDelay: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "s"})
	if !errors.Is(err, client.ErrConnectionLost) {
		t.Fatalf("OpenGroupStream: %v, want ErrConnectionLost as soon as the connection ended", err)
	}
}

// LeaveGroup ends the group's received streams with ErrLeftGroup. A
// fragment the service fanned out before the leave but wrote after its ack
// (a fan-out snapshots the group's members, then delivers) starts no new
// stream of the group left, which nothing would end before
// StreamIdleTimeout (found in review). (Here the late fragment is written
// when the next request comes, to order it after LeaveGroup.)
func TestLateFragmentOfAGroupLeftStartsNoStream(t *testing.T) {
	frag := func(seq uint64) string {
		return fmt.Sprintf(`{"type":"message","from":"group","group":"g","dataType":"text","data":"f%d","stream":{"streamId":"x","streamSequenceId":%d}}`, seq, seq)
	}
	svc := &scriptService{onFrame: func(c *gws.Conn, _ int, f scriptFrame) {
		switch f.Type {
		case "joinGroup":
			_ = c.WriteString(frag(1))
			_ = c.WriteString(fmt.Sprintf(`{"type":"ack","ackId":%d,"success":true}`, f.AckID))
		case "leaveGroup":
			_ = c.WriteString(fmt.Sprintf(`{"type":"ack","ackId":%d,"success":true}`, f.AckID))
		case "event":
			// Fanned out before the leave, delivered late: after the
			// leave's ack, and here after LeaveGroup returned.
			_ = c.WriteString(frag(2))
			_ = c.WriteString(`{"type":"message","from":"server","dataType":"text","data":"barrier"}`)
			_ = c.WriteString(fmt.Sprintf(`{"type":"ack","ackId":%d,"success":true}`, f.AckID))
		}
	}}
	u := serveScript(t, svc)
	ctx := ctxFor(t)
	o, received := streamsOf(client.Options{Protocol: client.JSON()})
	ev := newEvents()
	c := start(t, u, ev.options(o))
	if err := c.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := c.LeaveGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := c.SendEvent(ctx, "e", protocol.Text, []byte("x")); err != nil {
		t.Fatal(err)
	}
	first := next(t, received, "the stream")
	for {
		if _, err := first.Next(ctx); err != nil {
			if !errors.Is(err, client.ErrLeftGroup) {
				t.Fatalf("the stream ended with %v", err)
			}
			break
		}
	}
	next(t, ev.server, "the barrier") // events come in order: a stream handed out before it is here
	select {
	case s := <-received:
		t.Fatalf("after LeaveGroup, a new stream %q of the group left was handed out (mid-stream); it ends only at StreamIdleTimeout", s.StreamID)
	default:
	}
}
