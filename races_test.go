package pubsub_test

// Interleavings of the connection lifecycle: overlapping recoveries,
// crossing closes, shedding, timeouts and Shutdown, and the accounting that
// must return to zero after them. Each test reproduced a bug found in a
// review of the lifecycle redesign, over real sockets, and failed (or timed
// out, bounded) before its fix.

import (
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// statsAtRest waits for every counter that must return to zero once every
// client is gone.
func statsAtRest(t *testing.T, svc *pubsub.Service) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st := svc.Stats()
		if st.Connections == 0 && st.Hubs == 0 && st.BufferedBytes == 0 && st.InboundBytes == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("with every client gone: Connections %d, Hubs %d, BufferedBytes %d, InboundBytes %d\n%s",
				st.Connections, st.Hubs, st.BufferedBytes, st.InboundBytes, strings.Join(pubsub.DescribeConns(svc), "\n"))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A PubSub client refused at registration (MaxHubs reached, or Shutdown
// begun after its connect event) has its "connected" frame queued in its
// outbox before register is tried; the refusal never drops it, so its bytes
// stay counted in BufferedBytes for ever. Any client can repeat it.
func TestRefusedRegistrationLeavesNoBufferedBytes(t *testing.T) {
	e := newEnv(t, pubsub.Config{MaxHubs: 1})
	a, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "a"})) // hub "chat" is the one hub
	u, err := e.svc.ClientURL("other", pubsub.TokenOptions{UserID: "b"})
	must(t, err)
	for range 10 {
		h := http.Header{"Sec-Websocket-Protocol": {"json.webpubsub.azure.v1"}}
		if got := wstest.HandshakeStatus(t, u, h); got != http.StatusServiceUnavailable {
			t.Fatalf("second hub: status %d", got)
		}
	}
	a.Conn.WriteClose(1000, nil)
	statsAtRest(t, e.svc)
}

// MessageTimeout is meant to bound each message, from its first byte to its
// last. inbound.deadline arms the read deadline when a read ends inside a
// message and disarms it only when a read ends between messages: a client
// whose reads keep ending inside some message (a steady stream over a slow
// link, or any sender faster than the handler) never gets it disarmed, so
// the deadline of its first message closes it, however fast each message
// completes. Here every message completes within 50 ms, MessageTimeout is
// 300 ms, and the client is closed after about 300 ms.
func TestMessageTimeoutIsPerMessage(t *testing.T) {
	var events atomic.Int64
	e := newEnv(t, pubsub.Config{MessageTimeout: 300 * time.Millisecond, EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			events.Add(1)
			return nil, nil
		},
	}})
	c := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "streamer"})) // a simple client: each frame is an event
	closed := c.Closed()
	// 100-byte frames (6-byte head, 94-byte payload); each write is the
	// second half of one frame and the first half of the next.
	const messages = 24
	var stream []byte
	for range messages + 1 {
		stream = append(stream, wstest.ClientFrame(true, 0x1, []byte(strings.Repeat("x", 94)))...)
	}
	must(t, c.Write(stream[:50]))
	for k := range messages {
		time.Sleep(50 * time.Millisecond)
		select {
		case why := <-closed:
			t.Fatalf("closed after %d messages of 50 ms each (MessageTimeout 300 ms): %+v", events.Load(), why)
		default:
		}
		if err := c.Write(stream[50+100*k : 150+100*k]); err != nil {
			t.Fatalf("write after %d messages: %v", events.Load(), err)
		}
	}
	eventually(t, "every message handled", func() bool { return events.Load() == messages })
	if n := e.svc.Stats().MessageTimeouts; n != 0 {
		t.Fatalf("MessageTimeouts %d", n)
	}
}

