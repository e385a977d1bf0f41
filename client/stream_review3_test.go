package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/lxzan/gws"

	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/protocol"
)

// serverLikeStreams scripts a service whose streams behave as this module's
// server's (stream.go): a start of a stream already open is answered with
// a streamAck of what it expects (a start sent again), a streamEnd ends the
// stream with a streamClosed without an error name, and a frame for a
// stream not open is answered StreamNotFound. Every data fragment is
// refused with TransientError (a publish that keeps failing).
func serverLikeStreams() *scriptService {
	open := map[string]bool{}
	return &scriptService{onFrame: func(c *gws.Conn, _ int, f scriptFrame) {
		var reply string
		switch {
		case f.Type == "sendToGroup" && f.Stream != nil:
			open[f.Stream.StreamID] = true
			reply = streamAckFrame(f.Stream.StreamID, 1)
		case f.Type == "sendToGroup" && f.AckID != 0:
			reply = fmt.Sprintf(`{"type":"ack","ackId":%d,"success":true}`, f.AckID)
		case f.Type == "streamData" && !open[f.StreamID], f.Type == "streamEnd" && !open[f.StreamID]:
			reply = fmt.Sprintf(`{"type":"streamClosed","streamId":%q,"name":%q,"message":"not open"}`, f.StreamID, protocol.StreamNotFound)
		case f.Type == "streamData":
			reply = streamNackFrame(f.StreamID, 1, "TransientError")
		case f.Type == "streamEnd":
			delete(open, f.StreamID)
			reply = fmt.Sprintf(`{"type":"streamClosed","streamId":%q,"message":"ended by the publisher"}`, f.StreamID)
		}
		if reply != "" {
			_ = c.WriteString(reply)
		}
	}}
}

// A stream given up after its fragment was refused 4 times keeps its id
// until the service closed it: a stream opened again with that id at once
// is not answered as a start sent again, nor ended by the abandon's
// streamEnd (found in review, when the id was freed before the abandon was
// written).
func TestReopenAfterGiveUpIsNotEndedByTheAbandon(t *testing.T) {
	u := serveScript(t, serverLikeStreams())
	ctx := ctxFor(t)
	c := start(t, u, client.Options{Protocol: client.JSON()})
	for i := range 30 {
		id := fmt.Sprint("s", i)
		s, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: id})
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
		if !errors.As(s.Err(), &se) || se.Name != "TransientError" {
			t.Fatalf("given up with %v", s.Err())
		}
		// At once, the same id again.
		s2, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: id})
		if err != nil {
			t.Fatalf("iteration %d: OpenGroupStream again: %v", i, err)
		}
		// A barrier: what the service answered before it has come.
		if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("barrier")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-s2.Done():
			t.Fatalf("iteration %d: the stream opened again ended before anything was written to it (Err %v): the abandon of the stream given up, written after the new start, ended it at the service",
				i, s2.Err())
		default:
		}
	}
}

// OpenGroupStream given up (its ctx ended before the start's ack) ends the
// stream at the service with a streamEnd. The service's answers to the old
// stream (its start's streamAck, then the abandon's streamClosed) come
// late: they are not taken as those of a stream opened again with the same
// id, which waits for them (found in review, when the id was freed at once).
func TestReopenAfterCancelledOpenIsNotTakenByTheOldAnswers(t *testing.T) {
	starts := 0
	svc := &scriptService{onFrame: func(c *gws.Conn, _ int, f scriptFrame) {
		switch {
		case f.Type == "sendToGroup" && f.Stream != nil:
			if starts++; starts == 2 {
				_ = c.WriteString(streamAckFrame(f.Stream.StreamID, 1))
			}
		case f.Type == "streamEnd":
			// Delivered late, after the abandon: the first start's ack,
			// then the abandon's close.
			_ = c.WriteString(streamAckFrame(f.StreamID, 1))
			_ = c.WriteString(streamClosedFrame(f.StreamID))
		case f.Type == "sendToGroup" && f.AckID != 0:
			_ = c.WriteString(fmt.Sprintf(`{"type":"ack","ackId":%d,"success":true}`, f.AckID))
		}
	}}
	u := serveScript(t, svc)
	ctx := ctxFor(t)
	c := start(t, u, client.Options{Protocol: client.JSON()})
	short, cancel := context.WithCancel(ctx)
	opened := make(chan error, 1)
	go func() {
		_, err := c.OpenGroupStream(short, "g", client.StreamOptions{StreamID: "s"})
		opened <- err
	}()
	// The start went out: a barrier request written after it is answered.
	for {
		svc.mu.Lock()
		n := starts
		svc.mu.Unlock()
		if n == 1 {
			break
		}
		if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("barrier")); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-opened; !errors.Is(err, context.Canceled) {
		t.Fatalf("OpenGroupStream: %v, want context.Canceled", err)
	}
	s2, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "s"})
	if err != nil {
		t.Fatalf("OpenGroupStream again: %v", err)
	}
	if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("barrier")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s2.Done():
		t.Fatalf("the stream opened again ended (Err %v) with the streamClosed of the stream given up", s2.Err())
	default:
	}
}
