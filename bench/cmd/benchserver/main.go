// Command benchserver is the server side of the load tool: one binary that
// serves the same workload with this library or one of its peers, so that
// they run side by side on the same machine in the same run.
//
//	benchserver -impl ours|gws|melody|centrifuge -addr 127.0.0.1:0
//	benchserver -impl ours -nats nats://127.0.0.1:4222 -node-id n1   # one node of a cluster
//
// Every implementation subscribes a WebSocket connection to the group named
// by ?group=; a connection opened with ?pub=1 publishes: each of its text
// frames, "<group>|<payload>", is broadcast to that group (for centrifuge,
// a publish command to the channel). It prints "ready <addr>" once listening, serves
// GET /stats (Go heap, goroutines; for ours, the nodes it knows of and what
// its broker dropped) and, for ours, the REST API.
//
// With -nats, ours is one node of a cluster: its service has a natsbroker
// on that NATS server, so a publisher's sends through the Go API reach the
// group's members on every node.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"
	"github.com/lxzan/gws"
	"github.com/olahol/melody"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/natsbroker"
	"github.com/embedwps/pubsub/rest"
)

// AccessKey is shared with the load tool, which signs tokens with it.
const AccessKey = "bench-access-key-0123456789abcdef"

func main() {
	impl := flag.String("impl", "ours", "ours, gws, melody or centrifuge")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	natsURL := flag.String("nats", "", "ours only: be a node of a cluster on this NATS server")
	nodeID := flag.String("node-id", "", "with -nats: this node's id (default random)")
	flag.Parse()
	if *natsURL != "" && *impl != "ours" {
		log.Fatal("-nats needs -impl ours")
	}
	raiseFDLimit()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := map[string]int64{"heapInuse": int64(ms.HeapInuse), "stackInuse": int64(ms.StackInuse), "goroutines": int64(runtime.NumGoroutine())}
		if svc != nil {
			ss := svc.Stats()
			st["connections"], st["nodes"], st["brokerErrors"], st["clusterTimeouts"] = ss.Connections, ss.Nodes, ss.BrokerErrors, ss.ClusterTimeouts
			st["apiSends"], st["apiSendNanos"] = apiSends.Load(), apiSendNanos.Load()
		}
		if broker != nil {
			bs := broker.Stats()
			st["brokerPublished"], st["brokerReceived"], st["brokerDropped"] = bs.Published, bs.Received, bs.Dropped
		}
		json.NewEncoder(w).Encode(st)
	})
	// The load tool's -cpuprofile: a CPU profile of exactly the measured
	// phase of a run.
	mux.HandleFunc("POST /profile/start", func(w http.ResponseWriter, r *http.Request) {
		if err := pprof.StartCPUProfile(&profile); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	mux.HandleFunc("POST /profile/heap", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		_ = pprof.Lookup("heap").WriteTo(w, 0)
	})
	mux.HandleFunc("POST /profile/stop", func(w http.ResponseWriter, r *http.Request) {
		pprof.StopCPUProfile()
		_, _ = w.Write(profile.Bytes())
		profile.Reset()
	})
	switch *impl {
	case "ours":
		if *natsURL != "" {
			b, err := natsbroker.New(natsbroker.Options{URL: *natsURL, NodeID: *nodeID,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				log.Fatal(err)
			}
			broker = b
		}
		svc = ours(mux, "http://"+ln.Addr().String(), broker)
	case "gws":
		bareGWS(mux)
	case "melody":
		melodyServer(mux)
	case "centrifuge":
		centrifugeServer(mux)
	default:
		log.Fatalf("unknown -impl %q", *impl)
	}
	fmt.Println("ready", ln.Addr().String())
	log.Fatal((&http.Server{Handler: mux}).Serve(ln))
}

// profile holds the CPU profile between /profile/start and /profile/stop.
var profile bytes.Buffer

// For ours: the service, and its broker when it is a node of a cluster;
// the Go API sends made and the time they took (with a broker, each
// returns after a NATS flush).
var (
	svc                    *pubsub.Service
	broker                 *natsbroker.Broker
	apiSends, apiSendNanos atomic.Int64
)

func raiseFDLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// ours: simple WebSocket clients on /client/hubs/bench; the connect event
// puts a subscriber in its group, and a publisher's frames (user events)
// are sent to its group through the Go API. With a broker, the service is
// one node of a cluster.
func ours(mux *http.ServeMux, endpoint string, broker *natsbroker.Broker) *pubsub.Service {
	var hub *pubsub.Hub
	handler := pubsub.EventHandlerFuncs{
		OnConnect: func(_ context.Context, req *pubsub.ConnectRequest) (*pubsub.ConnectResponse, error) {
			if first(req.Query["pub"]) == "1" {
				return nil, nil
			}
			return &pubsub.ConnectResponse{Groups: []string{first(req.Query["group"])}}, nil
		},
		OnUserEvent: func(ctx context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			group, payload := split(req.Data)
			t := time.Now()
			// Pipelined: in a cluster, the send is ordered with the
			// client's next without waiting for a NATS flush.
			err := hub.SendToGroup(ctx, group, pubsub.Message{DataType: pubsub.DataTypeText, Data: payload}, pubsub.Pipelined())
			apiSends.Add(1)
			apiSendNanos.Add(int64(time.Since(t)))
			return nil, err
		},
	}
	cfg := pubsub.Config{Endpoint: endpoint, AccessKey: AccessKey, AllowAnonymous: true, EventHandler: handler,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OutboundBufferSize: 64 << 20}
	if broker != nil {
		cfg.Broker = broker
	}
	svc, err := pubsub.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	hub, _ = svc.Hub("bench")
	mux.Handle("/client/", svc.ClientHandler())
	mux.Handle("/api/", rest.NewHandler(svc, rest.Options{}))
	return svc
}

// split reads a publisher's frame: "<group>|<payload>".
func split(frame []byte) (string, []byte) {
	for i, c := range frame {
		if c == '|' {
			return string(frame[:i]), frame[i+1:]
		}
	}
	return "", frame
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// groups is the group index the peers without one of their own use.
type groups[C comparable] struct {
	mu sync.RWMutex
	m  map[string]map[C]struct{}
}

func (g *groups[C]) add(name string, c C) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]map[C]struct{}{}
	}
	if g.m[name] == nil {
		g.m[name] = map[C]struct{}{}
	}
	g.m[name][c] = struct{}{}
}

