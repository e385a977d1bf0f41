package pubsub_test

// Tests of the bounds on what one client, or a few, can make the service
// hold: groups, hubs, unfinished inbound messages, buffered outbound bytes
// and the inbound message rate.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

func TestGroupsPerConnectionAreBounded(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxGroupsPerConnection: 5})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles, Groups: []string{"g0"}}))
	for i := 1; i <= 4; i++ {
		c.Send(fmt.Sprintf(`{"type":"joinGroup","group":"g%d","ackId":%d}`, i, i))
		c.ExpectAck(i, "")
	}
	c.Send(`{"type":"joinGroup","group":"g5","ackId":5}`)
	if m := c.ExpectAck(5, "BadRequest"); !strings.Contains(fmt.Sprint(m["error"]), "5 groups") {
		t.Fatalf("ack %v", m)
	}
	// Rejoining a group it is in costs nothing; leaving makes room.
	c.Send(`{"type":"joinGroup","group":"g1","ackId":6}`)
	c.ExpectAck(6, "")
	c.Send(`{"type":"leaveGroup","group":"g1","ackId":7}`)
	c.ExpectAck(7, "")
	c.Send(`{"type":"joinGroup","group":"g5","ackId":8}`)
	c.ExpectAck(8, "")
	ctx := context.Background()
	if err := e.hub.AddConnectionToGroup(ctx, id, "g6"); !errors.Is(err, pubsub.ErrTooManyGroups) {
		t.Fatalf("AddConnectionToGroup: %v", err)
	}
	if ok, _ := e.hub.GroupExists(ctx, "g6"); ok {
		t.Fatal("the refused group exists")
	}
	// A token that names more groups than the bound is refused.
	groups := []string{"a", "b", "c", "d", "e", "f"}
	if got := wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{Groups: groups}), nil); got != http.StatusBadRequest {
		t.Fatalf("status %d", got)
	}
}

func TestHubsAreBoundedAndPruned(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxHubs: 2})
	dial := func(hub string) *wstest.Client {
		u, err := e.svc.ClientURL(hub, pubsub.TokenOptions{})
		must(t, err)
		c, _ := wstest.DialJSON(t, u)
		return c
	}
	a := dial("a")
	dial("b")
	dial("b")
	if n := e.svc.Stats().Hubs; n != 2 {
		t.Fatalf("%d hubs", n)
	}
	u, _ := e.svc.ClientURL("c", pubsub.TokenOptions{})
	if got := wstest.HandshakeStatus(t, u, nil); got != http.StatusServiceUnavailable {
		t.Fatalf("a third hub: status %d", got)
	}
	// Operations on a hub no client holds do not create it.
	h, err := e.svc.Hub("d")
	must(t, err)
	must(t, h.SendToAll(context.Background(), pubsub.TextMessage("nobody")))
	if n := e.svc.Stats().Hubs; n != 2 {
		t.Fatalf("%d hubs", n)
	}
	// An empty hub is pruned, which makes room for another.
	a.Conn.WriteClose(1000, nil)
	eventually(t, "the empty hub pruned", func() bool { return e.svc.Stats().Hubs == 1 })
	c := dial("c")
	hc, _ := e.svc.Hub("C") // case-insensitive: the same hub
	must(t, hc.SendToAll(context.Background(), pubsub.TextMessage("hi")))
	if m := c.NextJSON(); m["data"] != "hi" {
		t.Fatalf("got %v", m)
	}
}

// An unfinished message (here a first fragment whose last never comes) is
// closed after MessageTimeout, however many pings the client sends: they
// used to keep it, and the memory gws holds for it, alive for ever.
func TestUnfinishedMessagesTimeOut(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, MessageTimeout: 300 * time.Millisecond})
	other, otherID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	for _, tc := range []struct {
		name  string
		start func(c *wstest.RawClient) error
	}{
		{"fragment", func(c *wstest.RawClient) error { return c.WriteFrame(false, 0x1, []byte(strings.Repeat("x", 1024))) }},
		{"frame", func(c *wstest.RawClient) error {
			frame := wstest.ClientFrame(true, 0x1, make([]byte, 64<<10))
			return c.Write(frame[:32<<10])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: tc.name}))
			must(t, tc.start(c))
			closed := c.Closed()
			// Pings between fragments are allowed, and keep the client
			// seen; only the unfinished message counts.
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			bound := time.After(waitFor)
			for {
				select {
				case cf := <-closed:
					if cf.Code != 1008 || !strings.Contains(cf.Reason, "MessageTimeout") {
						t.Fatalf("close %+v", cf)
					}
				case <-tick.C:
					if tc.name == "fragment" {
						_ = c.WriteFrame(true, 0x9, nil)
					}
					continue
				case <-bound:
					t.Fatal("not closed")
				}
				break
			}
			if d := rec.nextDisconnect(t); d.Conn.UserID != tc.name {
				t.Fatalf("disconnected %+v", d)
			}
		})
	}
	if n := e.svc.Stats().MessageTimeouts; n != 2 {
		t.Fatalf("MessageTimeouts %d", n)
	}
	e.barrier(other, otherID)
}