// Recoveries of one connection that overlap (a client that retries, or
// several tabs sharing a session) each take the previous transport over:
// resume makes the new wire current and aborts the old one. When the old
// one is itself a recovery that has not hijacked its socket yet, abort
// finds w.nc nil (and reads it racing with upgrade's write): the outbox is
// marked closed but the socket is never closed. That transport's upgrade
// then completes, its read loop runs with an outbox that writes nothing,
// and blocks reading a client that has no reason to speak; every later
// transport's read loop waits for it, so the connection is never released
// and Shutdown runs out of time.
func TestOverlappingRecoveriesOrphanNoTransport(t *testing.T) {
	e := newEnv(t, pubsub.Config{RecoveryWindow: time.Minute})
	r := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "r"}))
	var mu sync.Mutex
	var clients []*wstest.Client
	t.Cleanup(func() {
		for _, c := range clients {
			c.Conn.NetConn().Close()
			<-c.Done()
		}
	})
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := wstest.TryDial(r.recoveryURL(r.connID, r.token), nil, reliableJSON)
			if err != nil {
				return
			}
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Every client keeps its socket open, as a client that was not told
	// anything does; a transport the service replaced is closed by it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := e.svc.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (Connections %d)", err, e.svc.Stats().Connections)
	}
}

// The message deadline is a read deadline on the socket, so it keeps
// running while the read loop handles the previous message. A client that
// pipelines (the head of its next message arrives with the previous one)
// is closed with MessageTimeout when a user event takes longer than
// MessageTimeout, though its own message took 20 ms: the service's (or the
// upstream's) slowness is charged to the client.
func TestMessageTimeoutExcludesHandlingTime(t *testing.T) {
	var events atomic.Int64
	e := newEnv(t, pubsub.Config{MessageTimeout: 300 * time.Millisecond, EventHandler: pubsub.EventHandlerFuncs{
		OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			if events.Add(1) == 1 {
				time.Sleep(600 * time.Millisecond) // a slow upstream, once
			}
			return nil, nil
		},
	}})
	c := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "pipeliner"}))
	closed := c.Closed()
	one := wstest.ClientFrame(true, 0x1, []byte(strings.Repeat("a", 94)))
	two := wstest.ClientFrame(true, 0x1, []byte(strings.Repeat("b", 94)))
	must(t, c.Write(append(one, two[:50]...)))
	time.Sleep(20 * time.Millisecond)
	must(t, c.Write(two[50:]))
	select {
	case why := <-closed:
		t.Fatalf("closed after %d events: %+v", events.Load(), why)
	case <-time.After(1500 * time.Millisecond):
	}
	if n := events.Load(); n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
}

// A close reason is cut to fit a control frame (125 bytes) at a byte
// boundary: a reason with multi-byte characters becomes invalid UTF-8,
// which RFC 6455 §5.5.1 forbids and strict clients (browsers) answer by
// failing the connection with 1007/1006 instead of reporting the close.
func TestTruncatedCloseReasonIsValidUTF8(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	c := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "u"}))
	var id string
	eventually(t, "the connection is registered", func() bool {
		var ok bool
		id, ok = onlyConnection(e)
		return ok
	})
	must(t, e.hub.CloseConnection(context.Background(), id, strings.Repeat("é", 100)))
	_, reason := expectRawClose(t, c)
	if !utf8.ValidString(reason) {
		t.Fatalf("close reason of %d bytes is not valid UTF-8: ...%q", len(reason), reason[len(reason)-4:])
	}
}

// onlyConnection returns the id of hub "chat"'s one connection.
func onlyConnection(e *testEnv) (string, bool) {
	ids := pubsub.ConnectionIDs(e.svc, "chat")
	if len(ids) != 1 {
		return "", false
	}
	return ids[0], true
}

