// Package pubsub is Azure Web PubSub, in process. A Go application mounts the
// service's client handler in its own net/http server and gets hubs, groups,
// users and connections; WebSocket clients on /client/hubs/{hub} with JWT
// auth; the json.webpubsub.azure.v1 subprotocol with permissions; an event
// handler seam for connect, connected, disconnected and user events; and a Go
// API, per hub, that mirrors the data-plane REST operations.
//
// The root package owns the domain: the service and its hubs, the connection
// registry, permissions and fan-out, and, with a Broker, how several
// processes answer as one service (cluster.go, handover.go). protocol/ is the
// wire format; the gws WebSocket transport stays at the edge, in
// transport.go; natsbroker/ is the Broker on NATS.
package pubsub

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/puzpuzpuz/xsync/v3"
)

// Errors of the Go API, for errors.Is.
var (
	ErrNoAccessKey        = errors.New("pubsub: an access key is required")
	ErrInvalidHub         = errors.New("pubsub: invalid hub name")
	ErrInvalidGroup       = errors.New("pubsub: invalid group name")
	ErrInvalidUser        = errors.New("pubsub: invalid user id")
	ErrInvalidConnection  = errors.New("pubsub: invalid connection id")
	ErrInvalidMessage     = errors.New("pubsub: invalid message")
	ErrInvalidFilter      = errors.New("pubsub: invalid filter")
	ErrInvalidPermission  = errors.New("pubsub: invalid permission")
	ErrTooManyPermissions = errors.New("pubsub: too many permission rules for the connection")
	ErrConnectionNotFound = errors.New("pubsub: connection not found")
	ErrUserNotFound       = errors.New("pubsub: user has no connections")
	ErrServiceClosed      = errors.New("pubsub: service is shut down")
	// ErrTooManyGroups: the connection is in Config.MaxGroupsPerConnection
	// groups already.
	ErrTooManyGroups = errors.New("pubsub: the connection is in as many groups as it may be")
	// ErrTooManyHubs: the service holds Config.MaxHubs hubs with clients.
	ErrTooManyHubs = errors.New("pubsub: the service holds as many hubs as it may")
)

// Defaults of Config.
const (
	DefaultMaxMessageSize     = 1 << 20  // Azure's limit per client message
	DefaultOutboundBufferSize = 16 << 20 // sixteen messages of the largest size
	DefaultKeepAliveInterval  = 20 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultWriteTimeout       = 10 * time.Second
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultClockSkew          = 5 * time.Minute
	DefaultRecoveryWindow     = 30 * time.Second
	DefaultEndpoint           = "http://localhost"

	DefaultMaxGroupsPerConnection = 1000
	DefaultMaxHubs                = 1000
	DefaultMessageTimeout         = 30 * time.Second
	DefaultMaxInboundBytes        = 256 << 20
	DefaultMaxBufferedBytes       = 1 << 30
)

