package pubsub_test

// TestStress runs the service's moving parts together, under the race
// detector, for a few seconds: fan-out through the Go API and REST,
// filtered sends, membership churn (Go API, REST and client frames),
// transport drops and recoveries, closes, slow readers, and clients coming
// and going. Around that chaos, observers that are never closed stay in
// their own group and receive a publisher's numbered messages. Then it
// checks that every call returned, that nothing leaked, that every
// observer got every numbered message once and in order, and that the
// event handler saw one disconnected event per accepted connection.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/proto"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol/pb"
	"github.com/embedwps/pubsub/rest"
)

// The stress test's scale: about 3 s of chaos under -race on two cores;
// -short runs a fraction of it, and PUBSUB_STRESS_TIME (a duration) sets
// it, for longer runs.
const (
	stressTime      = 3 * time.Second
	stressTimeShort = 500 * time.Millisecond
	stressWorkers   = 6 // goroutines that connect clients, use them and leave
	stressUsers     = 6 // chaos users u0…u5
	stressGroups    = 5 // chaos groups g0…g4
	stressRecovery  = 1500 * time.Millisecond
	stressKey       = "primary-access-key-0123456789abcdef"
)

const (
	jsonProtocol             = "json.webpubsub.azure.v1"
	protobufProtocol         = "protobuf.webpubsub.azure.v1"
	reliableProtobufProtocol = "protobuf.reliable.webpubsub.azure.v1"
)

