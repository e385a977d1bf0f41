package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol"
)

// streamsOf collects the streams a client receives.
func streamsOf(o client.Options) (client.Options, chan *client.GroupStream) {
	ch := make(chan *client.GroupStream, 100)
	o.OnGroupStream = func(s *client.GroupStream) { ch <- s }
	return o, ch
}

// readAll reads a received stream to its end: its fragments as
// "type:data", and how it ended.
func readAll(t *testing.T, s *client.GroupStream) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var got []string
	for {
		m, err := s.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("stream %s did not end: %v after %v", s.StreamID, err, got)
			}
			return got, err
		}
		if m.Stream == nil || m.Stream.ID != s.StreamID || m.Group != s.Group {
			t.Fatalf("fragment %+v of stream %s", m, s.StreamID)
		}
		got = append(got, fmt.Sprintf("%v:%s", m.DataType, m.Data))
	}
}

func TestGroupStreams(t *testing.T) {
	for _, p := range []client.Protocol{client.JSONReliable(), client.JSON()} {
		t.Run(p.Name(), func(t *testing.T) {
			e := newEnv(t, pubsub.Config{})
			ctx := ctxFor(t)
			roles := []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}
			ro, received := streamsOf(client.Options{Protocol: p})
			ev := newEvents()
			receiver := start(t, e.url(pubsub.TokenOptions{UserID: "r", Roles: roles}), ev.options(ro))
			if err := receiver.JoinGroup(ctx, "room"); err != nil {
				t.Fatal(err)
			}
			po, echoed := streamsOf(client.Options{Protocol: p})
			publisher := start(t, e.url(pubsub.TokenOptions{UserID: "p", Roles: roles}), po)
			if err := publisher.JoinGroup(ctx, "room"); err != nil {
				t.Fatal(err)
			}

			// A stream of every data type, ended normally.
			s, err := publisher.OpenGroupStream(ctx, "room", client.StreamOptions{StreamID: "typed", NoEcho: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []struct {
				dt   protocol.DataType
				data string
			}{{protocol.Text, "one"}, {protocol.JSON, `{"n":2}`}, {protocol.Binary, "\x00\x03"}, {protocol.Text, ""}} {
				if err := s.Write(ctx, f.dt, []byte(f.data)); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.End(ctx); err != nil {
				t.Fatalf("End: %v", err)
			}
			select {
			case <-s.Done():
			default:
				t.Fatal("Done is open after End")
			}
			if err := s.Write(ctx, protocol.Text, []byte("late")); !errors.Is(err, client.ErrStreamEnded) {
				t.Fatalf("Write after End: %v", err)
			}
			r := next(t, received, "the typed stream")
			if r.Group != "room" || r.StreamID != "typed" {
				t.Fatalf("stream %+v", r)
			}
			got, err := readAll(t, r)
			want := []string{"text:one", `json:{"n":2}`, "binary:\x00\x03", "text:"}
			if err != io.EOF || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("got %q, %v; want %q, EOF", got, err, want)
			}
			// The fragments came to OnGroupMessage too, marked, from "p".
			for i := range 5 {
				m := next(t, ev.group, "a fragment as a group message")
				if m.Stream == nil || m.Stream.Sequence != uint64(i+1) || m.Stream.End != (i == 4) || m.FromUserID != "p" {
					t.Fatalf("fragment %d: %+v %+v", i, m, m.Stream)
				}
			}

			// Three streams written at once, each in order; one aborted.
			var wg sync.WaitGroup
			errs := make(chan error, 3)
			for _, id := range []string{"a", "b", "c"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, err := publisher.OpenGroupStream(ctx, "room", client.StreamOptions{StreamID: id, NoEcho: true})
					if err != nil {
						errs <- err
						return
					}
					for i := range 50 {
						if err := s.Write(ctx, protocol.Text, []byte(fmt.Sprintf("%s%d", id, i))); err != nil {
							errs <- err
							return
						}
					}
					if id == "c" {
						errs <- s.Abort(ctx, "gave up", "E42")
					} else {
						errs <- s.End(ctx)
					}
				}()
			}
			wg.Wait()
			for range 3 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				r := next(t, received, "a parallel stream")
				got, err := readAll(t, r)
				if len(got) != 50 {
					t.Fatalf("stream %s: %d fragments", r.StreamID, len(got))
				}
				for i, g := range got {
					if g != fmt.Sprintf("text:%s%d", r.StreamID, i) {
						t.Fatalf("stream %s fragment %d is %q", r.StreamID, i, g)
					}
				}
				var se *client.StreamError
				switch {
				case r.StreamID == "c":
					if !errors.Is(err, client.ErrUserError) || !errors.As(err, &se) || se.Message != "gave up" || se.UserErrorCode != "E42" {
						t.Fatalf("aborted stream ended with %v", err)
					}
				case err != io.EOF:
					t.Fatalf("stream %s ended with %v", r.StreamID, err)
				}
			}

			// The service's idle timeout ends a stream for both sides.
			idle, err := publisher.OpenGroupStream(ctx, "room", client.StreamOptions{IdleTimeout: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if len(idle.ID()) != 32 {
				t.Fatalf("a random stream id %q", idle.ID())
			}
			if err := idle.Write(ctx, protocol.Text, []byte("only")); err != nil {
				t.Fatal(err)
			}
			select {
			case <-idle.Done():
			case <-ctx.Done():
				t.Fatal("the idle stream did not end")
			}
			if err := idle.Err(); !errors.Is(err, client.ErrIdleTimeout) {
				t.Fatalf("idle stream: %v", err)
			}
			if err := idle.End(ctx); !errors.Is(err, client.ErrIdleTimeout) {
				t.Fatalf("End of the idle stream: %v", err)
			}
			got, err = readAll(t, next(t, received, "the idle stream"))
			if fmt.Sprint(got) != "[text:only]" || !errors.Is(err, client.ErrIdleTimeout) {
				t.Fatalf("idle stream received %q, %v", got, err)
			}
			// Without noEcho, the publisher gets its own stream.
			if r := next(t, echoed, "the echoed idle stream"); r.StreamID != idle.ID() {
				t.Fatalf("echoed %s: the noEcho streams came back", r.StreamID)
			}
		})
	}
}

func TestGroupStreamRefusals(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := ctxFor(t)
	c := start(t, e.url(pubsub.TokenOptions{UserID: "x", Roles: []string{"webpubsub.sendToGroup.mine"}}), client.Options{})
	_, err := c.OpenGroupStream(ctx, "other", client.StreamOptions{})
	var se *client.StreamError
	if !errors.Is(err, client.ErrForbidden) || !errors.As(err, &se) {
		t.Fatalf("a stream without permission: %v", err)
	}
	if _, err := c.OpenGroupStream(ctx, " ", client.StreamOptions{}); !errors.Is(err, protocol.ErrInvalidMessage) {
		t.Fatalf("a stream to a bad group name: %v", err)
	}
	s, err := c.OpenGroupStream(ctx, "mine", client.StreamOptions{StreamID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenGroupStream(ctx, "mine", client.StreamOptions{StreamID: "x"}); err == nil {
		t.Fatal("a second stream of the same id opened")
	}
	if err := s.Write(ctx, protocol.JSON, []byte("{")); !errors.Is(err, protocol.ErrInvalidMessage) {
		t.Fatalf("a bad JSON fragment: %v", err)
	}
	if err := s.KeepAlive(ctx); err != nil {
		t.Fatal(err)
	}
	// The refused fragment left no hole: the stream ends normally.
	if err := s.Write(ctx, protocol.JSON, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := s.End(ctx); err != nil {
		t.Fatalf("End: %v", err)
	}

	pb := start(t, e.url(pubsub.TokenOptions{UserID: "x", Roles: []string{"webpubsub.sendToGroup"}}), client.Options{Protocol: client.ProtobufReliable()})
	if _, err := pb.OpenGroupStream(ctx, "mine", client.StreamOptions{}); !errors.Is(err, protocol.ErrNotInProtobuf) {
		t.Fatalf("a stream on protobuf: %v", err)
	}
}

// TestGroupStreamSurvivesRecovery cuts a reliable publisher's transport
// while it writes: the fragments the service did not acknowledge are
// written again on the recovered transport, and the receiver gets each
// once, in order, on one stream.
func TestGroupStreamSurvivesRecovery(t *testing.T) {
	const total = 3000
	e := newEnv(t, pubsub.Config{RecoveryWindow: time.Minute})
	ctx := ctxFor(t)
	ro, received := streamsOf(client.Options{})
	receiver := start(t, e.url(pubsub.TokenOptions{UserID: "r", Roles: []string{"webpubsub.joinLeaveGroup"}}), ro)
	if err := receiver.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ev := newEvents()
	u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "p", Roles: []string{"webpubsub.sendToGroup"}}))
	publisher := start(t, u, ev.options(client.Options{RetryDelay: 10 * time.Millisecond, Logger: testLogger()}))
	connID := next(t, ev.connected, "connected").ConnectionID
	s, err := publisher.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "long"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var r *client.GroupStream
		select {
		case r = <-received: // at its first fragment, below
		case <-ctx.Done():
			done <- errors.New("no stream came")
			return
		}
		var got []string
		var err error
		for {
			var m client.Message
			if m, err = r.Next(ctx); err != nil {
				break
			}
			got = append(got, fmt.Sprintf("%v:%s", m.DataType, m.Data))
		}
		if err != io.EOF {
			done <- fmt.Errorf("ended with %v after %d fragments", err, len(got))
			return
		}
		for i, g := range got {
			if g != fmt.Sprintf("text:%d", i) {
				done <- fmt.Errorf("fragment %d is %q (of %d)", i, g, len(got))
				return
			}
		}
		if len(got) != total {
			done <- fmt.Errorf("%d fragments, want %d", len(got), total)
			return
		}
		done <- nil
	}()
	for i := range total {
		if err := s.Write(ctx, protocol.Text, []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("fragment %d: %v", i, err)
		}
		if i%700 == 350 {
			proxy.Drop() // with fragments in flight, unacknowledged
		}
	}
	if err := s.End(ctx); err != nil {
		t.Fatalf("End: %v", err)
	}
	if err := next(t, done, "the received stream's end"); err != nil {
		t.Fatal(err)
	}
	if n := proxy.Accepted(); n < 5 {
		t.Fatalf("%d transports: the cuts did not happen", n)
	}
	if publisher.ConnectionID() != connID {
		t.Fatalf("connection %s became %s: not recovered", connID, publisher.ConnectionID())
	}
}