// Config configures a Service. Only AccessKey is required; every zero value
// means the default.
type Config struct {
	// Endpoint is the service's public base URL, as in a connection string
	// (http://localhost:8080). Client tokens are minted for it and a token's
	// aud may name its host. Default DefaultEndpoint.
	Endpoint string
	// AccessKey and SecondaryAccessKey sign tokens (HS256, the key's UTF-8
	// bytes). A token signed with either is valid; tokens are minted with the
	// primary.
	AccessKey          string
	SecondaryAccessKey string
	// EventHandler receives connect, connected, disconnected and user events.
	// Nil: connections are accepted with their token's claims and user events
	// have no handler.
	EventHandler EventHandler
	// AllowAnonymous accepts clients without a token (Azure's
	// anonymousConnectPolicy "allow"); the event handler then decides.
	AllowAnonymous bool
	// Broker makes this service one node of several that answer as one
	// (natsbroker is one): every operation reaches the connections of every
	// node. Nil: this process is the whole service.
	Broker Broker
	// ClusterTimeout bounds how long an operation waits for the other
	// nodes' answers (exists, lists, operations on a connection another
	// node holds); past it the call fails with ErrNodeUnavailable.
	// Default 2 s.
	ClusterTimeout time.Duration
	// Logger receives the service's logs: connections opened and closed at
	// INFO, messages at DEBUG; never a token, key or message body.
	// Nil: slog.Default().
	Logger *slog.Logger
	// Observers are told of connections and messages (Observer), for
	// metrics and a live trace.
	Observers []Observer
	// MaxMessageSize bounds one inbound WebSocket message; a larger one closes
	// the client with 1009. Default 1 MB.
	MaxMessageSize int
	// OutboundBufferSize bounds the bytes queued for one connection and not
	// yet handed to its socket (a write under way does not count). A client
	// that overflows it is closed as a slow client, so that no send waits
	// for it. Default 16 MiB, sixteen messages of the largest size.
	OutboundBufferSize int
	// KeepAliveInterval is how often WebSocket pings are sent. Default 20 s.
	KeepAliveInterval time.Duration
	// IdleTimeout closes a client from which nothing (not even a pong) has
	// arrived for this long. Default 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds how long a client's socket may take no more bytes
	// (each write of up to 256 KiB must finish within it) before the client
	// is dropped. Default 10 s.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds the WebSocket handshake's write. Default 10 s.
	HandshakeTimeout time.Duration
	// ClockSkew is the leeway for exp, nbf and iat. Default 5 minutes.
	ClockSkew time.Duration
	// RecoveryWindow is how long a reliable connection whose transport
	// dropped waits for its client to recover it. Default 30 s, the least
	// the client spec promises.
	RecoveryWindow time.Duration

	// MaxGroupsPerConnection bounds the groups one connection is in; a join
	// past it fails (ack BadRequest, REST 409, ErrTooManyGroups). Default
	// 1,000.
	MaxGroupsPerConnection int
	// MaxHubs bounds the hubs with connected clients; a client of one more
	// hub is refused with 503. A hub with no client costs nothing and is
	// pruned. Default 1,000.
	MaxHubs int
	// MessageTimeout bounds the time from the first byte of a client's
	// message to its last, however many pings come meanwhile; past it the
	// client is closed with 1008. Default 30 s.
	MessageTimeout time.Duration
	// MaxInboundBytes bounds the bytes of client messages being received
	// (frames over 1 KiB and fragmented messages, which must be held whole),
	// across all connections. A client whose message would pass it is
	// closed with 1013, try again later. Default 256 MiB.
	MaxInboundBytes int64
	// MaxBufferedBytes bounds the bytes held for clients across all
	// connections: outbound queues and reliable replay buffers, a message's
	// encoding shared by many receivers counted once. Past it, the
	// connections holding the most are closed (1008) until a tenth of it is
	// free again. Default 1 GiB.
	MaxBufferedBytes int64
	// MaxMessagesPerSecond, when set, bounds each connection's inbound
	// messages (pings and sequence acks aside), with a burst of as many. A
	// request over it is refused with an ack error TooManyRequests, or, if
	// it has no ackId (or the client is a simple client), the client is
	// closed with 1008. Default 0: no limit.
	MaxMessagesPerSecond int
	// MaxStreamsPerConnection bounds the group streams one connection has
	// open, MaxStreamsPerGroup those open to one group (on this node). A
	// stream start past either is answered with streamClosed BadRequest.
	// Defaults 100 and 1,000.
	MaxStreamsPerConnection int
	MaxStreamsPerGroup      int
}