// A bounded stress: fan-out, filtered sends, membership churn, transport
// drops with recoveries (some overlapping), service closes, client closes
// and slow readers, together for a few seconds; then every client goes and
// the service's accounting must be back to zero, and Shutdown prompt.
func TestStressWithOverlappingRecoveries(t *testing.T) {
	e := newEnv(t, pubsub.Config{RecoveryWindow: 5 * time.Second, OutboundBufferSize: 256 << 10, MessageTimeout: time.Second, WriteTimeout: 300 * time.Millisecond})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []*wstest.Client
	keep := func(c *wstest.Client) {
		mu.Lock()
		all = append(all, c)
		mu.Unlock()
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range all {
			c.Conn.NetConn().Close()
		}
	}()
	drain := func(c *wstest.Client) {
		go func() {
			for {
				select {
				case <-c.Frames():
				case <-c.Done():
					return
				}
			}
		}()
	}
	var recoveries atomic.Int64
	groups := []string{"g", "h"}
	// Readers, reliable and not, through the proxy so that drops cut them.
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := "json.webpubsub.azure.v1"
			if i%2 == 0 {
				sub = reliableJSON
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				u := proxy.URL(e.url(pubsub.TokenOptions{UserID: fmt.Sprint("u", i), Roles: allRoles, Groups: groups}))
				c, _, err := wstest.TryDial(u, nil, sub)
				if err != nil {
					continue
				}
				keep(c)
				var connID, token string
				select {
				case f := <-c.Frames():
					var m map[string]any
					_ = jsonUnmarshal(f.Data, &m)
					connID, _ = m["connectionId"].(string)
					token, _ = m["reconnectionToken"].(string)
				case <-c.Done():
					continue
				case <-time.After(waitFor):
					t.Error("no connected message")
					return
				}
				drain(c)
				// Some recover after a drop, twice at once.
				for range 3 {
					select {
					case <-c.Done():
					case <-stop:
						return
					}
					if token == "" {
						break
					}
					ru := u + "&awps_connection_id=" + connID + "&awps_reconnection_token=" + token
					for range 2 {
						if rc, _, err := wstest.TryDial(ru, nil, sub); err == nil {
							recoveries.Add(1)
							keep(rc)
							drain(rc)
							c = rc
						}
					}
				}
			}
		}()
	}
	// Slow readers: raw clients that never read.
	for i := range 2 {
		c := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: fmt.Sprint("slow", i), Groups: groups}))
		_ = c
	}
	// Senders: plain, filtered, to users; closes and churn.
	payload := strings.Repeat("x", 2048)
	wg.Add(3)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(payload))
			_ = e.hub.SendToAll(ctx, pubsub.TextMessage(payload), pubsub.WithFilter("'h' in groups"))
			_ = e.hub.SendToUser(ctx, fmt.Sprint("u", i%6), pubsub.TextMessage("hi"), pubsub.WithTTL(time.Millisecond))
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(7 * time.Millisecond):
			}
			_ = e.hub.RemoveUserFromGroup(ctx, fmt.Sprint("u", i%6), "h")
			_ = e.hub.AddUserToGroup(ctx, fmt.Sprint("u", (i+3)%6), "h")
			if i%20 == 0 {
				_ = e.hub.CloseUserConnections(ctx, fmt.Sprint("u", i%6), "churn")
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			proxy.Drop()
		}
	}()
	time.Sleep(3 * time.Second)
	close(stop)
	within(t, "the stress's goroutines", wg.Wait)
	mu.Lock()
	for _, c := range all {
		c.Conn.NetConn().Close()
	}
	mu.Unlock()
	proxy.Drop()
	must(t, e.hub.CloseAllConnections(ctx, "end")) // the slow raw clients, and anything detached
	st := e.svc.Stats()
	t.Logf("%d recovery handshakes, %d slow clients, %d budget closes", recoveries.Load(), st.SlowClientDisconnects, st.BufferBudgetDisconnects)
	statsAtRest(t, e.svc)
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := e.svc.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	noServiceGoroutines(t)
}

