package pubsub

import (
	"sync"
	"sync/atomic"

	"github.com/embedwps/pubsub/protocol"
	"github.com/puzpuzpuz/xsync/v3"
)

// memberSet is the connections of one group or one user, keyed by
// connection id: one shard of the registry with its own lock, small enough
// that a user or a group of one costs a few hundred bytes. Readers never
// hold the lock while they act on the members: they take snapshot, a slice
// built once per change of the set and shared until the next.
type memberSet struct {
	mu   sync.Mutex
	m    map[string]*conn
	snap atomic.Pointer[[]*conn] // nil after a change, until the next snapshot
}

// snapshot returns the members; the slice is shared and must not be
// changed.
func (s *memberSet) snapshot() []*conn {
	if p := s.snap.Load(); p != nil {
		return *p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.snap.Load(); p != nil {
		return *p
	}
	out := make([]*conn, 0, len(s.m))
	for _, c := range s.m {
		out = append(out, c)
	}
	s.snap.Store(&out)
	return out
}

// index maps a group name or a user id to its members. A set is created by
// its first member and deleted with its last, atomically with respect to
// other adds and removes of the same key (xsync's Compute holds the key's
// bucket lock), so a concurrent join never lands in a deleted set.
//
// In a cluster, the node subscribes to a key's subject while the set exists.
type index struct {
	sets    *xsync.MapOf[string, *memberSet]
	cl      *cluster                // nil: a single node
	subject func(key string) string // the subject of a key, in a cluster
}

func newIndex(cl *cluster, subject func(key string) string) index {
	return index{sets: xsync.NewMapOf[string, *memberSet](), cl: cl, subject: subject}
}

func (x index) add(key string, c *conn) {
	x.sets.Compute(key, func(set *memberSet, loaded bool) (*memberSet, bool) {
		if !loaded {
			set = &memberSet{m: make(map[string]*conn, 1)}
			if x.cl != nil {
				x.cl.subscribe(x.subject(key))
			}
		}
		set.mu.Lock()
		set.m[c.id] = c
		set.snap.Store(nil)
		set.mu.Unlock()
		return set, false
	})
}

func (x index) remove(key string, c *conn) {
	x.sets.Compute(key, func(set *memberSet, loaded bool) (*memberSet, bool) {
		if !loaded {
			return nil, true
		}
		set.mu.Lock()
		delete(set.m, c.id)
		set.snap.Store(nil)
		empty := len(set.m) == 0
		set.mu.Unlock()
		if empty && x.cl != nil {
			x.cl.unsubscribe(x.subject(key))
		}
		return set, empty
	})
}

// members returns a snapshot of key's members, shared: not to be changed.
func (x index) members(key string) []*conn {
	set, ok := x.sets.Load(key)
	if !ok {
		return nil
	}
	return set.snapshot()
}

func validGroup(g string) error {
	if !protocol.ValidGroupName(g) {
		return ErrInvalidGroup
	}
	return nil
}

// joinGroup adds c to group, within MaxGroupsPerConnection. c.mu makes it
// atomic with c's release, so a released connection never lingers in a
// group; one being closed joins nothing more.
func (c *conn) joinGroup(group string) error { return c.join(group, true) }

// join is joinGroup; announce says whether the join is a presence event
// (not for the groups a handed-over connection brings with it).
func (c *conn) join(group string, announce bool) error {
	c.mu.Lock()
	if c.state >= stateClosing {
		c.mu.Unlock()
		return ErrConnectionNotFound
	}
	if _, in := c.groups[group]; in {
		c.mu.Unlock()
		return nil
	}
	if len(c.groups) >= c.svc.cfg.MaxGroupsPerConnection {
		c.mu.Unlock()
		return ErrTooManyGroups
	}
	if c.groups == nil {
		c.groups = make(map[string]struct{}, 1)
	}
	c.groups[group] = struct{}{}
	c.hub.groups.add(group, c)
	schedule := announce && c.announceLocked(group, true)
	c.mu.Unlock()
	if schedule {
		c.svc.schedulePresence(c)
	}
	return nil
}

// leaveGroup takes c out of group, with its state and state subscription
// there; the state's subscribers are told it is gone.
func (c *conn) leaveGroup(group string) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.mu.Lock()
	schedule := false
	var gone []stateChange
	if _, in := c.groups[group]; in {
		delete(c.groups, group)
		c.hub.groups.remove(group, c)
		schedule = c.announceLocked(group, false)
		gone = c.leaveGroupStateLocked(group)
	}
	c.mu.Unlock()
	if schedule {
		c.svc.schedulePresence(c)
	}
	c.publishGroupState(gone)
}

func (c *conn) leaveAllGroups() {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.mu.Lock()
	for g := range c.groups {
		c.hub.groups.remove(g, c)
	}
	schedule := c.announceGroupsLocked(c.groups, false)
	c.groups = nil
	gone := c.leaveAllGroupStateLocked()
	c.mu.Unlock()
	if schedule {
		c.svc.schedulePresence(c)
	}
	c.publishGroupState(gone)
}