// Stats are counters of a Service.
type Stats struct {
	// Connections is the number of connections open now (detached reliable
	// ones included).
	Connections int64
	// Hubs is the number of hubs with connections now.
	Hubs int64
	// SlowClientDisconnects counts clients closed because their outbound
	// buffer overflowed.
	SlowClientDisconnects int64
	// BufferBudgetDisconnects counts clients closed because the service's
	// MaxBufferedBytes was reached and they held the most.
	BufferBudgetDisconnects int64
	// BufferedBytes is what outbound queues and replay buffers hold now (a
	// shared encoding once).
	BufferedBytes int64
	// InboundBudgetDisconnects counts clients closed because their message
	// would have passed MaxInboundBytes.
	InboundBudgetDisconnects int64
	// InboundBytes is what the messages being received hold now.
	InboundBytes int64
	// MessageTimeouts counts clients closed for not finishing a message
	// within MessageTimeout.
	MessageTimeouts int64
	// RateLimited counts requests refused over MaxMessagesPerSecond.
	RateLimited int64
	// Panics counts panics recovered on a connection's read or write path;
	// each closed its connection.
	Panics int64
	// Nodes is the number of nodes of the cluster this one has heard from
	// lately, itself included; 1 without a Broker.
	Nodes int64
	// ClusterTimeouts counts operations that failed with ErrNodeUnavailable.
	ClusterTimeouts int64
	// BrokerErrors counts commands the broker refused or could not flush
	// (it was unreachable); a refused send reached this node's connections
	// only.
	BrokerErrors int64
	// Streams is the number of group streams open on this node now.
	Streams int64
}

// Service is one Azure Web PubSub service: its hubs, their connections, and
// the handlers that serve clients.
type Service struct {
	cfg      Config
	log      *slog.Logger
	endpoint *url.URL
	keys     [][]byte
	cluster  *cluster // nil: a single node
	handler  EventHandler
	// presence is the handler's GroupPresenceHandler, nil when it has none
	// (presence.go).
	presence  GroupPresenceHandler
	presenceQ presenceDispatch

	// hubs holds the hubs with connections; one is created by its first
	// connection and pruned with its last (Compute keeps both atomic).
	hubs      *xsync.MapOf[string, *hubState]
	numHubs   atomic.Int64
	upgraders *xsync.MapOf[string, *gws.Upgrader]
	writers   writers

	// mu orders registration against Shutdown: a connection is registered
	// under a read lock, and Shutdown sets closed under the write lock, so it
	// sees every registered connection.
	mu       sync.RWMutex
	closed   bool
	shutdown atomic.Bool // closed, readable without the lock on hot paths
	// active counts registered connections and the goroutines they use:
	// Shutdown waits for it.
	active tracker

	keepAliveOnce sync.Once
	stopKeepAlive chan struct{}
	keepAliveDone chan struct{}

	connections              atomic.Int64
	slowClients              atomic.Int64
	bufferedBytes            atomic.Int64
	shedding                 atomic.Bool
	budgetDisconnects        atomic.Int64
	inboundBytes             atomic.Int64
	inboundBudgetDisconnects atomic.Int64
	messageTimeouts          atomic.Int64
	rateLimited              atomic.Int64
	panics                   atomic.Int64
	openStreams              atomic.Int64 // group streams open (stream.go)
}

