package pubsub

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNodeUnavailable: a node of the service that an operation needs did
// not answer within Config.ClusterTimeout, or the broker is unreachable.
// Nothing is known of the operation's outcome on that node.
var ErrNodeUnavailable = errors.New("pubsub: a node of the service did not answer in time")

// Defaults of the cluster.
const (
	DefaultClusterTimeout = 2 * time.Second
	heartbeatInterval     = time.Second
	helloWait             = 250 * time.Millisecond // how long a new node listens for its peers
)

// A node id names a node in its connections' ids and in subjects.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,32}$`)

// How each operation crosses the cluster:
//   - publish: to the subject of its target (hub, group, user, or the node
//     that a connection id names), applied by each node that receives it,
//     no answer;
//   - ask: to the node that owns the connection, which answers;
//   - survey: to every node, each of which answers; the answer is merged
//     from theirs. Surveys are the operations whose answer needs every
//     node that holds a member (lists, exists, adding a user or the
//     connections a filter selects): only the set of live nodes is known,
//     not which of them hold what.
type route uint8

const (
	routePublish route = iota
	routeAsk
	routeSurvey
)

func routeOf(o op) route {
	switch o {
	case opAddConnectionToGroup, opRemoveConnectionFromGroup, opRemoveConnectionFromAllGroups,
		opConnectionExists, opGrantPermission, opRevokePermission, opCheckPermission,
		opTakeover, opHandover:
		return routeAsk
	case opAddUserToGroup, opUserExists, opGroupExists, opListConnectionsInGroup,
		opAddConnectionsToGroups, opRemoveConnectionsFromGroups, opGroupStateSnapshot:
		return routeSurvey
	}
	return routePublish
}

// Message kinds on the broker: the first byte of every message.
const (
	msgCommand   = 'c' // a command; a Request when it wants an answer
	msgHeartbeat = 'h' // a node is alive
	msgHello     = 'H' // a node started: peers answer with their ids
	msgBye       = 'b' // a node is leaving
	msgBarrier   = 'B' // a node's request to itself: answered in turn
)

// Subjects.
const nodesSubject = "nodes" // heartbeats and surveys; every node subscribes

// A connection's subject names the node its id names, which subscribes to
// them all with a wildcard; a node the connection was handed over to
// subscribes to that one.
func connectionSubject(id string) string {
	owner, _ := ownerOf(id)
	return "c." + owner + "." + subjectKey(id)
}

func ownConnectionsSubject(node string) string { return "c." + node + ".*" }

// namedBy reports whether a connection id names this node.
func (cl *cluster) namedBy(id string) bool {
	owner, _ := ownerOf(id)
	return owner == cl.node
}

