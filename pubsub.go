// Package pubsub is Azure Web PubSub, in process. A Go application mounts the
// service's client handler in its own net/http server and gets hubs, groups,
// users and connections; WebSocket clients on /client/hubs/{hub} with JWT
// auth; the json.webpubsub.azure.v1 subprotocol with permissions; an event
// handler seam for connect, connected, disconnected and user events; and a Go
// API, per hub, that mirrors the data-plane REST operations.
//
// The root package owns the domain: the service and its hubs, the connection
// registry, permissions and fan-out. protocol/ is the wire format; the gws
// WebSocket transport stays at the edge, in transport.go.
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
)

// Defaults of Config.
const (
	DefaultMaxMessageSize     = 1 << 20 // Azure's limit per client message
	DefaultOutboundBufferSize = 4 << 20
	DefaultKeepAliveInterval  = 20 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultWriteTimeout       = 10 * time.Second
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultClockSkew          = 5 * time.Minute
	DefaultRecoveryWindow     = 30 * time.Second
	DefaultEndpoint           = "http://localhost"
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
	// Broker carries sends and closes to every process of the service.
	// Nil: this process only.
	Broker Broker
	// Logger receives the service's logs. Nil: slog.Default().
	Logger *slog.Logger
	// MaxMessageSize bounds one inbound WebSocket message; a larger one closes
	// the client with 1009. Default 1 MB.
	MaxMessageSize int
	// OutboundBufferSize bounds the bytes queued for one connection and not
	// yet written. A client that overflows it is closed as a slow client, so
	// that no send waits for it. Default 4 MiB.
	OutboundBufferSize int
	// KeepAliveInterval is how often WebSocket pings are sent. Default 20 s.
	KeepAliveInterval time.Duration
	// IdleTimeout closes a client from which nothing (not even a pong) has
	// arrived for this long. Default 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds one write to a client. Default 10 s.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds the WebSocket handshake's write. Default 10 s.
	HandshakeTimeout time.Duration
	// ClockSkew is the leeway for exp, nbf and iat. Default 5 minutes.
	ClockSkew time.Duration
	// RecoveryWindow is how long a reliable connection whose transport
	// dropped waits for its client to recover it. Default 30 s, the least
	// the client spec promises.
	RecoveryWindow time.Duration
}

// Stats are counters of a Service.
type Stats struct {
	// Connections is the number of connections open now.
	Connections int64
	// SlowClientDisconnects counts clients closed because their outbound
	// buffer overflowed.
	SlowClientDisconnects int64
}

// Service is one Azure Web PubSub service: its hubs, their connections, and
// the handlers that serve clients.
type Service struct {
	cfg      Config
	log      *slog.Logger
	endpoint *url.URL
	keys     [][]byte
	broker   Broker
	handler  EventHandler

	hubs      *xsync.MapOf[string, *Hub]
	upgraders *xsync.MapOf[string, *gws.Upgrader]
	transport *transport
	writers   writers

	// mu orders registration against Shutdown: a connection is registered
	// under a read lock, and Shutdown sets closed under the write lock, so it
	// sees every registered connection.
	mu       sync.RWMutex
	closed   bool
	shutdown atomic.Bool // closed, readable without the lock on hot paths
	conns    sync.WaitGroup

	keepAliveOnce sync.Once
	stopKeepAlive chan struct{}
	keepAliveDone chan struct{}

	connections atomic.Int64
	slowClients atomic.Int64
}

// New returns a Service. It starts no goroutine until the first client
// connects.
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Service{
		cfg:           cfg,
		log:           cfg.Logger,
		endpoint:      ep,
		keys:          [][]byte{[]byte(cfg.AccessKey)},
		broker:        cfg.Broker,
		handler:       cfg.EventHandler,
		hubs:          xsync.NewMapOf[string, *Hub](),
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
	s.handler = guardedHandler{h: s.handler, log: s.log}
	if s.broker == nil {
		s.broker = &localBroker{}
	}
	s.transport = &transport{svc: s}
	if err := s.broker.Start(s.apply); err != nil {
		return nil, err
	}
	return s, nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// hubNamePattern is the swagger's hub name rule.
var hubNamePattern = regexp.MustCompile("^[A-Za-z][A-Za-z0-9_`,.[\\]]{0,127}$")

// Hub returns the hub of that name, creating it on first use. Hub names are
// case-insensitive.
func (s *Service) Hub(name string) (*Hub, error) {
	if !hubNamePattern.MatchString(name) {
		return nil, ErrInvalidHub
	}
	return s.hub(strings.ToLower(name)), nil
}

// hub returns the hub for a validated, lower-cased name.
func (s *Service) hub(name string) *Hub {
	h, _ := s.hubs.LoadOrCompute(name, func() *Hub { return newHub(s, name) })
	return h
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	return Stats{
		Connections:           s.connections.Load(),
		SlowClientDisconnects: s.slowClients.Load(),
	}
}

// Shutdown stops accepting clients, sends every client a "disconnected"
// message and a close frame, and returns when every connection is gone and its
// disconnected event was handled. When ctx ends first, the remaining
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
		s.eachConn(func(c *conn) { c.close(DisconnectServiceShutdown) })
	}
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		s.eachConn(func(c *conn) {
			c.outMu.Lock()
			o := c.out
			c.outMu.Unlock()
			c.abort(o)
		})
		err = ctx.Err()
	}
	if !already {
		if sh, ok := s.cfg.EventHandler.(interface{ Shutdown(context.Context) error }); ok {
			if herr := sh.Shutdown(ctx); err == nil {
				err = herr
			}
		}
		if cerr := s.broker.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// register adds an upgraded connection to its hub, unless the service is
// shutting down.
func (s *Service) register(c *conn) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.conns.Add(1)
	s.connections.Add(1)
	c.hub.register(c)
	s.keepAliveOnce.Do(func() { go s.keepAlive() })
	return true
}

func (s *Service) isClosed() bool { return s.shutdown.Load() }

func (s *Service) eachConn(f func(*conn)) {
	s.hubs.Range(func(_ string, h *Hub) bool {
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
			s.eachConn(func(c *conn) {
				if c.isDetached() {
					return // the recovery window runs instead
				}
				if c.lastSeen.Load() < deadline {
					c.close(DisconnectPingTimeout)
				} else {
					c.send(pingFrame)
				}
			})
		}
	}
}