// A connection that ends for good ends its streams, written and received,
// with ErrConnectionLost; Stop ends them with ErrStopped.
func TestGroupStreamsEndWithTheConnection(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := ctxFor(t)
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	roles := []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}
	ro, received := streamsOf(client.Options{Protocol: client.JSON(), RetryDelay: 10 * time.Millisecond})
	ev := newEvents()
	receiver := start(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Roles: roles})), ev.options(ro))
	next(t, ev.connected, "connected")
	if err := receiver.JoinGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	publisher := start(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "p", Roles: roles})), client.Options{Protocol: client.JSON(), RetryDelay: 10 * time.Millisecond})
	s, err := publisher.OpenGroupStream(ctx, "g", client.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, protocol.Text, []byte("1")); err != nil {
		t.Fatal(err)
	}
	r := next(t, received, "the stream")
	if m, err := r.Next(ctx); err != nil || string(m.Data) != "1" {
		t.Fatalf("first fragment %q, %v", m.Data, err)
	}
	proxy.Drop()
	if _, err := r.Next(ctx); !errors.Is(err, client.ErrConnectionLost) {
		t.Fatalf("received stream after the drop: %v", err)
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("the written stream did not end with its connection")
	}
	if err := s.Write(ctx, protocol.Text, []byte("2")); !errors.Is(err, client.ErrConnectionLost) {
		t.Fatalf("Write after the drop: %v", err)
	}

	// On the new connection, a stream ends with Stop.
	next(t, ev.connected, "the new connection")
	s, err = publisher.OpenGroupStream(ctx, "g", client.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, protocol.Text, []byte("3")); err != nil {
		t.Fatal(err)
	}
	r = next(t, received, "the stream on the new connection")
	if _, err := r.Next(ctx); err != nil {
		t.Fatal(err)
	}
	receiver.Stop()
	publisher.Stop()
	if _, err := r.Next(ctx); !errors.Is(err, client.ErrStopped) {
		t.Fatalf("received stream after Stop: %v", err)
	}
	if err := s.End(ctx); !errors.Is(err, client.ErrStopped) {
		t.Fatalf("End after Stop: %v", err)
	}
}