// subjectKey makes a name (hub, group, user: any characters) a subject
// token of fixed size. Two names with one key would only cost a node a
// message it filters out.
func subjectKey(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

func hubSubject(hubKey string) string          { return "h." + hubKey }
func groupSubject(hubKey, group string) string { return "g." + hubKey + "." + subjectKey(group) }
func userSubject(hubKey, user string) string   { return "u." + hubKey + "." + subjectKey(user) }
func ownerOf(connectionID string) (string, bool) {
	n, _, ok := strings.Cut(connectionID, ".")
	return n, ok && nodeIDPattern.MatchString(n)
}

// cluster is a node of a service with a Broker: it carries every command
// to the nodes it concerns and applies those it receives. The broker calls
// receive from one goroutine, in order; everything else here is guarded by
// mu or atomic.
type cluster struct {
	svc     *Service
	b       Broker
	node    string
	timeout time.Duration

	mu       sync.Mutex
	peers    map[string]time.Time // live nodes (this one included) → when last heard
	movedTo  map[string]string    // connections whose id names this node, held by another
	arrivals map[string]*arrival  // connections being handed over to this node, by id
	seen     map[string]uint64    // per node, the last of its published commands applied here

	// imu guards interest: the subjects this node subscribes to, counted,
	// so that an arriving connection and the registry can want the same
	// one. Lock order: mu, then the registry's, then imu.
	imu      sync.Mutex
	interest map[string]int

	stop    chan struct{}
	done    chan struct{}
	replies sync.WaitGroup // answers waiting for a flush

	flushes       flusher
	pubMu         sync.Mutex    // numbers and publishes a command at once
	sends         atomic.Uint64 // numbers the commands published here
	timeouts      atomic.Int64
	publishErrors atomic.Int64
}

func newCluster(s *Service, b Broker) (*cluster, error) {
	node := b.NodeID()
	if !nodeIDPattern.MatchString(node) {
		return nil, fmt.Errorf("pubsub: broker node id %q: want 1 to 32 of [A-Za-z0-9-]", node)
	}
	cl := &cluster{
		svc:      s,
		b:        b,
		node:     node,
		timeout:  s.cfg.ClusterTimeout,
		peers:    map[string]time.Time{node: time.Now()},
		movedTo:  make(map[string]string),
		arrivals: make(map[string]*arrival),
		seen:     make(map[string]uint64),
		interest: make(map[string]int),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if err := b.Start(cl.receive); err != nil {
		return nil, err
	}
	for _, sub := range []string{nodesSubject, ownConnectionsSubject(node)} {
		if err := b.Subscribe(sub); err != nil {
			return nil, err
		}
		cl.interest[sub] = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), helloWait)
	defer cancel()
	err := cl.request(ctx, nodesSubject, append([]byte{msgHello}, node...), nil, func(reply []byte) bool {
		cl.heard(string(reply))
		return true
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("the broker is unreachable; serving this node's connections", "err", err)
	}
	go cl.heartbeat()
	return cl, nil
}

// close says goodbye to the other nodes and closes the broker.
func (cl *cluster) close() error {
	close(cl.stop)
	<-cl.done
	_ = cl.b.Publish(nodesSubject, append([]byte{msgBye}, cl.node...))
	ctx, cancel := context.WithTimeout(context.Background(), cl.timeout)
	_ = cl.b.Flush(ctx)
	cancel()
	cl.flushes.mu.Lock()
	cl.flushes.closed = true // a flush under way may chain on; none begins
	cl.flushes.mu.Unlock()
	err := cl.b.Close() // no more deliveries, so no more answers begun
	cl.replies.Wait()
	return err
}

// heartbeat tells the other nodes this one is alive, and forgets those not
// heard from for three intervals.
func (cl *cluster) heartbeat() {
	defer close(cl.done)
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	beat := append([]byte{msgHeartbeat}, cl.node...)
	for {
		select {
		case <-cl.stop:
			return
		case now := <-t.C:
			_ = cl.b.Publish(nodesSubject, beat)
			cl.mu.Lock()
			for n, at := range cl.peers {
				if n != cl.node && now.Sub(at) > 3*heartbeatInterval {
					cl.gone(n)
				}
			}
			cl.peers[cl.node] = now
			cl.mu.Unlock()
		}
	}
}

// gone forgets a node, under mu, and the connections handed over to it:
// they died with it, and this node answers "not found" for their ids again.
func (cl *cluster) gone(node string) {
	delete(cl.peers, node)
	for id, to := range cl.movedTo {
		if to == node {
			delete(cl.movedTo, id)
		}
	}
}

// hasPeers reports whether another node was heard from lately.
func (cl *cluster) hasPeers() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return len(cl.peers) > 1
}

func (cl *cluster) heard(node string) {
	if !nodeIDPattern.MatchString(node) {
		return
	}
	cl.mu.Lock()
	_, known := cl.peers[node]
	cl.peers[node] = time.Now()
	cl.mu.Unlock()
	if !known && node != cl.node {
		// Either side may have forgotten the other (its deliveries stalled,
		// or its timer fired first): each tells the other what it holds.
		cl.reannounce(node)
		_ = cl.b.Publish(nodesSubject, append([]byte{msgHello}, cl.node...))
	}
}

// reannounce tells a node heard from again (new, or back after its
// heartbeats stopped: it forgot this one's) which of its connections this
// node holds, since they were handed over here.
func (cl *cluster) reannounce(node string) {
	cl.svc.eachConn(func(c *conn) {
		if owner, _ := ownerOf(c.id); owner != node || c.movedFrom == "" {
			return
		}
		// Under c.mu, so that it is not told after the connection's release
		// said it is gone.
		c.mu.Lock()
		if c.state != stateReleased {
			_ = cl.b.Publish(connectionSubject(c.id), encodeCommand(&command{Op: opForget, Hub: c.hub.name, Target: c.id, Node: cl.node}))
		}
		c.mu.Unlock()
	})
}

// livePeers returns the nodes heard from lately, this one included.
func (cl *cluster) livePeers() map[string]bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := make(map[string]bool, len(cl.peers))
	for n := range cl.peers {
		out[n] = false
	}
	return out
}

