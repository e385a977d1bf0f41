// Package bench measures the library's hot paths with go test -bench, and
// holds the load tool (cmd/load) that runs it side by side with its peers.
//
//	cd bench && go test -run XXX -bench . -benchmem
package bench

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/filter"
	"github.com/embedwps/pubsub/metrics"
	"github.com/embedwps/pubsub/protocol"
)

func BenchmarkFrameEncoding(b *testing.B) {
	for _, size := range []int{64, 1024, 16 << 10} {
		data := []byte(strings.Repeat("x", size))
		buf := make([]byte, 0, size*2+256)
		b.Run("json-text/"+strconv.Itoa(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				buf = protocol.AppendGroupMessage(buf[:0], "room", "user1", protocol.Text, data)
			}
		})
		b.Run("json-binary/"+strconv.Itoa(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				buf = protocol.AppendGroupMessage(buf[:0], "room", "user1", protocol.Binary, data)
			}
		})
		b.Run("protobuf/"+strconv.Itoa(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				buf = protocol.AppendProtobufDataMessage(buf[:0], "group", "room", protocol.Text, data)
			}
		})
	}
}

type conn struct{ id, user string }

func (c conn) ConnectionID() string  { return c.id }
func (c conn) UserID() string        { return c.user }
func (c conn) Protocol() string      { return "" }
func (c conn) InGroup(g string) bool { return g == "vip" }
func (c conn) GroupCount() int       { return 1 }

func BenchmarkFilterEvaluation(b *testing.B) {
	f, err := filter.Parse("userId in ('user1', 'user2', 'user3') and 'vip' in groups and not startswith(connectionId, 'x')")
	if err != nil {
		b.Fatal(err)
	}
	c := conn{"c1", "user2"}
	b.Run("match", func(b *testing.B) {
		for b.Loop() {
			if !f.Match(c) {
				b.Fatal("no match")
			}
		}
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			_, _ = filter.Parse("userId in ('user1', 'user2', 'user3') and 'vip' in groups and not startswith(connectionId, 'x')")
		}
	})
}

// sink counts what the clients receive and signals when an expected number
// of deliveries has arrived.
type sink struct {
	remaining atomic.Int64
	done      atomic.Pointer[chan struct{}]
}

// expect arms the sink for n deliveries and returns the channel closed then.
func (s *sink) expect(n int) chan struct{} {
	ch := make(chan struct{})
	s.done.Store(&ch)
	s.remaining.Store(int64(n))
	return ch
}

// counter is a WebSocket client feeding a sink.
type counter struct {
	gws.BuiltinEventHandler
	s *sink
}

func (c counter) OnMessage(_ *gws.Conn, m *gws.Message) {
	m.Close()
	if c.s.remaining.Add(-1) == 0 {
		close(*c.s.done.Load())
	}
}

// service starts the library in an httptest server with n simple clients
// in group "room"; it returns the hub, the clients' connection ids and the
// delivery counter.
func service(b *testing.B, n int, roles ...string) (*pubsub.Hub, []string, *sink) {
	return observedService(b, n, nil, roles...)
}

// quiet logs warnings and errors only.
var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// observedService is service with observers (metrics).
func observedService(b *testing.B, n int, observers []pubsub.Observer, roles ...string) (*pubsub.Hub, []string, *sink) {
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	svc, err := pubsub.New(pubsub.Config{Endpoint: srv.URL, AccessKey: "bench-key", OutboundBufferSize: 64 << 20, Observers: observers,
		Logger: quiet}) // a thousand "connection opened" lines would bury the results
	if err != nil {
		b.Fatal(err)
	}
	mux.Handle("/client/", svc.ClientHandler())
	hub, _ := svc.Hub("bench")
	delivered := new(sink)
	var conns []*gws.Conn
	for i := 0; i < n; i++ {
		u, _ := svc.ClientURL("bench", pubsub.TokenOptions{UserID: "u" + strconv.Itoa(i), Groups: []string{"room"}, Roles: roles})
		c, _, err := gws.NewClient(counter{s: delivered}, &gws.ClientOption{Addr: u})
		if err != nil {
			b.Fatal(err)
		}
		go c.ReadLoop()
		conns = append(conns, c)
	}
	members, _ := hub.ListConnectionsInGroup(context.Background(), "room")
	var ids []string
	for _, m := range members {
		ids = append(ids, m.ConnectionID)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svc.Shutdown(ctx)
		srv.Close()
	})
	return hub, ids, delivered
}

// BenchmarkFanout: one SendToGroup to n local connections over loopback,
// until every one has read it. ns/op is per message.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			hub, _, delivered := service(b, n)
			msg := pubsub.TextMessage(strings.Repeat("x", 1024))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				done := delivered.expect(n)
				if err := hub.SendToGroup(context.Background(), "room", msg); err != nil {
					b.Fatal(err)
				}
				<-done
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}

// BenchmarkFanoutMetrics: BenchmarkFanout without observers and with the
// Prometheus metrics counting every message, in the same run, so that the
// ratio says what counting costs on the hot path.
//
//	cd bench && go test -run XXX -bench FanoutMetrics -benchmem -count 5
func BenchmarkFanoutMetrics(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, size := range []int{64, 1024} {
			for _, mode := range []string{"off", "metrics"} {
				b.Run(mode+"/"+strconv.Itoa(n)+"/"+strconv.Itoa(size), func(b *testing.B) {
					var obs []pubsub.Observer
					if mode == "metrics" {
						obs = append(obs, metrics.New(metrics.Options{}))
					}
					hub, _, delivered := observedService(b, n, obs)
					msg := pubsub.TextMessage(strings.Repeat("x", size))
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						done := delivered.expect(n)
						if err := hub.SendToGroup(context.Background(), "room", msg); err != nil {
							b.Fatal(err)
						}
						<-done
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
				})
			}
		}
	}
}

// BenchmarkPermissionCheck: CheckPermission on a connection with a literal
// and a wildcard role.
func BenchmarkPermissionCheck(b *testing.B) {
	hub, ids, _ := service(b, 1, "webpubsub.sendToGroup.room-1", "webpubsub.sendToGroups.team-*.chat")
	for _, group := range []string{"room-1", "team-red.chat", "denied"} {
		b.Run(group, func(b *testing.B) {
			for b.Loop() {
				_, _ = hub.CheckPermission(context.Background(), ids[0], pubsub.PermissionSendToGroup, group)
			}
		})
	}
}

// BenchmarkRegistryChurn: a connection joins and leaves a group, the work
// of a joinGroup/leaveGroup pair.
func BenchmarkRegistryChurn(b *testing.B) {
	hub, ids, _ := service(b, 100)
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			id := ids[i%len(ids)]
			g := "g" + strconv.Itoa(i%1000)
			_ = hub.AddConnectionToGroup(ctx, id, g)
			_ = hub.RemoveConnectionFromGroup(ctx, id, g)
			i++
		}
	})
}