func TestStress(t *testing.T) {
	chaosTime := stressTime
	if testing.Short() {
		chaosTime = stressTimeShort
	}
	if d, err := time.ParseDuration(os.Getenv("PUBSUB_STRESS_TIME")); err == nil {
		chaosTime = d // a longer run, to look for what is rare
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	life := newLifeRecorder()
	s := newStressEnv(t, life)
	ctx := context.Background()

	// The observers: one of each kind in group "obs", never closed. The
	// reliable ones go through proxies of their own, which the chaos cuts.
	rjsonProxy := wstest.NewProxy(t, s.addr())
	rpbProxy := wstest.NewProxy(t, s.addr())
	observers := []*observer{
		s.observer("obs-simple", "", nil),
		s.observer("obs-json", jsonProtocol, nil),
		s.observer("obs-pb", protobufProtocol, nil),
		s.observer("obs-rjson", reliableJSON, rjsonProxy),
		s.observer("obs-rpb", reliableProtobufProtocol, rpbProxy),
	}
	members, err := s.hub.ListConnectionsInGroup(ctx, "obs")
	must(t, err)
	var observerIDs []string
	for _, m := range members {
		observerIDs = append(observerIDs, m.ConnectionID)
	}
	if len(observerIDs) != len(observers) {
		t.Fatalf("%d observers in their group, want %d", len(observerIDs), len(observers))
	}
	targets := make(chan int, len(observers))
	stopObservers := make(chan struct{})
	var obsWG sync.WaitGroup
	for _, o := range observers {
		obsWG.Add(1)
		go func() { defer obsWG.Done(); o.run(targets, stopObservers) }()
	}

	// The chaos.
	stop := make(chan struct{})
	var chaos sync.WaitGroup
	stream := uint64(0)
	goChaos := func(f func(rng *rand.Rand)) {
		chaos.Add(1)
		stream++ // each goroutine its own choices, all from the logged seed
		rng := rand.New(rand.NewPCG(seed, stream))
		go func() { defer chaos.Done(); f(rng) }()
	}
	chaosProxy := wstest.NewProxy(t, s.addr())
	s.chaosProxy = chaosProxy
	for range stressWorkers {
		goChaos(func(rng *rand.Rand) { s.worker(rng, stop) })
	}
	goChaos(func(rng *rand.Rand) { s.every(time.Millisecond, stop, func() { s.fanout(rng, observerIDs) }) })
	goChaos(func(rng *rand.Rand) { s.every(time.Millisecond, stop, func() { s.membership(rng) }) })
	goChaos(func(rng *rand.Rand) { s.every(15*time.Millisecond, stop, func() { s.closes(rng, observerIDs) }) })
	goChaos(func(rng *rand.Rand) { s.every(3*time.Millisecond, stop, func() { s.restChaos(rng) }) })
	goChaos(func(rng *rand.Rand) {
		payload := pubsub.TextMessage(strings.Repeat("s", 16<<10))
		s.every(2*time.Millisecond, stop, func() {
			for range 4 {
				s.api("SendToGroup slow", func() error { return s.hub.SendToGroup(ctx, "slow", payload) })
			}
		})
	})
	goChaos(func(rng *rand.Rand) {
		n := 0
		s.every(40*time.Millisecond, stop, func() {
			chaosProxy.Drop()
			if n++; n%6 == 0 { // an observer's transport, every 240 ms
				[]*wstest.Proxy{rjsonProxy, rpbProxy}[n/6%2].Drop()
			}
		})
	})
	published := make(chan int, 1)
	goChaos(func(rng *rand.Rand) { published <- s.publish(stop) })

	<-time.After(chaosTime) // the chaos phase's length, not a synchronisation
	close(stop)
	s.await(t, "the chaos", &chaos)
	last := <-published
	if last < 10 {
		t.Errorf("only %d numbered messages were published", last)
	}

	// Every observer gets every numbered message, once, in order.
	for range observers {
		targets <- last
	}
	for _, o := range observers {
		select {
		case <-o.reached:
		case <-o.failed:
		case <-timeAfter():
			t.Errorf("%s: %d of %d numbered messages after %v", o.name, o.progress.Load(), last, waitFor)
		}
	}
	close(stopObservers)
	s.await(t, "the observers", &obsWG)

	// Everything ends: the clients still open close, and the reliable ones
	// left between transports expire with their recovery window.
	s.closeClients()
	s.await(t, "the clients' read loops", &s.drainers)
	deadline := time.Now().Add(stressRecovery + waitFor)
	for {
		st := s.svc.Stats()
		if st.Connections == 0 && st.Hubs == 0 && st.BufferedBytes == 0 && st.InboundBytes == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaked: %+v", st)
		}
		time.Sleep(time.Millisecond) // no event says "all gone": poll, bounded
	}
	st := s.svc.Stats()
	if st.Panics != 0 {
		t.Errorf("%d panics", st.Panics)
	}
	if st.SlowClientDisconnects == 0 && !testing.Short() {
		t.Error("no slow reader was cut")
	}
	within(t, "Shutdown", func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := s.svc.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	life.check(t)

	var drops, recoveries, dups int
	for _, o := range observers {
		drops += o.drops
		recoveries += o.recoveries
		dups += o.dups
	}
	t.Logf("%d numbered messages; observers: %d drops, %d recoveries, %d replayed duplicates dropped", last, drops, recoveries, dups)
	t.Logf("%d connections (%d recoveries), %d Go API and %d REST calls (slowest %v); %+v",
		life.count(), s.chaosRecoveries.Load(), s.apiCalls.Load(), s.restCalls.Load(), time.Duration(s.slowest.Load()), st)
}

// stressEnv is the service under stress: the client endpoint and the REST
// API on one server, and what the chaos shares.
type stressEnv struct {
	t    *testing.T
	svc  *pubsub.Service
	srv  *httptest.Server
	hub  *pubsub.Hub // "chat": the observers' hub
	side *pubsub.Hub // "side": chaos only, created and pruned over and over
	http *http.Client
	tr   *http.Transport

	chaosProxy *wstest.Proxy

	mu      sync.Mutex
	clients []*wstest.Client    // every gws client, closed at the end
	raws    []*wstest.RawClient // every raw client, closed at the end
	ids     []string            // chaos connection ids, for the Go API and REST to aim at
	closed  bool

	drainers sync.WaitGroup // the goroutines reading clients no one else reads

	apiCalls, restCalls atomic.Int64
	chaosRecoveries     atomic.Int64
	slowest             atomic.Int64 // nanoseconds of the slowest call
}

func newStressEnv(t *testing.T, h pubsub.EventHandler) *stressEnv {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	svc, err := pubsub.New(pubsub.Config{
		Endpoint:     "http://" + srv.Listener.Addr().String(),
		AccessKey:    stressKey,
		EventHandler: h,
		Logger:       slog.New(slog.DiscardHandler), // slow clients are logged by the thousand
		// Small bounds, so that slow readers are cut soon (1008
		// SlowClient) and the service-wide budget closes the biggest
		// holders now and then (1008, budget); the observers hold little.
		OutboundBufferSize: 128 << 10,
		MaxBufferedBytes:   256 << 10,
		WriteTimeout:       2 * time.Second,
		RecoveryWindow:     stressRecovery,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = rest.NewServiceHandler(svc, rest.Options{}, nil)
	srv.Start()
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	s := &stressEnv{t: t, svc: svc, srv: srv, tr: tr, http: &http.Client{Transport: tr, Timeout: waitFor}}
	s.hub, _ = svc.Hub("chat")
	s.side, _ = svc.Hub("side")
	t.Cleanup(func() {
		// Bounded, so that a hang found by the test is reported rather than
		// waited for until the test binary's timeout.
		done := make(chan struct{})
		go func() {
			defer close(done)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			_ = svc.Shutdown(ctx) // done by the test already, unless it failed
			s.closeClients()
			if !t.Failed() { // after a hang, goroutines that would add to it still run
				s.drainers.Wait()
			}
			tr.CloseIdleConnections()
			srv.Close() // it waits for the requests under way
		}()
		select {
		case <-done:
		case <-time.After(3 * waitFor):
			t.Error("the cleanup hung: Shutdown or a request did not end")
		}
	})
	return s
}

// addr is the server's host:port, for proxies.
func (s *stressEnv) addr() string { return s.srv.Listener.Addr().String() }

// every runs f each period until stop.
func (s *stressEnv) every(period time.Duration, stop <-chan struct{}, f func()) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			f()
		}
	}
}

