// Package natsbroker is a pubsub.Broker on NATS: it makes several
// processes, each with its own pubsub.Service, one Web PubSub service.
//
// Each node subscribes to the subjects of the hubs, groups and users it
// holds connections of, and to its own; every subject of a service is under
// one prefix, so services can share a NATS. Messages for a node, of all its
// subjects, are handled one at a time in the order NATS delivered them,
// which keeps the order of each publisher's operations.
//
// While NATS is unreachable the node goes on serving its own connections:
// sends made on it reach them and nobody else, operations that need another
// node fail with pubsub.ErrNodeUnavailable, and the node reconnects and
// resubscribes by itself. See docs/scale-out.md.
package natsbroker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/nats-io/nats.go"
)

// DefaultPrefix is the first token of a service's subjects unless
// Options.Prefix says otherwise.
const DefaultPrefix = "webpubsub"

// Options configure a Broker. The zero value connects to nats.DefaultURL.
type Options struct {
	// URL is the NATS server (or a comma-separated list), when Conn is nil.
	URL string
	// Conn, when set, is used instead of a connection of the broker's own,
	// and is not closed by it. Give it nats.ReconnectBufSize(-1), or sends
	// made while NATS is away are held until it is back instead of reaching
	// this node's connections at once, nats.MaxReconnects(-1), a short
	// nats.PingInterval, and an error handler of its own: the broker's
	// logging of dropped messages is on its own connection only (Stats
	// counts them either way).
	Conn *nats.Conn
	// Prefix is the first token of every subject of the service. Default
	// DefaultPrefix.
	Prefix string
	// NodeID names this node in the cluster and in its connection ids: 1 to
	// 32 of [A-Za-z0-9-], unique among the nodes. Default: random.
	NodeID string
	// QueueLength bounds the messages received and not yet applied; past
	// it NATS drops messages for this node (a slow consumer, logged and
	// counted). Default 1<<18.
	QueueLength int
	// Logger receives the broker's logs. Nil: slog.Default().
	Logger *slog.Logger
}

// Stats are counters of a Broker.
type Stats struct {
	Published, Received, Dropped, Errors int64
}

// Broker is a pubsub.Broker on NATS.
type Broker struct {
	nc     *nats.Conn
	own    bool // nc is the broker's to close
	prefix string
	node   string
	log    *slog.Logger
	ch     chan *nats.Msg
	// barriers are drain's markers in ch, each closed when it is reached.
	barriers sync.Map
	// applier is the id of the goroutine that applies ch: it does not
	// drain (it would wait for itself).
	applier atomic.Uint64

	mu   sync.Mutex
	subs map[string]*nats.Subscription

	started atomic.Bool
	stop    chan struct{}
	done    chan struct{}

	published, received, errs atomic.Int64
}

var _ pubsub.Broker = (*Broker)(nil)