// noServiceGoroutines checks that no goroutine runs the service's code
// once Shutdown has returned.
func noServiceGoroutines(t *testing.T) {
	t.Helper()
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/embedwps/pubsub.") && !strings.Contains(g, "pubsub_test.") {
			left = append(left, g)
		}
	}
	if len(left) > 0 {
		t.Fatalf("%d of the service's goroutines outlive Shutdown:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// Arbitrary bytes after the handshake, for every subprotocol, through the
// service's own frame path (wire, inbound scan, handleFrame): no panic, no
// hang, and nothing left counted once the clients are gone.
func TestRandomFramesThroughTheHandler(t *testing.T) {
	e := newEnv(t, pubsub.Config{AllowAnonymous: true, MaxMessageSize: 4096, MessageTimeout: 200 * time.Millisecond,
		EventHandler: pubsub.EventHandlerFuncs{
			OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
				return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: []byte("r")}, nil
			},
		}})
	seed0 := time.Now().UnixNano()
	t.Logf("seed %d", seed0)
	rng := newRand(seed0)
	subs := []string{"", "json.webpubsub.azure.v1", reliableJSON, "protobuf.webpubsub.azure.v1", "protobuf.reliable.webpubsub.azure.v1"}
	var wg sync.WaitGroup
	for i := range 60 {
		sub := subs[i%len(subs)]
		seed := rng.Int63()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := newRand(seed)
			c := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: fmt.Sprint("f", i), Roles: allRoles}), sub)
			go func() { // read everything, so that nobody is a slow client
				for {
					if _, _, err := c.ReadFrame(); err != nil {
						return
					}
				}
			}()
			for range 40 {
				var b []byte
				switch r.Intn(4) {
				case 0: // garbage
					b = make([]byte, r.Intn(64))
					r.Read(b)
				case 1: // a well-formed frame of random content and opcode
					p := make([]byte, r.Intn(3000))
					r.Read(p)
					b = wstest.ClientFrame(r.Intn(2) == 0, byte(r.Intn(16)), p)
				case 2: // a plausible request
					b = wstest.ClientFrame(true, 0x1, []byte(`{"type":"event","event":"e","ackId":1,"dataType":"text","data":"x"}`))
				case 3: // a frame cut short
					f := wstest.ClientFrame(r.Intn(2) == 0, 0x2, make([]byte, 2000))
					b = f[:r.Intn(len(f))]
				}
				if c.Write(b) != nil {
					return
				}
			}
		}()
	}
	within(t, "the clients", wg.Wait)
	if n := e.svc.Stats().Panics; n != 0 {
		t.Fatalf("%d panics", n)
	}
	must(t, e.hub.CloseAllConnections(context.Background(), ""))
	statsAtRest(t, e.svc)
}

func newRand(seed int64) *rand.Rand { return rand.New(rand.NewSource(seed)) }

// shed counts and logs every connection it picks, including one it already
// closed whose bytes are still held (a reliable client's replay buffer is
// freed only when its transport ends, up to closeGrace or WriteTimeout
// later). Every send meanwhile starts another shed, which picks the same
// closing connection again: BufferBudgetDisconnects counts one close many
// times.
func TestShedCountsAClosingConnectionOnce(t *testing.T) {
	rec := newRecorder()
	e := newEnv(t, pubsub.Config{EventHandler: rec, MaxBufferedBytes: 1 << 20})
	ctx := context.Background()
	hog := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "hog", Groups: []string{"g"}}), reliableJSON) // never reads, never acks, never answers the close
	good, goodID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "good", Groups: []string{"g"}}))
	_ = hog
	payload := strings.Repeat("x", 64<<10)
	for i := 0; e.svc.Stats().BufferBudgetDisconnects == 0; i++ {
		if i == 100 {
			t.Fatal("the budget never closed anyone")
		}
		must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage(payload)))
		good.Next()
	}
	big := strings.Repeat("y", 256<<10)
	for range 5 { // while the hog's replay buffer is still counted: each send is over the budget again
		must(t, e.hub.SendToConnection(ctx, goodID, pubsub.TextMessage(big)))
		good.Next()
	}
	if d := rec.nextDisconnect(t); d.Conn.UserID != "hog" {
		t.Fatalf("disconnected %+v", d)
	}
	e.barrier(good, goodID)
	if n := e.svc.Stats().BufferBudgetDisconnects; n != 1 {
		t.Fatalf("BufferBudgetDisconnects %d after closing one connection", n)
	}
}

// A client's close frame crossing the service's close, on plain and
// reliable connections: one disconnected event each, nothing left counted.
func TestCrossingClosesRaiseOneDisconnected(t *testing.T) {
	rec := newRecorder()
	rec.disconnected = make(chan disconnectEvent, 256)
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	const n = 40
	type client struct {
		c  *wstest.Client
		id string
	}
	var cs []client
	for i := range n {
		sub := "json.webpubsub.azure.v1"
		if i%2 == 0 {
			sub = reliableJSON
		}
		c := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: fmt.Sprint("x", i)}), nil, sub)
		m := c.NextJSON()
		cs = append(cs, client{c, m["connectionId"].(string)})
	}
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(2)
		go func() { defer wg.Done(); c.c.Conn.WriteClose(uint16(1000+i%2), nil) }()
		go func() { defer wg.Done(); _ = e.hub.CloseConnection(context.Background(), c.id, "bye") }()
	}
	wg.Wait()
	seen := map[string]int{}
	for range n {
		d := rec.nextDisconnect(t)
		seen[d.Conn.ConnectionID]++
	}
	statsAtRest(t, e.svc)
	select {
	case d := <-rec.disconnected:
		t.Fatalf("a second disconnected event: %+v", d)
	case <-time.After(100 * time.Millisecond):
	}
	if len(seen) != n {
		t.Fatalf("%d connections disconnected, want %d", len(seen), n)
	}
}