// await waits for wg, bounded; on a hang it dumps every goroutine, which
// shows where the call that never returned is stuck.
func (s *stressEnv) await(t *testing.T, what string, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitFor):
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		t.Fatalf("%s did not end within %v: a call hung (goroutines above)", what, waitFor)
	}
}

// clientURL is a client URL of hub with a token for user in groups.
func (s *stressEnv) clientURL(hub, user string, groups []string) string {
	u, err := s.svc.ClientURL(hub, pubsub.TokenOptions{UserID: user, Roles: allRoles, Groups: groups})
	if err != nil {
		s.t.Error(err)
	}
	return u
}

// track registers a client to close at the end; false if the end came.
func (s *stressEnv) track(c *wstest.Client) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Conn.NetConn().Close()
		return false
	}
	s.clients = append(s.clients, c)
	return true
}

func (s *stressEnv) trackRaw(c *wstest.RawClient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return
	}
	s.raws = append(s.raws, c)
}

// drain reads c's frames from now on, so that a client nobody reads is
// not a slow client, until it closes.
func (s *stressEnv) drain(c *wstest.Client) {
	s.drainers.Add(1)
	go func() {
		defer s.drainers.Done()
		for {
			select {
			case <-c.Frames():
			case <-c.Done():
				return
			}
		}
	}()
}

// closeClients closes every client's socket and waits for the gws ones
// to see it.
func (s *stressEnv) closeClients() {
	s.mu.Lock()
	s.closed = true
	clients, raws := s.clients, s.raws
	s.clients, s.raws = nil, nil
	s.mu.Unlock()
	for _, c := range raws {
		c.Close()
	}
	for _, c := range clients {
		c.Conn.NetConn().Close()
	}
	for _, c := range clients {
		select {
		case <-c.Done():
		case <-time.After(waitFor):
			s.t.Error("a client's read loop did not end")
			return
		}
	}
}

func (s *stressEnv) addID(id string) {
	s.mu.Lock()
	s.ids = append(s.ids, id)
	s.mu.Unlock()
}

func (s *stressEnv) removeID(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.ids {
		if x == id {
			s.ids[i] = s.ids[len(s.ids)-1]
			s.ids = s.ids[:len(s.ids)-1]
			return
		}
	}
}

// someID is a chaos connection id, live or recently gone, or an unknown
// one.
func (s *stressEnv) someID(rng *rand.Rand) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ids) == 0 || rng.IntN(10) == 0 {
		return "no-such-connection"
	}
	return s.ids[rng.IntN(len(s.ids))]
}

func someUser(rng *rand.Rand) string  { return "u" + strconv.Itoa(rng.IntN(stressUsers)) }
func someGroup(rng *rand.Rand) string { return "g" + strconv.Itoa(rng.IntN(stressGroups)) }
func someGroups(rng *rand.Rand) []string {
	var gs []string
	for i := range stressGroups {
		if rng.IntN(3) == 0 {
			gs = append(gs, "g"+strconv.Itoa(i))
		}
	}
	return gs
}

// api makes one Go API call; only "not found" is an expected error.
func (s *stressEnv) api(what string, f func() error) {
	s.apiCalls.Add(1)
	start := time.Now()
	err := f()
	s.took(time.Since(start))
	if err != nil && !errors.Is(err, pubsub.ErrConnectionNotFound) && !errors.Is(err, pubsub.ErrUserNotFound) {
		s.t.Errorf("%s: %v", what, err)
	}
}