// The bytes of messages being received, across all clients, are bounded:
// a client whose message would pass the bound is closed (1013), and the
// others' messages are not affected.
func TestInboundBytesAreBounded(t *testing.T) {
	got := make(chan int, 4)
	e := newEnv(t, pubsub.Config{MaxInboundBytes: 1 << 20, EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			got <- len(req.Data)
			return nil, nil
		},
	}})
	a := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "a"}))
	b := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "b"}))
	fa := wstest.ClientFrame(true, 0x2, make([]byte, 600<<10))
	fb := wstest.ClientFrame(true, 0x2, make([]byte, 600<<10))
	must(t, a.Write(fa[:1024]))
	// a's message is under way (its header was read) before b's starts.
	eventually(t, "a's message started", func() bool { return e.svc.Stats().InboundBytes != 0 })
	must(t, b.Write(fb[:1024]))
	if code, reason := expectRawClose(t, b); code != 1013 || !strings.Contains(reason, "inbound") {
		t.Fatalf("b closed %d %q", code, reason)
	}
	must(t, a.Write(fa[1024:]))
	select {
	case n := <-got:
		if n != 600<<10 {
			t.Fatalf("a's message: %d bytes", n)
		}
	case <-timeAfter():
		t.Fatal("a's message never arrived")
	}
	if n := e.svc.Stats().InboundBudgetDisconnects; n != 1 {
		t.Fatalf("InboundBudgetDisconnects %d", n)
	}
}

// Reliable clients that never acknowledge, and clients that do not read,
// share one service-wide budget: past it the connections holding the most
// are closed first, and the others keep being served.
func TestBufferedBytesAreBoundedServiceWide(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, MaxBufferedBytes: 4 << 20})
	ctx := context.Background()
	hog := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "hog", Groups: []string{"g"}}))
	good := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "good", Groups: []string{"g"}}))
	payload := strings.Repeat("x", 64<<10)
	send := func(n int, to string) {
		for range n {
			must(t, e.hub.SendToGroup(ctx, to, pubsub.TextMessage(payload)))
		}
	}
	for i := 1; i <= 30; i++ { // the hog holds about 2 MB it never acknowledges
		send(1, "g")
		good.readUntil(i)
		good.ack()
	}
	late := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "late", Groups: []string{"g", "late"}}))
	send(10, "late") // late holds less than the hog
	for i := 0; ; i++ {
		if i == 200 {
			t.Fatal("the budget never closed anyone")
		}
		send(1, "g")
		good.readUntil(31 + i)
		good.ack()
		if e.svc.Stats().BufferBudgetDisconnects > 0 {
			break
		}
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "hog" || !strings.Contains(d.reason, "budget") {
		t.Fatalf("first closed %+v", d)
	}
	if info, _ := hog.c.ExpectClose(); info.Code != 1008 {
		t.Fatalf("hog closed %+v", info)
	}
	expectNotRecovered(t, hog.recoveryURL(hog.connID, hog.token))
	_ = late
	must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("after")))
	for {
		f := good.c.Next()
		if strings.Contains(string(f.Data), `"after"`) {
			break
		}
	}
}

func TestInboundMessageRateIsBoundedWhenSet(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxMessagesPerSecond: 5, EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) { return nil, nil },
	}})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
	refused := 0
	for i := 1; i <= 20; i++ {
		c.Send(fmt.Sprintf(`{"type":"joinGroup","group":"g","ackId":%d}`, i))
	}
	for i := 1; i <= 20; i++ {
		m := c.NextJSON()
		if m["success"] == false {
			if e, _ := m["error"].(map[string]any); e["name"] != "TooManyRequests" {
				t.Fatalf("ack %v", m)
			}
			refused++
		}
	}
	if refused < 10 {
		t.Fatalf("%d of 20 requests refused at 5 per second", refused)
	}
	e.barrier(c, id) // still connected
	if n := e.svc.Stats().RateLimited; n != int64(refused) {
		t.Fatalf("RateLimited %d, want %d", n, refused)
	}
	// A simple client over the rate is closed: it has no ack to refuse with.
	s := wstest.Dial(t, e.url(pubsub.TokenOptions{}), nil)
	for range 20 {
		_ = s.Conn.WriteString("x")
	}
	if info, _ := s.ExpectClose(); info.Code != 1008 || !strings.Contains(info.Reason, "rate") {
		t.Fatalf("simple client closed %+v", info)
	}
}