// receive is the broker's delivery of one message to this node.
func (cl *cluster) receive(_ string, data []byte, reply func([]byte)) {
	if len(data) == 0 {
		return
	}
	switch data[0] {
	case msgHeartbeat:
		cl.heard(string(data[1:]))
	case msgHello:
		sender := string(data[1:])
		cl.heard(sender)
		if sender != cl.node && nodeIDPattern.MatchString(sender) {
			cl.reannounce(sender) // it may have forgotten this node's holdings
		}
		if reply != nil {
			reply([]byte(cl.node))
		}
	case msgBye:
		cl.mu.Lock()
		cl.gone(string(data[1:]))
		cl.mu.Unlock()
	case msgBarrier:
		if reply != nil {
			reply([]byte{msgBarrier})
		}
	case msgCommand:
		var cmd command
		if err := json.Unmarshal(data[1:], &cmd); err != nil {
			cl.svc.log.Error("dropping a broker message that is not a command", "err", err)
			return
		}
		if (cmd.Op == opTakeover || cmd.Op == opHandover) && cmd.Node == cl.node {
			return // its own request, on a connection it takes over
		}
		if cl.arriving(&cmd, reply) && targetsConnection(cmd.Op) {
			return // answered once the connection has arrived
		}
		if targetsConnection(cmd.Op) && !cl.answersFor(&cmd) {
			return // the node that holds it answers
		}
		r := cl.svc.exec(&cmd)
		if reply == nil {
			return
		}
		r.Node = cl.node
		answer, _ := json.Marshal(&r)
		if !joins(cmd.Op) {
			reply(answer)
			return
		}
		// The subscriptions a join made must reach the broker before the
		// caller, told it is done, sends to the group.
		cl.replies.Add(1)
		go func() {
			defer cl.replies.Done()
			ctx, cancel := context.WithTimeout(context.Background(), cl.timeout)
			defer cancel()
			_ = cl.b.Flush(ctx)
			reply(answer)
		}()
	}
}

// targetsConnection reports whether an operation is addressed to one
// connection, by its id.
func targetsConnection(o op) bool {
	return o == opSendToConnection || o == opCloseConnection || routeOf(o) == routeAsk
}

// setMoved records where a connection whose id names this node is held:
// on another node, or nowhere or here (""), when this node answers for it.
func (cl *cluster) setMoved(id, node string) {
	if owner, _ := ownerOf(id); owner != cl.node {
		return
	}
	cl.mu.Lock()
	if node == "" || node == cl.node {
		delete(cl.movedTo, id)
	} else {
		cl.movedTo[id] = node
	}
	cl.mu.Unlock()
}

// arriving records cmd as applied here (its id, for a handover's
// watermark), and queues it for each connection arriving here that it may
// concern: by id, or any of its hub's. It reports whether it queued it.
func (cl *cluster) arriving(cmd *command, reply func([]byte)) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if node, n, ok := parseCommandID(cmd.ID); ok && n > cl.seen[node] {
		cl.seen[node] = n
	}
	if len(cl.arrivals) == 0 {
		return false
	}
	if targetsConnection(cmd.Op) {
		a := cl.arrivals[cmd.Target]
		if a != nil {
			a.queue = append(a.queue, queuedCommand{cmd, reply})
		}
		return a != nil
	}
	queued := false
	for _, a := range cl.arrivals {
		if a.hub == cmd.Hub {
			a.queue = append(a.queue, queuedCommand{cmd: cmd})
			queued = true
		}
	}
	return queued
}