func (s *stressEnv) took(d time.Duration) {
	for {
		cur := s.slowest.Load()
		if int64(d) <= cur || s.slowest.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

// rest calls the REST API as the SDKs do (aud is the request URL) and
// checks the status: want, or 404 when notFoundOK.
func (s *stressEnv) rest(method, path, body string, query url.Values, want int, notFoundOK bool) {
	s.restCalls.Add(1)
	if query == nil {
		query = url.Values{}
	}
	query.Set("api-version", "2024-12-01")
	u := s.srv.URL + "/api/" + path + "?" + query.Encode()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(stressKey))
	if err != nil {
		s.t.Error(err)
		return
	}
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		s.t.Error(err)
		return
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != "" {
		req.Header.Set("Content-Type", "text/plain")
	}
	start := time.Now()
	resp, err := s.http.Do(req)
	s.took(time.Since(start))
	if err != nil {
		s.t.Errorf("REST %s %s: %v", method, path, err)
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want && !(notFoundOK && resp.StatusCode == http.StatusNotFound) {
		s.t.Errorf("REST %s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
}

// publish sends the numbered messages n:1, n:2, … to the observers' group
// until stop, by one path after another (Go API to the group, REST to the
// group, Go API to all with a filter that selects the group), and returns
// the last number sent. Each call returns once the message is queued for
// every recipient, so they are queued in order.
func (s *stressEnv) publish(stop <-chan struct{}) int {
	ctx := context.Background()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-stop:
			return n - 1
		case <-tick.C:
		}
		msg := "n:" + strconv.Itoa(n)
		failed := s.t.Failed()
		switch n % 4 {
		case 0:
			s.rest("POST", "hubs/chat/groups/obs/:send", msg, nil, http.StatusAccepted, false)
		case 1, 2:
			s.api("SendToGroup obs", func() error { return s.hub.SendToGroup(ctx, "obs", pubsub.TextMessage(msg)) })
		case 3:
			s.api("SendToAll filtered", func() error {
				return s.hub.SendToAll(ctx, pubsub.TextMessage(msg), pubsub.WithFilter("'obs' in groups"))
			})
		}
		if !failed && s.t.Failed() {
			return n // that message may or may not have gone: the numbering stops here
		}
	}
}

// fanout is one Go API send of the chaos, to chaos connections (the
// observers get what goes to all).
func (s *stressEnv) fanout(rng *rand.Rand, observerIDs []string) {
	ctx := context.Background()
	msg := pubsub.TextMessage("c:" + strconv.Itoa(rng.IntN(1000)))
	switch rng.IntN(10) {
	case 0:
		s.api("SendToAll", func() error { return s.hub.SendToAll(ctx, msg) })
	case 1:
		s.api("SendToAll excluding", func() error { return s.hub.SendToAll(ctx, msg, pubsub.Excluding(observerIDs...)) })
	case 2, 3:
		g := someGroup(rng)
		s.api("SendToGroup", func() error { return s.hub.SendToGroup(ctx, g, msg) })
	case 4:
		u := someUser(rng)
		s.api("SendToUser", func() error { return s.hub.SendToUser(ctx, u, msg) })
	case 5:
		g := someGroup(rng)
		f := fmt.Sprintf("'%s' in groups and not('%s' in groups)", someGroup(rng), someGroup(rng))
		s.api("SendToGroup filtered", func() error { return s.hub.SendToGroup(ctx, g, msg, pubsub.WithFilter(f)) })
	case 6:
		f := fmt.Sprintf("userId eq '%s' or '%s' in groups", someUser(rng), someGroup(rng))
		s.api("SendToAll filtered", func() error { return s.hub.SendToAll(ctx, msg, pubsub.WithFilter(f)) })
	case 7:
		id := s.someID(rng)
		s.api("SendToConnection", func() error { return s.hub.SendToConnection(ctx, id, msg) })
	case 8:
		s.api("SendToAll side", func() error { return s.side.SendToAll(ctx, msg) })
	case 9:
		u := someUser(rng)
		s.api("SendToUser with TTL", func() error { return s.hub.SendToUser(ctx, u, msg, pubsub.WithTTL(time.Millisecond)) })
	}
}

// membership is one Go API change of the chaos groups, or a lookup.
func (s *stressEnv) membership(rng *rand.Rand) {
	ctx := context.Background()
	g, id, u := someGroup(rng), s.someID(rng), someUser(rng)
	switch rng.IntN(10) {
	case 0, 1:
		s.api("AddConnectionToGroup", func() error { return s.hub.AddConnectionToGroup(ctx, id, g) })
	case 2, 3:
		s.api("RemoveConnectionFromGroup", func() error { return s.hub.RemoveConnectionFromGroup(ctx, id, g) })
	case 4:
		s.api("AddUserToGroup", func() error { return s.hub.AddUserToGroup(ctx, u, g) })
	case 5:
		s.api("RemoveUserFromGroup", func() error { return s.hub.RemoveUserFromGroup(ctx, u, g) })
	case 6:
		s.api("RemoveConnectionFromAllGroups", func() error { return s.hub.RemoveConnectionFromAllGroups(ctx, id) })
	case 7:
		chaosOnly := fmt.Sprintf("userId eq '%s' or userId eq '%s'", u, someUser(rng))
		if rng.IntN(2) == 0 {
			s.api("AddConnectionsToGroups", func() error { return s.hub.AddConnectionsToGroups(ctx, chaosOnly, g) })
		} else {
			s.api("RemoveConnectionsFromGroups", func() error { return s.hub.RemoveConnectionsFromGroups(ctx, chaosOnly, g) })
		}
	case 8:
		if rng.IntN(2) == 0 {
			s.api("RevokePermission", func() error { return s.hub.RevokePermission(ctx, id, pubsub.PermissionJoinLeaveGroup, g) })
		} else {
			s.api("GrantPermission", func() error { return s.hub.GrantPermission(ctx, id, pubsub.PermissionJoinLeaveGroup, g) })
		}
	case 9:
		s.api("lookups", func() error {
			if _, err := s.hub.ConnectionExists(ctx, id); err != nil {
				return err
			}
			if _, err := s.hub.GroupExists(ctx, g); err != nil {
				return err
			}
			if _, err := s.hub.UserExists(ctx, u); err != nil {
				return err
			}
			_, err := s.hub.ListConnectionsInGroup(ctx, g)
			return err
		})
	}
}

// closes is one Go API close of chaos connections.
func (s *stressEnv) closes(rng *rand.Rand, observerIDs []string) {
	ctx := context.Background()
	switch rng.IntN(12) {
	case 0, 1, 2, 3:
		id := s.someID(rng)
		s.api("CloseConnection", func() error { return s.hub.CloseConnection(ctx, id, "chaos") })
	case 4, 5, 6:
		g := someGroup(rng)
		s.api("CloseGroupConnections", func() error { return s.hub.CloseGroupConnections(ctx, g, "chaos") })
	case 7, 8, 9:
		u := someUser(rng)
		s.api("CloseUserConnections", func() error { return s.hub.CloseUserConnections(ctx, u, "chaos") })
	case 10:
		s.api("CloseAllConnections side", func() error { return s.side.CloseAllConnections(ctx, "chaos") })
	case 11:
		if rng.IntN(4) == 0 {
			s.api("CloseAllConnections excluding", func() error { return s.hub.CloseAllConnections(ctx, "chaos", observerIDs...) })
		}
	}
}

// restChaos is one REST call of the chaos.
func (s *stressEnv) restChaos(rng *rand.Rand) {
	g, u, id := someGroup(rng), someUser(rng), s.someID(rng)
	switch rng.IntN(9) {
	case 0:
		s.rest("POST", "hubs/chat/groups/"+g+"/:send", "r:group", nil, http.StatusAccepted, false)
	case 1:
		s.rest("POST", "hubs/chat/users/"+u+"/:send", "r:user", nil, http.StatusAccepted, false)
	case 2:
		q := url.Values{"filter": {fmt.Sprintf("'%s' in groups", g)}}
		s.rest("POST", "hubs/chat/:send", "r:filtered", q, http.StatusAccepted, false)
	case 3:
		s.rest("POST", "hubs/chat/groups/"+g+"/:closeConnections", "", nil, http.StatusNoContent, false)
	case 4:
		s.rest("POST", "hubs/chat/users/"+u+"/:closeConnections", "", nil, http.StatusNoContent, false)
	case 5:
		s.rest("PUT", "hubs/chat/groups/"+g+"/connections/"+id, "", nil, http.StatusOK, true)
	case 6:
		s.rest("DELETE", "hubs/chat/groups/"+g+"/connections/"+id, "", nil, http.StatusNoContent, false)
	case 7:
		s.rest("PUT", "hubs/chat/users/"+u+"/groups/"+g, "", nil, http.StatusOK, true)
	case 8:
		s.rest("DELETE", "hubs/chat/connections/"+id, "", nil, http.StatusNoContent, false)
	}
}

// chaosKinds are the clients a worker connects.
var chaosKinds = []struct {
	protocol string
	proxied  bool   // through the chaos proxy, which cuts it now and then
	hub      string // "side" or "chat"
	slow     bool   // a raw client that never reads
}{
	{protocol: ""},
	{protocol: jsonProtocol},
	{protocol: jsonProtocol, hub: "side"},
	{protocol: protobufProtocol},
	{protocol: reliableJSON, proxied: true},
	{protocol: reliableProtobufProtocol, proxied: true},
	{protocol: reliableJSON},
	{slow: true},
}

// worker connects a client, uses it for a while and leaves, over and over
// until stop.
func (s *stressEnv) worker(rng *rand.Rand, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		s.session(rng, stop)
	}
}

// chaosClient is a client a worker drives.
type chaosClient struct {
	protocol string
	c        *wstest.Client
	id       string
	token    string
	lastSeq  uint64
	ackID    int
}

func (cc *chaosClient) reliable() bool { return strings.Contains(cc.protocol, "reliable") }
func (cc *chaosClient) protobuf() bool { return strings.HasPrefix(cc.protocol, "protobuf") }

// session is one client's life: it connects, sends requests (joins,
// leaves, sends, events, pings, acks), reads, may be dropped and recover,
// and ends by closing (1000 or 1001), by vanishing, or by staying for the
// closes and the end of the test.
func (s *stressEnv) session(rng *rand.Rand, stop <-chan struct{}) {
	kind := chaosKinds[rng.IntN(len(chaosKinds))]
	hub := "chat"
	if kind.hub != "" {
		hub = kind.hub
	}
	steps := 1 + rng.IntN(150)
	if kind.slow {
		rc, err := wstest.TryRawDial(s.clientURL(hub, someUser(rng), []string{"slow"}), wstest.RawOptions{ReadBuffer: 4096})
		if err != nil {
			s.t.Errorf("slow reader: %v", err)
			return
		}
		s.trackRaw(rc)
		s.wait(stop, steps)
		if rng.IntN(2) == 0 {
			rc.Close()
		}
		return
	}
	u := s.clientURL(hub, someUser(rng), someGroups(rng))
	if kind.proxied {
		u = s.chaosProxy.URL(u)
	}
	var protocols []string
	if kind.protocol != "" {
		protocols = []string{kind.protocol}
	}
	c, _, err := wstest.TryDial(u, nil, protocols...)
	if err != nil {
		if !kind.proxied { // a drop can cut a proxied handshake
			s.t.Errorf("dial %s: %v", kind.protocol, err)
		}
		return
	}
	if !s.track(c) {
		return
	}
	cc := &chaosClient{protocol: kind.protocol, c: c}
	defer func() {
		if cc.id != "" {
			s.removeID(cc.id)
		}
		s.drain(cc.c)
		switch rng.IntN(4) {
		case 0:
			_ = cc.c.Conn.WriteClose(1000, nil)
		case 1:
			_ = cc.c.Conn.WriteClose(1001, []byte("tab closed"))
		case 2:
			cc.c.Conn.NetConn().Close() // a reliable one waits for a recovery that never comes
		case 3: // stays, for the closes or the end of the test
		}
	}()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; i < steps; {
		select {
		case <-stop:
			return
		case f := <-cc.c.Frames():
			s.chaosFrame(cc, f)
		case <-cc.c.Done():
			for len(cc.c.Frames()) > 0 {
				s.chaosFrame(cc, <-cc.c.Frames())
			}
			if !cc.reliable() || cc.c.CloseInfo().Code != 1006 || cc.id == "" || rng.IntN(4) == 0 {
				return // closed, or dropped for good
			}
			rec := u + "&awps_connection_id=" + url.QueryEscape(cc.id) + "&awps_reconnection_token=" + url.QueryEscape(cc.token)
			c, _, err := wstest.TryDial(rec, nil, cc.protocol)
			if err != nil || !s.track(c) {
				return
			}
			cc.c = c
			s.chaosRecoveries.Add(1)
		case <-tick.C:
			i++
			s.act(rng, cc)
		}
	}
}

// wait waits for n ticks of a millisecond, or stop.
func (s *stressEnv) wait(stop <-chan struct{}, n int) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for range n {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// chaosFrame reads what a chaos client needs: its id, and the sequence
// ids to acknowledge.
func (s *stressEnv) chaosFrame(cc *chaosClient, f wstest.Frame) {
	switch {
	case cc.protocol == "":
	case cc.protobuf():
		var m pb.DownstreamMessage
		if err := proto.Unmarshal(f.Data, &m); err != nil {
			s.t.Errorf("chaos client: not protobuf: %v", err)
			return
		}
		if c := m.GetSystemMessage().GetConnectedMessage(); c != nil && cc.id == "" {
			cc.id, cc.token = c.ConnectionId, c.GetReconnectionToken()
			s.addID(cc.id)
		}
		if seq := m.GetDataMessage().GetSequenceId(); seq > cc.lastSeq {
			cc.lastSeq = seq
		}
	default:
		var m struct {
			Type, Event, ConnectionID, ReconnectionToken string
			SequenceID                                   uint64
		}
		if err := json.Unmarshal(f.Data, &m); err != nil {
			s.t.Errorf("chaos client: not JSON: %q", f.Data)
			return
		}
		if m.Event == "connected" && cc.id == "" {
			cc.id, cc.token = m.ConnectionID, m.ReconnectionToken
			s.addID(cc.id)
		}
		if m.SequenceID > cc.lastSeq {
			cc.lastSeq = m.SequenceID
		}
	}
}

// act sends one request of a chaos client; write errors are the chaos's.
func (s *stressEnv) act(rng *rand.Rand, cc *chaosClient) {
	cc.ackID++
	g := someGroup(rng)
	if cc.protocol == "" {
		_ = cc.c.Conn.WriteString("hello")
		return
	}
	op := rng.IntN(8)
	if cc.protobuf() {
		var m pb.UpstreamMessage
		ack := u64(uint64(cc.ackID))
		text := &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "p:" + g}}
		switch op {
		case 0, 1:
			m.Message = &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: g, AckId: ack}}
		case 2, 3:
			m.Message = &pb.UpstreamMessage_LeaveGroupMessage_{LeaveGroupMessage: &pb.UpstreamMessage_LeaveGroupMessage{Group: g, AckId: ack}}
		case 4:
			m = *sendToGroup(g, uint64(cc.ackID), text, rng.IntN(2) == 0)
		case 5:
			m.Message = &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{Event: "echo", AckId: ack, Data: text}}
		case 6:
			m.Message = &pb.UpstreamMessage_PingMessage_{PingMessage: &pb.UpstreamMessage_PingMessage{}}
		case 7:
			m.Message = &pb.UpstreamMessage_SequenceAckMessage_{SequenceAckMessage: &pb.UpstreamMessage_SequenceAckMessage{SequenceId: cc.lastSeq}}
		}
		b, err := proto.Marshal(&m)
		if err != nil {
			s.t.Error(err)
			return
		}
		_ = cc.c.Conn.WriteMessage(2, b) // binary
		return
	}
	var frame string
	switch op {
	case 0, 1:
		frame = fmt.Sprintf(`{"type":"joinGroup","group":%q,"ackId":%d}`, g, cc.ackID)
	case 2, 3:
		frame = fmt.Sprintf(`{"type":"leaveGroup","group":%q,"ackId":%d}`, g, cc.ackID)
	case 4:
		frame = fmt.Sprintf(`{"type":"sendToGroup","group":%q,"ackId":%d,"noEcho":%v,"dataType":"text","data":"j"}`, g, cc.ackID, rng.IntN(2) == 0)
	case 5:
		frame = fmt.Sprintf(`{"type":"event","event":"echo","ackId":%d,"dataType":"json","data":{"a":1}}`, cc.ackID)
	case 6:
		frame = `{"type":"ping"}`
	case 7:
		frame = fmt.Sprintf(`{"type":"sequenceAck","sequenceId":%d}`, cc.lastSeq)
	}
	_ = cc.c.Conn.WriteString(frame)
}

