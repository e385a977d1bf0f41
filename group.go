package pubsub

import (
	"sync"

	"github.com/embedwps/pubsub/protocol"
	"github.com/puzpuzpuz/xsync/v3"
)

// memberSet is the connections of one group or one user, keyed by
// connection id: one shard of the registry with its own lock, small enough
// that a user or a group of one costs a few hundred bytes.
type memberSet struct {
	mu sync.RWMutex
	m  map[string]*conn
}

func (s *memberSet) each(f func(*conn)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, c := range s.m {
		f(c)
	}
}

// index maps a group name or a user id to its members. A set is created by
// its first member and deleted with its last, atomically with respect to
// other adds and removes of the same key (xsync's Compute holds the key's
// bucket lock), so a concurrent join never lands in a deleted set.
type index struct {
	sets *xsync.MapOf[string, *memberSet]
}

func newIndex() index { return index{sets: xsync.NewMapOf[string, *memberSet]()} }

func (x index) add(key string, c *conn) {
	x.sets.Compute(key, func(set *memberSet, loaded bool) (*memberSet, bool) {
		if !loaded {
			set = &memberSet{m: make(map[string]*conn, 1)}
		}
		set.mu.Lock()
		set.m[c.id] = c
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
		empty := len(set.m) == 0
		set.mu.Unlock()
		return set, empty
	})
}

// each calls f for every member of key.
func (x index) each(key string, f func(*conn)) {
	set, ok := x.sets.Load(key)
	if !ok {
		return
	}
	set.each(f)
}

func (x index) exists(key string) bool {
	_, ok := x.sets.Load(key)
	return ok
}

// members returns a snapshot of key's members.
func (x index) members(key string) []*conn {
	var out []*conn
	x.each(key, func(c *conn) { out = append(out, c) })
	return out
}

func validGroup(g string) error {
	if !protocol.ValidGroupName(g) {
		return ErrInvalidGroup
	}
	return nil
}

// joinGroup adds c to group. c.mu makes it atomic with c's unregistration, so
// a closed connection never lingers in a group.
func (h *Hub) joinGroup(c *conn, group string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return false
	}
	if _, in := c.groups[group]; !in {
		if c.groups == nil {
			c.groups = make(map[string]struct{}, 1)
		}
		c.groups[group] = struct{}{}
		h.groups.add(group, c)
	}
	return true
}

func (h *Hub) leaveGroup(c *conn, group string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, in := c.groups[group]; in {
		delete(c.groups, group)
		h.groups.remove(group, c)
	}
}

func (h *Hub) leaveAllGroups(c *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for g := range c.groups {
		h.groups.remove(g, c)
	}
	c.groups = nil
}