var (
	tokenPattern  = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,32}$`)
)

// New connects to NATS (unless Options.Conn is given) and returns a broker
// for Config.Broker.
func New(opts Options) (*Broker, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !tokenPattern.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("natsbroker: prefix %q: want one subject token of [A-Za-z0-9_-]", opts.Prefix)
	}
	if opts.NodeID == "" {
		opts.NodeID = randomID()
	}
	if !nodeIDPattern.MatchString(opts.NodeID) {
		return nil, fmt.Errorf("natsbroker: node id %q: want 1 to 32 of [A-Za-z0-9-]", opts.NodeID)
	}
	if opts.QueueLength <= 0 {
		opts.QueueLength = 1 << 18
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	b := &Broker{
		nc:     opts.Conn,
		prefix: opts.Prefix + ".",
		node:   opts.NodeID,
		log:    opts.Logger,
		ch:     make(chan *nats.Msg, opts.QueueLength),
		subs:   make(map[string]*nats.Subscription),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if b.nc == nil {
		url := opts.URL
		if url == "" {
			url = nats.DefaultURL
		}
		nc, err := nats.Connect(url,
			nats.Name("webpubsub node "+opts.NodeID),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(250*time.Millisecond),
			nats.ReconnectBufSize(-1), // while NATS is away, a send reaches this node's connections at once
			nats.RetryOnFailedConnect(true),
			// A NATS that hangs without closing the connection is noticed
			// within about 3 s (nats.go's default is minutes), after which
			// this node serves its own connections as when NATS is away.
			nats.PingInterval(time.Second),
			nats.MaxPingsOutstanding(3),
			nats.ErrorHandler(b.asyncError),
			nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
				if nc.IsClosed() {
					return // closed by the broker
				}
				b.log.Warn("NATS connection lost; serving this node's connections", "node", b.node, "err", err)
			}),
			nats.ConnectHandler(func(nc *nats.Conn) { // a start while NATS was away
				b.log.Info("NATS connection up", "node", b.node, "server", nc.ConnectedUrlRedacted())
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				b.log.Info("NATS connection back", "node", b.node, "server", nc.ConnectedUrlRedacted())
			}),
		)
		if err != nil {
			return nil, fmt.Errorf("natsbroker: %w", err)
		}
		b.nc, b.own = nc, true
	}
	return b, nil
}

func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b [8]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

// asyncError counts what NATS reports out of band: a full queue drops
// messages for this node.
func (b *Broker) asyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) {
		b.log.Error("NATS dropped messages for this node: its queue is full", "node", b.node, "subject", sub.Subject)
		return
	}
	b.errs.Add(1)
	b.log.Error("NATS error", "node", b.node, "err", err)
}

// NodeID implements pubsub.Broker.
func (b *Broker) NodeID() string { return b.node }

// Start implements pubsub.Broker: one goroutine applies every message for
// this node, in order.
func (b *Broker) Start(receive func(subject string, data []byte, reply func([]byte))) error {
	if b.started.Swap(true) {
		return errors.New("natsbroker: started twice")
	}
	go func() {
		defer close(b.done)
		b.applier.Store(goroutineID())
		for {
			select {
			case <-b.stop:
				return
			case m := <-b.ch:
				if done, ok := b.barriers.LoadAndDelete(m); ok {
					close(done.(chan struct{}))
					continue
				}
				b.received.Add(1)
				var reply func([]byte)
				if m.Reply != "" {
					reply = func(data []byte) {
						if err := m.Respond(data); err != nil {
							b.errs.Add(1)
						}
					}
				}
				receive(m.Subject[len(b.prefix):], m.Data, reply)
			}
		}
	}()
	return nil
}

// Subscribe implements pubsub.Broker.
func (b *Broker) Subscribe(subject string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[subject]; ok {
		return nil
	}
	sub, err := b.nc.ChanSubscribe(b.prefix+subject, b.ch)
	if err != nil {
		b.errs.Add(1)
		return err
	}
	b.subs[subject] = sub
	return nil
}

// Unsubscribe implements pubsub.Broker.
func (b *Broker) Unsubscribe(subject string) error {
	b.mu.Lock()
	sub, ok := b.subs[subject]
	delete(b.subs, subject)
	b.mu.Unlock()
	if !ok {
		return nil
	}
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		b.errs.Add(1)
		return err
	}
	return nil
}

// Publish implements pubsub.Broker.
func (b *Broker) Publish(subject string, data []byte) error {
	if err := b.nc.Publish(b.prefix+subject, data); err != nil {
		b.errs.Add(1)
		b.drain()
		return err
	}
	b.published.Add(1)
	return nil
}

// drain waits, up to a second, until the messages received before now are
// applied: the caller then applies a refused publish itself, and must not
// overtake them (a member of this node would see a message before earlier
// ones). Bounded, because the caller may be the applying goroutine itself.
func (b *Broker) drain() {
	if goroutineID() == b.applier.Load() {
		return // what came before is applied after it returns, whatever it does
	}
	m := &nats.Msg{}
	done := make(chan struct{})
	b.barriers.Store(m, done)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case b.ch <- m:
	case <-t.C:
		b.barriers.Delete(m)
		return
	}
	select {
	case <-done:
	case <-t.C:
	case <-b.stop:
	}
}

// goroutineID is the calling goroutine's id, from its stack header
// ("goroutine N ["). Only drain, on a refused publish, asks for it.
func goroutineID() uint64 {
	var buf [32]byte
	n := runtime.Stack(buf[:], false)
	f := bytes.Fields(buf[:n])
	if len(f) < 2 {
		return 0
	}
	id, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return id
}

// Request implements pubsub.Broker, with an inbox of its own per request
// so that a survey can collect one reply from every node.
func (b *Broker) Request(subject string, data []byte, onReply func([]byte, error)) (stop func(), err error) {
	inbox := b.nc.NewInbox()
	sub, err := b.nc.Subscribe(inbox, func(m *nats.Msg) {
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			onReply(nil, pubsub.ErrNoResponders)
			return
		}
		onReply(m.Data, nil)
	})
	if err != nil {
		b.errs.Add(1)
		return nil, err
	}
	if err := b.nc.PublishMsg(&nats.Msg{Subject: b.prefix + subject, Reply: inbox, Data: data}); err != nil {
		_ = sub.Unsubscribe()
		b.errs.Add(1)
		return nil, err
	}
	b.published.Add(1)
	return func() { _ = sub.Unsubscribe() }, nil
}

// Flush implements pubsub.Broker.
func (b *Broker) Flush(ctx context.Context) error {
	if !b.nc.IsConnected() {
		return nats.ErrConnectionReconnecting // nothing reaches NATS now: no use waiting
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return b.nc.FlushWithContext(ctx)
}

// Close implements pubsub.Broker: it stops applying messages and closes
// the NATS connection if it is the broker's own.
func (b *Broker) Close() error {
	b.mu.Lock()
	for subject, sub := range b.subs {
		_ = sub.Unsubscribe()
		delete(b.subs, subject)
	}
	b.mu.Unlock()
	close(b.stop)
	if b.started.Load() {
		<-b.done
	}
	if b.own {
		b.nc.Close()
	}
	return nil
}

// Connected reports whether the broker is connected to NATS now: a
// node's readiness to answer as part of the cluster.
func (b *Broker) Connected() bool { return b.nc.IsConnected() }

// Stats returns the broker's counters: messages published and received,
// messages dropped for this node because its queue was full (over its
// current subscriptions), and errors.
func (b *Broker) Stats() Stats {
	st := Stats{
		Published: b.published.Load(),
		Received:  b.received.Load(),
		Errors:    b.errs.Load(),
	}
	b.mu.Lock()
	for _, sub := range b.subs {
		if n, err := sub.Dropped(); err == nil {
			st.Dropped += int64(n)
		}
	}
	b.mu.Unlock()
	return st
}