// observer is a client of group "obs" that the chaos never closes: it
// checks that it gets every numbered message once and in order, and, if it
// is reliable, every sequence id once and in order across its recoveries.
type observer struct {
	t        *testing.T
	name     string
	protocol string
	url      string
	c        *wstest.Client
	s        *stressEnv
	id       string
	token    string

	lastSeq, acked uint64
	next           int // the number of the next numbered message expected
	dups           int // replayed messages dropped as duplicates
	drops          int
	recoveries     int
	progress       atomic.Int64  // the last numbered message received
	reached        chan struct{} // closed when the last one published has arrived
	failed         chan struct{} // closed when the observer has failed
	target         int
}

// observer connects an observer, through proxy unless nil.
func (s *stressEnv) observer(name, protocol string, proxy *wstest.Proxy) *observer {
	s.t.Helper()
	o := &observer{t: s.t, s: s, name: name, protocol: protocol, next: 1, target: -1,
		reached: make(chan struct{}), failed: make(chan struct{})}
	o.url = s.clientURL("chat", name, []string{"obs"})
	if proxy != nil {
		o.url = proxy.URL(o.url)
	}
	var protocols []string
	if protocol != "" {
		protocols = []string{protocol}
	}
	c, _, err := wstest.TryDial(o.url, nil, protocols...)
	if err != nil {
		s.t.Fatalf("%s: %v", name, err)
	}
	s.track(c)
	o.c = c
	if protocol == "" {
		return o
	}
	select { // the connected message
	case f := <-c.Frames():
		if protocol == protobufProtocol || protocol == reliableProtobufProtocol {
			var m pb.DownstreamMessage
			if err := proto.Unmarshal(f.Data, &m); err != nil || m.GetSystemMessage().GetConnectedMessage() == nil {
				s.t.Fatalf("%s: first message %v (%v)", name, &m, err)
			}
			o.id, o.token = m.GetSystemMessage().GetConnectedMessage().ConnectionId, m.GetSystemMessage().GetConnectedMessage().GetReconnectionToken()
		} else {
			var m struct{ Event, ConnectionID, ReconnectionToken string }
			if err := json.Unmarshal(f.Data, &m); err != nil || m.Event != "connected" {
				s.t.Fatalf("%s: first message %q", name, f.Data)
			}
			o.id, o.token = m.ConnectionID, m.ReconnectionToken
		}
	case <-timeAfter():
		s.t.Fatalf("%s: no connected message", name)
	}
	return o
}