func (g *groups[C]) remove(name string, c C) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.m[name], c)
	if len(g.m[name]) == 0 {
		delete(g.m, name)
	}
}

func (g *groups[C]) each(name string, f func(C)) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for c := range g.m[name] {
		f(c)
	}
}

// bareGWS: the transport's ceiling, one gws Broadcaster per message.
type gwsHandler struct {
	gws.BuiltinEventHandler
	groups groups[*gws.Conn]
}

type gwsSession struct{ group, pub string }

func bareGWS(mux *http.ServeMux) {
	h := &gwsHandler{}
	up := gws.NewUpgrader(h, &gws.ServerOption{ReadMaxPayloadSize: 1 << 20})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		c.Session().Store("s", gwsSession{r.URL.Query().Get("group"), r.URL.Query().Get("pub")})
		go c.ReadLoop()
	})
}

func sessionOf(c *gws.Conn) gwsSession { v, _ := c.Session().Load("s"); return v.(gwsSession) }

func (h *gwsHandler) OnOpen(c *gws.Conn) {
	if s := sessionOf(c); s.pub != "1" {
		h.groups.add(s.group, c)
	}
}

func (h *gwsHandler) OnClose(c *gws.Conn, _ error) {
	if s := sessionOf(c); s.pub != "1" {
		h.groups.remove(s.group, c)
	}
}

func (h *gwsHandler) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	group, payload := split(m.Bytes())
	b := gws.NewBroadcaster(gws.OpcodeText, payload)
	defer b.Close()
	h.groups.each(group, func(s *gws.Conn) { _ = b.Broadcast(s, nil) })
}

// melodyServer: melody with a group index and BroadcastMultiple.
func melodyServer(mux *http.ServeMux) {
	m := melody.New()
	m.Config.MaxMessageSize = 1 << 20
	m.Config.MessageBufferSize = 1024
	var g groups[*melody.Session]
	m.HandleConnect(func(s *melody.Session) {
		if s.MustGet("pub") != "1" {
			g.add(s.MustGet("group").(string), s)
		}
	})
	m.HandleDisconnect(func(s *melody.Session) {
		if s.MustGet("pub") != "1" {
			g.remove(s.MustGet("group").(string), s)
		}
	})
	m.HandleMessage(func(s *melody.Session, msg []byte) {
		group, payload := split(msg)
		var targets []*melody.Session
		g.each(group, func(t *melody.Session) { targets = append(targets, t) })
		_ = m.BroadcastMultiple(payload, targets)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		_ = m.HandleRequestWithKeys(w, r, map[string]any{"group": r.URL.Query().Get("group"), "pub": r.URL.Query().Get("pub")})
	})
}

type groupKey struct{}

// centrifugeServer: server-side subscriptions; the publisher uses the
// client publish command.
func centrifugeServer(mux *http.ServeMux) {
	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelError})
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		reply := centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{UserID: ""}}
		if q := ctx.Value(groupKey{}).([2]string); q[1] != "1" {
			reply.Subscriptions = map[string]centrifuge.SubscribeOptions{q[0]: {}}
		}
		return reply, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		c.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) { cb(centrifuge.PublishReply{}, nil) })
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	ws := centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		q := [2]string{r.URL.Query().Get("group"), r.URL.Query().Get("pub")}
		ws.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), groupKey{}, q)))
	})
}