// A panic in the service's own code on a connection's read or write path
// closes that connection (1011 where a close frame can still be written)
// and is counted; the process and the other clients go on.
func TestPanicsCloseOnlyTheirConnection(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	pubsub.SetTestHooks(t, func(payload []byte) {
		if string(payload) == "boom" {
			panic("read path")
		}
	}, func(frame []byte) {
		if strings.Contains(string(frame), "kaboom") {
			panic("write path")
		}
	})
	other, otherID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "other"}))
	r := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "reader"}), nil)
	r.Conn.WriteString("boom")
	if info, _ := r.ExpectClose(); info.Code != 1011 {
		t.Fatalf("read path panic closed %+v", info)
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "reader" {
		t.Fatalf("disconnected %+v", d)
	}
	w, wid := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "writer"}))
	must(t, e.hub.SendToConnection(context.Background(), wid, pubsub.TextMessage("kaboom")))
	if info, _ := w.ExpectClose(); info.Code != 1006 && info.Code != 1011 {
		t.Fatalf("write path panic closed %+v", info)
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "writer" {
		t.Fatalf("disconnected %+v", d)
	}
	if n := e.svc.Stats().Panics; n != 2 {
		t.Fatalf("Panics %d", n)
	}
	e.barrier(other, otherID)
}

// A message fanned out to many receivers is encoded once per kind, and
// counts once against the buffer budget however many queues and replay
// buffers hold it: a large group must not look like a memory hog.
func TestSharedEncodingsCountOnce(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	var rs []*reliableClient
	for range 20 {
		rs = append(rs, dialReliable(t, e.url(pubsub.TokenOptions{Groups: []string{"g"}})))
	}
	const size = 64 << 10
	must(t, e.hub.SendToGroup(t.Context(), "g", pubsub.BinaryMessage(make([]byte, size))))
	for _, r := range rs {
		r.readUntil(1) // written, and kept (never acknowledged) in every replay buffer
	}
	// base64 makes the body 4/3 larger; each receiver adds a few bytes of
	// its own (header, sequence id).
	if n := e.svc.Stats().BufferedBytes; n < size*4/3 || n > size*4/3+20*64 {
		t.Fatalf("BufferedBytes %d for one %d-byte message held by 20 receivers", n, size)
	}
	for _, r := range rs {
		r.ack()
	}
	eventually(t, "BufferedBytes back to 0 after every receiver acknowledged", func() bool { return e.svc.Stats().BufferedBytes == 0 })
}

// The budget counts a fan-out's encoding once, so closing one of its many
// receivers frees almost nothing: shed must close the connection whose
// close frees the most (x, whose bytes are all its own), not the one that
// holds the most by its own view (a receiver of 4 MiB shared by ten), and
// go on until a tenth of the budget is free.
func TestShedClosesWhatFreesTheBudget(t *testing.T) {
	const budget = 6 << 20
	e := newEnv(t, pubsub.Config{MaxBufferedBytes: budget})
	ctx := context.Background()
	var fan []*reliableClient
	for i := range 10 {
		fan = append(fan, dialReliable(t, e.url(pubsub.TokenOptions{UserID: fmt.Sprint("fan", i), Groups: []string{"g"}})))
	}
	x := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "x"}))
	payload := strings.Repeat("g", 256<<10)
	// 4 MiB every fan has read and not acknowledged: shared, counted once.
	for i := 1; i <= 16; i++ {
		must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(payload)))
		for _, f := range fan {
			f.readUntil(i)
		}
	}
	closed := func(c *wstest.Client) bool {
		select {
		case <-c.Done():
			return true
		default:
			return false
		}
	}
	// read reports whether x read its n-th message before the budget closed it.
	read := func(n int) bool {
		for len(x.data) < n {
			select {
			case f := <-x.c.Frames():
				x.take(f)
			case <-x.c.Done():
				return false
			case <-timeAfter():
				t.Fatalf("x never read its message %d", n)
			}
		}
		return true
	}
	// x's own messages (read, not acknowledged), until the budget is passed.
	for i := 1; e.svc.Stats().BufferBudgetDisconnects == 0; i++ {
		if i == 64 {
			t.Fatalf("the budget never closed anyone: BufferedBytes %d", e.svc.Stats().BufferedBytes)
		}
		must(t, e.hub.SendToUser(ctx, "x", pubsub.TextMessage(payload)))
		if !read(i) {
			break
		}
	}
	defer func() {
		if t.Failed() {
			closedFans := 0
			for _, f := range fan {
				if closed(f.c) {
					closedFans++
				}
			}
			st := e.svc.Stats()
			t.Logf("BufferedBytes %d (budget %d); x closed: %v; fan-out receivers closed: %d of %d; budget closes: %d",
				st.BufferedBytes, budget, closed(x.c), closedFans, len(fan), st.BufferBudgetDisconnects)
		}
	}()
	// shed, and the release of what it closed, run on goroutines of their own.
	eventually(t, "x closed by the budget, and BufferedBytes under nine tenths of it", func() bool {
		return closed(x.c) && e.svc.Stats().BufferedBytes <= budget*9/10
	})
	for _, f := range fan {
		if closed(f.c) {
			t.Errorf("a fan-out receiver (%s) was closed: it freed almost nothing", f.connID)
		}
	}
}