func (o *observer) reliable() bool { return strings.Contains(o.protocol, "reliable") }
func (o *observer) protobuf() bool { return strings.HasPrefix(o.protocol, "protobuf") }

func (o *observer) fail(format string, args ...any) {
	o.t.Errorf(o.name+": "+format, args...)
	close(o.failed)
}

// run reads until stop, recovering the reliable observer's dropped
// transports; targets says the number of the last message published.
func (o *observer) run(targets <-chan int, stop <-chan struct{}) {
	reached := o.reached
	for {
		select {
		case f := <-o.c.Frames():
			if !o.take(f) {
				return
			}
		case <-o.c.Done():
			for len(o.c.Frames()) > 0 { // what arrived before the drop
				if !o.take(<-o.c.Frames()) {
					return
				}
			}
			if info := o.c.CloseInfo(); !o.reliable() || info.Code != 1006 {
				o.fail("closed with %+v", info)
				return
			}
			o.drops++
			if !o.recover() {
				return
			}
		case n := <-targets:
			o.target, targets = n, nil
		case <-stop:
			_ = o.c.Conn.WriteClose(1000, nil)
			o.s.drain(o.c)
			return
		}
		if o.target >= 0 && o.progress.Load() == int64(o.target) && reached != nil {
			close(reached)
			reached = nil
		}
	}
}