// A recovery whose upgrade fails (gws refuses the WebSocket version) leaves
// the connection detached and recoverable, its replay intact; recoveries
// racing the recovery timer either recover or are refused, never both.
func TestFailedRecoveryUpgradeAndTimerRace(t *testing.T) {
	rec := newRecorder()
	rec.disconnected = make(chan disconnectEvent, 256)
	e := newEnv(t, pubsub.Config{EventHandler: rec, RecoveryWindow: 150 * time.Millisecond})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	ctx := context.Background()
	r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Groups: []string{"g"}})))
	detached(t, e, proxy, r)
	must(t, e.hub.SendToGroup(ctx, "g", pubsub.TextMessage("kept")))
	h := http.Header{"Sec-Websocket-Version": {"8"}}
	if got := wstest.HandshakeStatus(t, r.recoveryURL(r.connID, r.token), h); got != http.StatusBadRequest {
		t.Fatalf("status %d", got)
	}
	eventually(t, "detached again", func() bool { return pubsub.IsDetached(e.svc, "chat", r.connID) })
	r.recover()
	r.readUntil(1)
	r.c.Conn.WriteClose(1000, nil)
	rec.nextDisconnect(t)

	// Recoveries at the edge of the window.
	for i := range 20 {
		r := dialReliable(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: fmt.Sprint("t", i)})))
		detached(t, e, proxy, r)
		time.Sleep(time.Duration(140+i%20) * time.Millisecond)
		c, _, err := wstest.TryDial(r.recoveryURL(r.connID, r.token), nil, reliableJSON)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.Done(): // refused: the window ended first
		case <-time.After(50 * time.Millisecond):
			c.Conn.WriteClose(1000, nil)
		}
		<-c.Done()
		if d := rec.nextDisconnect(t); d.Conn.UserID != fmt.Sprint("t", i) {
			t.Fatalf("disconnected %+v", d)
		}
	}
	statsAtRest(t, e.svc)
	select {
	case d := <-rec.disconnected:
		t.Fatalf("a second disconnected event: %+v", d)
	case <-time.After(100 * time.Millisecond):
	}
}

// Shutdown does not wait for handshakes whose connect event is under way:
// it returns (and calls the event handler's own Shutdown) while a connect
// it accepted is still to be refused at registration, whose disconnected
// event then reaches a handler that was shut down (upstream.Handler drops
// it: the upstream sees a connect with no disconnected). The refused
// connection's "connected" frame also stays counted in BufferedBytes.
func TestShutdownWaitsForAcceptedConnects(t *testing.T) {
	rec := newRecorder()
	entered, proceed := make(chan struct{}), make(chan struct{})
	rec.onConnect = func(*pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
		close(entered)
		<-proceed
		return nil, nil
	}
	e := newEnv(t, pubsub.Config{EventHandler: rec})
	status := make(chan int, 1)
	go func() {
		h := http.Header{"Sec-Websocket-Protocol": {"json.webpubsub.azure.v1"}}
		status <- wstest.HandshakeStatus(t, e.url(pubsub.TokenOptions{UserID: "late"}), h)
	}()
	<-entered
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		shut <- e.svc.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		close(proceed)
		<-status
		rec.nextDisconnect(t)
		t.Fatalf("Shutdown returned (%v) before the disconnected event of a connect it had accepted; BufferedBytes now %d",
			err, e.svc.Stats().BufferedBytes)
	case <-time.After(300 * time.Millisecond):
		close(proceed)
	}
	<-status
	rec.nextDisconnect(t)
	must(t, <-shut)
}