// New returns a Service. Without a Broker it starts no goroutine until the
// first client connects; with one it joins the cluster: it subscribes to
// its own subjects and listens a quarter of a second for its peers.
func New(cfg Config) (*Service, error) {
	if cfg.AccessKey == "" {
		return nil, ErrNoAccessKey
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	ep, err := url.Parse(strings.TrimRight(cfg.Endpoint, "/"))
	if err != nil || (ep.Scheme != "http" && ep.Scheme != "https") || ep.Host == "" {
		return nil, errors.New("pubsub: Endpoint must be an absolute http or https URL")
	}
	setDefault(&cfg.MaxMessageSize, DefaultMaxMessageSize)
	setDefault(&cfg.OutboundBufferSize, DefaultOutboundBufferSize)
	setDefault(&cfg.KeepAliveInterval, DefaultKeepAliveInterval)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	setDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&cfg.ClockSkew, DefaultClockSkew)
	setDefault(&cfg.RecoveryWindow, DefaultRecoveryWindow)
	setDefault(&cfg.MaxGroupsPerConnection, DefaultMaxGroupsPerConnection)
	setDefault(&cfg.MaxHubs, DefaultMaxHubs)
	setDefault(&cfg.MessageTimeout, DefaultMessageTimeout)
	setDefault(&cfg.MaxInboundBytes, DefaultMaxInboundBytes)
	setDefault(&cfg.MaxBufferedBytes, DefaultMaxBufferedBytes)
	setDefault(&cfg.ClusterTimeout, DefaultClusterTimeout)
	setDefault(&cfg.MaxStreamsPerConnection, DefaultMaxStreamsPerConnection)
	setDefault(&cfg.MaxStreamsPerGroup, DefaultMaxStreamsPerGroup)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Service{
		cfg:           cfg,
		log:           cfg.Logger,
		endpoint:      ep,
		keys:          [][]byte{[]byte(cfg.AccessKey)},
		handler:       cfg.EventHandler,
		hubs:          xsync.NewMapOf[string, *hubState](),
		upgraders:     xsync.NewMapOf[string, *gws.Upgrader](),
		stopKeepAlive: make(chan struct{}),
		keepAliveDone: make(chan struct{}),
	}
	if cfg.SecondaryAccessKey != "" {
		s.keys = append(s.keys, []byte(cfg.SecondaryAccessKey))
	}
	if s.handler == nil {
		s.handler = EventHandlerFuncs{}
	}
	g := guardedHandler{h: s.handler, p: presenceHandler(s.handler), log: s.log}
	s.handler = g
	if g.p != nil {
		s.presence = g
	}
	s.writers.svc = s
	if cfg.Broker != nil {
		if s.cluster, err = newCluster(s, cfg.Broker); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// hubNamePattern is the swagger's hub name rule.
var hubNamePattern = regexp.MustCompile("^[A-Za-z][A-Za-z0-9_`,.[\\]]{0,127}$")

// Hub returns the hub of that name. Hub names are case-insensitive. A hub
// exists while it has connections; the Hub value stays valid either way,
// and operations on a hub without connections find nobody.
func (s *Service) Hub(name string) (*Hub, error) {
	if !hubNamePattern.MatchString(name) {
		return nil, ErrInvalidHub
	}
	return &Hub{svc: s, name: strings.ToLower(name)}, nil
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	st := Stats{
		Connections:              s.connections.Load(),
		Hubs:                     s.numHubs.Load(),
		SlowClientDisconnects:    s.slowClients.Load(),
		BufferBudgetDisconnects:  s.budgetDisconnects.Load(),
		BufferedBytes:            s.bufferedBytes.Load(),
		InboundBudgetDisconnects: s.inboundBudgetDisconnects.Load(),
		InboundBytes:             s.inboundBytes.Load(),
		MessageTimeouts:          s.messageTimeouts.Load(),
		RateLimited:              s.rateLimited.Load(),
		Panics:                   s.panics.Load(),
		Nodes:                    1,
		Streams:                  s.openStreams.Load(),
	}
	if s.cluster != nil {
		st.ClusterTimeouts = s.cluster.timeouts.Load()
		st.BrokerErrors = s.cluster.publishErrors.Load()
		st.Nodes = int64(len(s.cluster.livePeers()))
	}
	return st
}

// Shutdown stops accepting clients, sends every client a "disconnected"
// message and a close frame, and returns when every connection is gone and its
// disconnected event was handled. In a cluster with other nodes, a reliable
// connection's transport is dropped instead, so that its client recovers it
// on another node; Shutdown waits for that, or for the recovery window. When ctx ends first, the remaining
// connections are dropped and ctx's error returned.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.shutdown.Store(true)
	s.mu.Unlock()
	if !already {
		s.keepAliveOnce.Do(func() { close(s.keepAliveDone) }) // never started: nothing to wait for
		close(s.stopKeepAlive)
		<-s.keepAliveDone
		s.eachConn(func(c *conn) {
			if c.rel != nil && s.cluster != nil && s.cluster.hasPeers() && c.drain() {
				return // its client recovers it on another node
			}
			c.close(DisconnectServiceShutdown)
		})
	}
	var err error
	select {
	case <-s.active.idle():
	case <-ctx.Done():
		s.eachConn(func(c *conn) { c.abort() })
		err = ctx.Err()
	}
	if !already {
		if sh, ok := s.cfg.EventHandler.(Shutdowner); ok {
			if herr := sh.Shutdown(ctx); err == nil {
				err = herr
			}
		}
		if s.cluster != nil {
			if cerr := s.cluster.close(); err == nil {
				err = cerr
			}
		}
	}
	return err
}

// register adds a connection to its hub (creating the hub, within
// MaxHubs), unless the service is shutting down.
func (s *Service) register(c *conn, hubName string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrServiceClosed
	}
	h := s.hubState(hubName)
	if h == nil {
		return ErrTooManyHubs
	}
	c.hub = h
	s.active.add()
	s.connections.Add(1)
	h.register(c)
	s.keepAliveOnce.Do(func() { go s.keepAlive() })
	return nil
}