// recover resumes the reliable connection on a new transport, as a client
// does after a drop; a drop during the handshake is tried again.
func (o *observer) recover() bool {
	u := o.url + "&awps_connection_id=" + url.QueryEscape(o.id) + "&awps_reconnection_token=" + url.QueryEscape(o.token)
	deadline := time.Now().Add(waitFor)
	for {
		c, _, err := wstest.TryDial(u, nil, o.protocol)
		if err == nil {
			o.s.track(c)
			o.c = c
			o.recoveries++
			o.ack()
			return true
		}
		if time.Now().After(deadline) {
			o.fail("cannot recover: %v", err)
			return false
		}
	}
}

// ack acknowledges every sequence id received.
func (o *observer) ack() {
	if o.lastSeq == 0 {
		return
	}
	o.acked = o.lastSeq
	if o.protobuf() {
		b, _ := proto.Marshal(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SequenceAckMessage_{
			SequenceAckMessage: &pb.UpstreamMessage_SequenceAckMessage{SequenceId: o.lastSeq}}})
		_ = o.c.Conn.WriteMessage(2, b) // a drop is seen on the read side
		return
	}
	_ = o.c.Conn.WriteString(fmt.Sprintf(`{"type":"sequenceAck","sequenceId":%d}`, o.lastSeq))
}