// parseCommandID splits a command id into its node and number.
func parseCommandID(id string) (string, uint64, bool) {
	i := strings.LastIndexByte(id, '.')
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(id[i+1:], 36, 64)
	return id[:i], n, err == nil
}

// answersFor reports whether this node applies an operation on one
// connection: it holds it, or it is the node the id names and did not hand
// it over; another node that holds it answers otherwise. A connection
// arriving here is still its previous node's to answer for: it only
// collects what is sent to it.
func (cl *cluster) answersFor(cmd *command) bool {
	id, holds := cmd.Target, false
	if h, ok := cl.svc.hubs.Load(cmd.Hub); ok {
		_, holds = h.conns.Load(id)
	}
	if owner, _ := ownerOf(id); owner != cl.node || holds {
		return holds
	}
	cl.mu.Lock()
	_, moved := cl.movedTo[id]
	cl.mu.Unlock()
	return !moved
}

// connectionGone tells the node a handed-over connection's id names that
// the connection ended, so that it answers for the id again.
func (cl *cluster) connectionGone(c *conn) { cl.tellOwner(c.hub.name, c.id, "") }

// tellOwner tells the node a connection's id names where the connection
// is now: on node, or nowhere ("").
func (cl *cluster) tellOwner(hub, id, node string) {
	if owner, _ := ownerOf(id); owner == cl.node {
		cl.setMoved(id, node)
		return
	}
	_ = cl.b.Publish(connectionSubject(id), encodeCommand(&command{Op: opForget, Hub: hub, Target: id, Node: node}))
}

// joins reports whether an operation may subscribe this node to a subject.
func joins(o op) bool {
	return o == opAddConnectionToGroup || o == opAddUserToGroup || o == opAddConnectionsToGroups
}

func encodeCommand(cmd *command) []byte {
	b, _ := json.Marshal(cmd) // nothing in a command fails to marshal
	return append([]byte{msgCommand}, b...)
}

// run carries cmd to the nodes it concerns. A Go API call returns when its
// command has reached the broker (flushed): whatever the caller does next,
// on any node, is ordered after it. A Pipelined send does not wait: the
// next one from this node is published after it, the same way.
func (cl *cluster) run(ctx context.Context, cmd *command) (result, error) {
	switch routeOf(cmd.Op) {
	case routeAsk:
		return cl.ask(ctx, cmd)
	case routeSurvey:
		return cl.survey(ctx, cmd)
	}
	if !cl.publish(cmd) || cmd.pipelined {
		return result{}, nil
	}
	if err := cl.flush(ctx); err != nil {
		if ctx.Err() != nil {
			return result{}, ctx.Err() // published; the caller stopped waiting
		}
		cl.publishErrors.Add(1)
	}
	return result{}, nil
}

// flusher shares broker flushes among concurrent callers: a caller needs a
// flush that began after its publish, and one flush serves every caller
// that published before it began. Flushes run on a goroutine of their own
// (counted in cluster.replies), so that a caller whose context ends stops
// waiting.
type flusher struct {
	mu      sync.Mutex
	running *flushRun // the flush under way
	next    *flushRun // the one to begin when it ends
	closed  bool      // the cluster closed: no more flushes
}

type flushRun struct {
	done chan struct{}
	err  error
}