// A fragment the service could not publish is written again, with what
// followed it; the gaps those make are not answered with more rewinds.
func TestGroupStreamWritesAgainWhatWasNacked(t *testing.T) {
	const total = 200
	// The service's publish of fragment 2 fails once (a transient
	// streamNack); what comes after it is refused as a gap, as the spec
	// says. It records every data fragment it gets.
	var next uint64
	failed := false
	var received, accepted []string // "seq:data" of every streamData; the data accepted
	svc := &scriptService{onFrame: func(c *gws.Conn, _ int, f scriptFrame) {
		var reply string
		switch {
		case f.Type == "sendToGroup" && f.Stream != nil:
			next = 1
			reply = streamAckFrame(f.Stream.StreamID, 1)
		case f.Type == "streamData" && f.StreamSequenceID > 0:
			seq := f.StreamSequenceID
			received = append(received, fmt.Sprintf("%d:%s", seq, f.Data))
			switch {
			case seq == 2 && !failed:
				failed = true
				reply = streamNackFrame(f.StreamID, next, "InternalServerError")
			case seq > next:
				reply = streamNackFrame(f.StreamID, next, protocol.StreamInvalidSequenceID)
			case seq < next:
				reply = streamAckFrame(f.StreamID, next)
			default:
				accepted = append(accepted, string(f.Data))
				next++
				reply = streamAckFrame(f.StreamID, next)
			}
		case f.Type == "streamEnd":
			reply = streamClosedFrame(f.StreamID)
		}
		if reply != "" {
			_ = c.WriteString(reply)
		}
	}}
	u := serveScript(t, svc)
	ctx := ctxFor(t)
	c := start(t, u, client.Options{Protocol: client.JSON()})
	s, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{StreamID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range total {
		if err := s.Write(ctx, protocol.Text, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.End(ctx); err != nil {
		t.Fatalf("End: %v", err)
	}
	c.Stop()
	svc.mu.Lock()
	defer svc.mu.Unlock()
	for i, a := range accepted {
		if a != fmt.Sprintf(`"%d"`, i) {
			t.Fatalf("the service accepted %q as fragment %d", a, i+1)
		}
	}
	if len(accepted) != total {
		t.Fatalf("the service accepted %d fragments, want %d", len(accepted), total)
	}
	// One rewind: each fragment from 2 on written at most twice.
	if n := len(received); n > 2*total {
		t.Fatalf("%d fragments written for %d", n, total)
	}
	t.Logf("%d fragments written for %d", len(received), total)
}

// A fragment the service closes the connection over is not written again
// forever: the stream ends with ErrConnectionLost.
func TestTooBigFragmentEndsTheStream(t *testing.T) {
	for _, p := range []client.Protocol{client.JSONReliable(), client.JSON()} {
		t.Run(p.Name(), func(t *testing.T) {
			e := newEnv(t, pubsub.Config{MaxMessageSize: 4096})
			proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
			u := proxy.URL(e.url(pubsub.TokenOptions{UserID: "u", Roles: []string{"webpubsub.sendToGroup"}}))
			c := start(t, u, client.Options{Protocol: p, RetryDelay: 10 * time.Millisecond})
			ctx := ctxFor(t)
			s, err := c.OpenGroupStream(ctx, "g", client.StreamOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(ctx, protocol.Binary, make([]byte, 8192)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-s.Done():
			case <-ctx.Done():
				t.Fatalf("the stream did not end; %d transports", proxy.Accepted())
			}
			if err := s.Err(); !errors.Is(err, client.ErrConnectionLost) {
				t.Fatalf("stream ended with %v", err)
			}
			if n := proxy.Accepted(); n > 5 {
				t.Fatalf("%d transports for one fragment", n)
			}
			if err := c.SendToGroup(ctx, "g", protocol.Text, []byte("small")); err != nil {
				t.Fatalf("after it: %v", err)
			}
		})
	}
}

// Leaving a group ends the streams of it being received: no more of them
// will come.
func TestLeavingEndsReceivedStreams(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := ctxFor(t)
	ro, received := streamsOf(client.Options{})
	roles := []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}
	receiver := start(t, e.url(pubsub.TokenOptions{UserID: "r", Roles: roles}), ro)
	for _, g := range []string{"left", "kept"} {
		if err := receiver.JoinGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	publisher := start(t, e.url(pubsub.TokenOptions{UserID: "p", Roles: roles}), client.Options{})
	streams := map[string]*client.GroupStream{}
	for _, g := range []string{"left", "kept"} {
		s, err := publisher.OpenGroupStream(ctx, g, client.StreamOptions{StreamID: g})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Write(ctx, protocol.Text, []byte(g)); err != nil {
			t.Fatal(err)
		}
		r := next(t, received, "stream of "+g)
		if m, err := r.Next(ctx); err != nil || string(m.Data) != g {
			t.Fatalf("%s: %q %v", g, m.Data, err)
		}
		streams[r.Group] = r
	}
	if err := receiver.LeaveGroup(ctx, "left"); err != nil {
		t.Fatal(err)
	}
	if _, err := streams["left"].Next(ctx); !errors.Is(err, client.ErrLeftGroup) {
		t.Fatalf("the left group's stream: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if m, err := streams["kept"].Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the kept group's stream: %+v %v", m, err)
	}
}