// take checks one frame; false when the observer failed.
func (o *observer) take(f wstest.Frame) bool {
	var seq *uint64
	var text string
	switch {
	case o.protocol == "":
		text = string(f.Data)
	case o.protobuf():
		var m pb.DownstreamMessage
		if !f.Binary || proto.Unmarshal(f.Data, &m) != nil {
			o.fail("not a protobuf message: %q", f.Data)
			return false
		}
		if d := m.GetSystemMessage().GetDisconnectedMessage(); d != nil {
			o.fail("disconnected: %s", d.Reason)
			return false
		}
		d := m.GetDataMessage()
		if d == nil {
			return true
		}
		seq, text = d.SequenceId, d.GetData().GetTextData()
	default:
		var m struct {
			Type, Event, Message, DataType string
			Data                           json.RawMessage
			SequenceID                     *uint64
		}
		if f.Binary || json.Unmarshal(f.Data, &m) != nil {
			o.fail("not a JSON message: %q", f.Data)
			return false
		}
		if m.Type == "system" && m.Event == "disconnected" {
			o.fail("disconnected: %s", m.Message)
			return false
		}
		if m.Type != "message" {
			return true
		}
		seq = m.SequenceID
		if m.DataType == "text" {
			_ = json.Unmarshal(m.Data, &text)
		}
	}
	if o.reliable() {
		switch {
		case seq == nil:
			o.fail("a message without a sequence id: %q", f.Data)
			return false
		case *seq <= o.lastSeq:
			o.dups++
			return true // a replay of what arrived before a drop
		case *seq != o.lastSeq+1:
			o.fail("sequence id %d after %d: lost", *seq, o.lastSeq)
			return false
		}
		o.lastSeq = *seq
		if o.lastSeq-o.acked >= 50 {
			o.ack()
		}
	} else if seq != nil {
		o.fail("a sequence id on a plain client: %q", f.Data)
		return false
	}
	if n, ok := strings.CutPrefix(text, "n:"); ok {
		if n != strconv.Itoa(o.next) {
			o.fail("numbered message %s, want %d", n, o.next)
			return false
		}
		o.progress.Store(int64(o.next))
		o.next++
	}
	return true
}

// lifeRecorder is an event handler that checks every connection's events:
// connect, at most one connected, exactly one disconnected, in that order.
type lifeRecorder struct {
	mu    sync.Mutex
	conns map[string]*lifeEvents
	errs  []string
}

type lifeEvents struct{ connects, connected, disconnected int }

func newLifeRecorder() *lifeRecorder { return &lifeRecorder{conns: map[string]*lifeEvents{}} }

func (r *lifeRecorder) event(id string, f func(e *lifeEvents) string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.conns[id]
	if e == nil {
		e = &lifeEvents{}
		r.conns[id] = e
	}
	if msg := f(e); msg != "" {
		r.errs = append(r.errs, id+": "+msg)
	}
}

func (r *lifeRecorder) Connect(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
	r.event(req.ConnectionID, func(e *lifeEvents) string {
		e.connects++
		if e.connects > 1 {
			return "two connect events"
		}
		return ""
	})
	return nil, nil
}

func (r *lifeRecorder) Connected(_ context.Context, c pubsub.ConnectionContext) {
	r.event(c.ConnectionID, func(e *lifeEvents) string {
		e.connected++
		switch {
		case e.connects == 0:
			return "connected without connect"
		case e.connected > 1:
			return "two connected events"
		case e.disconnected > 0:
			return "connected after disconnected"
		}
		return ""
	})
}

func (r *lifeRecorder) Disconnected(_ context.Context, c pubsub.ConnectionContext, _ string) {
	r.event(c.ConnectionID, func(e *lifeEvents) string {
		e.disconnected++
		switch {
		case e.connects == 0:
			return "disconnected without connect"
		case e.disconnected > 1:
			return "two disconnected events"
		}
		return ""
	})
}

func (r *lifeRecorder) UserEvent(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
	if req.EventName == "echo" {
		return &pubsub.UserEventResponse{DataType: req.DataType, Data: req.Data}, nil
	}
	return nil, nil
}

// check runs after Shutdown: every accepted connection was disconnected,
// once.
func (r *lifeRecorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		t.Errorf("events: %s", e)
	}
	for id, e := range r.conns {
		if e.disconnected != 1 {
			t.Errorf("events: %s: %+v, want exactly one disconnected", id, *e)
		}
	}
}

func (r *lifeRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}