// hubState returns the hub's registry, counting one more connection in it;
// nil when creating it would pass MaxHubs.
func (s *Service) hubState(name string) *hubState {
	h, _ := s.hubs.Compute(name, func(h *hubState, loaded bool) (*hubState, bool) {
		if !loaded {
			if s.numHubs.Add(1) > int64(s.cfg.MaxHubs) {
				s.numHubs.Add(-1)
				return nil, true
			}
			h = newHubState(name, s.cluster)
			if s.cluster != nil {
				s.cluster.subscribe(hubSubject(subjectKey(name)))
			}
		}
		h.live++
		return h, false
	})
	return h
}

// pruneHub counts a connection out of h, deleting h with its last one.
func (s *Service) pruneHub(h *hubState) {
	s.hubs.Compute(h.name, func(cur *hubState, loaded bool) (*hubState, bool) {
		if !loaded || cur != h {
			return cur, !loaded
		}
		cur.live--
		if cur.live > 0 {
			return cur, false
		}
		s.numHubs.Add(-1)
		if s.cluster != nil {
			s.cluster.unsubscribe(hubSubject(subjectKey(h.name)))
		}
		return nil, true
	})
}

func (s *Service) isClosed() bool { return s.shutdown.Load() }

// begin counts a handshake under way, so that Shutdown waits for it (and
// for the disconnected event of a connect it accepted), unless the service
// is shutting down.
func (s *Service) begin() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.active.add()
	return true
}

func (s *Service) eachConn(f func(*conn)) {
	s.hubs.Range(func(_ string, h *hubState) bool {
		h.conns.Range(func(_ string, c *conn) bool { f(c); return true })
		return true
	})
}

// keepAlive pings every client each KeepAliveInterval and closes the ones
// silent for IdleTimeout. One goroutine serves every connection, so an idle
// connection costs no timer.
func (s *Service) keepAlive() {
	defer close(s.keepAliveDone)
	t := time.NewTicker(s.cfg.KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopKeepAlive:
			return
		case now := <-t.C:
			deadline := now.Add(-s.cfg.IdleTimeout).UnixNano()
			s.eachConn(func(c *conn) { c.keepAlive(deadline) })
		}
	}
}

// tracker counts work in progress and says when there is none; unlike a
// WaitGroup, work may start again after it was idle.
type tracker struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; nil while n is 0
}

func (t *tracker) add() {
	t.mu.Lock()
	if t.n == 0 {
		t.zero = make(chan struct{})
	}
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 {
		close(t.zero)
		t.zero = nil
	}
	t.mu.Unlock()
}

// idle returns a channel closed when no work is in progress.
func (t *tracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		return closedChan
	}
	return t.zero
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()