func (cl *cluster) flush(ctx context.Context) error {
	f := &cl.flushes
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrServiceClosed
	}
	var run *flushRun
	if f.running == nil {
		run = &flushRun{done: make(chan struct{})}
		f.running = run
		cl.startFlush(run)
	} else {
		if f.next == nil {
			f.next = &flushRun{done: make(chan struct{})}
		}
		run = f.next // the one under way began before this caller's publish
	}
	f.mu.Unlock()
	select {
	case <-run.done:
		return run.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startFlush runs a flush, then the next one if callers wait for it; under
// flushes.mu.
func (cl *cluster) startFlush(run *flushRun) {
	cl.replies.Add(1)
	go func() {
		defer cl.replies.Done()
		ctx, cancel := context.WithTimeout(context.Background(), cl.timeout)
		run.err = cl.b.Flush(ctx)
		cancel()
		f := &cl.flushes
		f.mu.Lock()
		close(run.done)
		f.running, f.next = f.next, nil
		if f.running != nil {
			cl.startFlush(f.running)
		}
		f.mu.Unlock()
	}()
}

// publish sends cmd to the subject of its target. When the broker refuses
// it (unreachable), cmd is applied to this node's connections only, and
// publish returns false.
func (cl *cluster) publish(cmd *command) bool {
	var subject string
	switch cmd.Op {
	case opSendToAll, opCloseAll:
		subject = hubSubject(subjectKey(cmd.Hub))
	case opSendToGroup, opCloseGroup, opGroupStateUpdate:
		subject = groupSubject(subjectKey(cmd.Hub), cmd.Target)
	case opSendToUser, opCloseUser, opRemoveUserFromGroup, opRemoveUserFromAllGroups:
		subject = userSubject(subjectKey(cmd.Hub), cmd.Target)
	case opSendToConnection, opCloseConnection:
		if _, ok := ownerOf(cmd.Target); !ok {
			return false // no node's connection
		}
		subject = connectionSubject(cmd.Target)
	}
	// Numbered in the order they are published: a node that applied this
	// node's command n applied every earlier one it was sent (handover.go).
	cl.pubMu.Lock()
	cmd.ID = cl.node + "." + strconv.FormatUint(cl.sends.Add(1), 36)
	err := cl.b.Publish(subject, encodeCommand(cmd))
	cl.pubMu.Unlock()
	if err != nil {
		cl.publishErrors.Add(1)
		cl.svc.log.Warn("the broker refused a command; applying it to this node's connections only", "op", cmd.Op, "err", err)
		cl.svc.exec(cmd)
		return false
	}
	return true
}

// ask has the node that owns a connection perform cmd and answer.
func (cl *cluster) ask(ctx context.Context, cmd *command) (result, error) {
	node, ok := ownerOf(cmd.Target)
	if !ok {
		return connectionNotFound(cmd.Op), nil // no node's connection
	}
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	var r result
	answered := false
	err := cl.request(ctx, connectionSubject(cmd.Target), nil, cmd, func(b []byte) bool {
		answered = json.Unmarshal(b, &r) == nil
		return !answered
	})
	switch {
	case answered:
		return r, nil
	case errors.Is(err, ErrNoResponders): // the node is gone, and its connections with it
		return connectionNotFound(cmd.Op), nil
	case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && cl.answersFor(cmd):
		cl.publishErrors.Add(1)
		return cl.svc.exec(cmd), nil // the broker is away; this node answers for the connection
	}
	if caller.Err() != nil {
		return result{}, caller.Err() // the caller gave up: not the cluster's failure
	}
	cl.timeouts.Add(1)
	cl.mu.Lock()
	if to, moved := cl.movedTo[cmd.Target]; moved {
		node = to
	}
	cl.mu.Unlock()
	return result{}, fmt.Errorf("%w: node %s: %v", ErrNodeUnavailable, node, err)
}

// request publishes data, or cmd numbered (as publish numbers commands, in
// the same order), with a reply address, and passes each reply to onReply
// until it returns false (nil) or ctx ends (ctx's error). It returns
// ErrNoResponders when no node subscribes to subject.
func (cl *cluster) request(ctx context.Context, subject string, data []byte, cmd *command, onReply func([]byte) bool) error {
	var mu sync.Mutex
	var replies [][]byte
	var noResponders bool
	arrived := make(chan struct{}, 1)
	collect := func(b []byte, err error) {
		mu.Lock()
		if err != nil {
			noResponders = true
		} else {
			replies = append(replies, b)
		}
		mu.Unlock()
		select {
		case arrived <- struct{}{}:
		default:
		}
	}
	var stop func()
	var err error
	if cmd != nil {
		cl.pubMu.Lock()
		cmd.ID = cl.node + "." + strconv.FormatUint(cl.sends.Add(1), 36)
		stop, err = cl.b.Request(subject, encodeCommand(cmd), collect)
		cl.pubMu.Unlock()
	} else {
		stop, err = cl.b.Request(subject, data, collect)
	}
	if err != nil {
		return err
	}
	defer stop()
	for {
		mu.Lock()
		got, none := replies, noResponders
		replies = nil
		mu.Unlock()
		for _, b := range got {
			if !onReply(b) {
				return nil
			}
		}
		if none {
			return ErrNoResponders
		}
		select {
		case <-arrived:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// survey has every node perform cmd and merges their answers.
func (cl *cluster) survey(ctx context.Context, cmd *command) (result, error) {
	expect := cl.livePeers()
	waiting := len(expect)
	var rs []result
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	err := cl.request(ctx, nodesSubject, nil, cmd, func(b []byte) bool {
		var r result
		if json.Unmarshal(b, &r) != nil {
			return true
		}
		rs = append(rs, r)
		if replied, ok := expect[r.Node]; ok && !replied {
			expect[r.Node] = true
			waiting--
		}
		return waiting > 0 && !decided(cmd.Op, rs)
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && len(rs) == 0 {
		// The broker is away: this node's own answer may still decide.
		cl.publishErrors.Add(1)
		if local := []result{cl.svc.exec(cmd)}; decided(cmd.Op, local) {
			return merge(cmd.Op, local), nil
		}
	}
	if waiting > 0 && !decided(cmd.Op, rs) && caller.Err() != nil {
		return result{}, caller.Err()
	}
	if waiting > 0 && !decided(cmd.Op, rs) {
		var missing []string
		for n, replied := range expect {
			if !replied {
				missing = append(missing, n)
			}
		}
		cl.timeouts.Add(1)
		return result{}, fmt.Errorf("%w: nodes %s: %v", ErrNodeUnavailable, strings.Join(missing, ", "), err)
	}
	return merge(cmd.Op, rs), nil
}

// barrier returns once this node has applied what the broker delivered
// to it before the call: it asks itself a question, which is answered in
// its turn, after them.
func (cl *cluster) barrier(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	err := cl.request(ctx, "c."+cl.node+".barrier", []byte{msgBarrier}, nil, func([]byte) bool { return false })
	if err != nil {
		cl.timeouts.Add(1)
		return fmt.Errorf("%w: node %s: %v", ErrNodeUnavailable, cl.node, err)
	}
	return nil
}

// sync waits until this node's subscription changes have reached the
// broker, so that what is sent next to a group it joined reaches it.
func (cl *cluster) sync(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	if err := cl.b.Flush(ctx); err != nil {
		cl.publishErrors.Add(1)
	}
}

// subscribe and unsubscribe change this node's interest; they are called
// where the registry creates and deletes a hub, group or user, inside the
// map's per-key lock, so that changes of one subject are made in order.
func (cl *cluster) subscribe(subject string) {
	cl.imu.Lock()
	defer cl.imu.Unlock()
	cl.interest[subject]++
	if cl.interest[subject] > 1 {
		return
	}
	if err := cl.b.Subscribe(subject); err != nil {
		cl.svc.log.Error("the broker refused a subscription", "subject", subject, "err", err)
	}
}

func (cl *cluster) unsubscribe(subject string) {
	cl.imu.Lock()
	defer cl.imu.Unlock()
	if cl.interest[subject]--; cl.interest[subject] > 0 {
		return
	}
	delete(cl.interest, subject)
	if err := cl.b.Unsubscribe(subject); err != nil {
		cl.svc.log.Error("the broker refused to unsubscribe", "subject", subject, "err", err)
	}
}
