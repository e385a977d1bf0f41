package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Group state (spec §6.1, preview): each member of a group may keep a
// state there, an object of strings, which the group's state subscribers
// see in a snapshot when they subscribe and in an update at each change.

// Bounds of one connection's state in one group. A state past them is a
// well-formed request refused by its ack, not an invalid message.
const (
	MaxGroupStateKey   = 256     // bytes of a key (at least 1)
	MaxGroupStateValue = 1024    // bytes of a value
	MaxGroupStateTotal = 4 << 10 // bytes of every key and value together
)

// GroupStateItem is one connection's state in a group, as snapshots and
// updates carry it. State nil is a connection whose state was cleared or
// that left the group (the item has no "state"). The JSON tags are the
// service's, between its nodes; clients get AppendGroupState*'s encoding.
type GroupStateItem struct {
	ConnectionID string            `json:"c"`
	UserID       string            `json:"u,omitempty"`
	State        map[string]string `json:"s,omitempty"`
	// UpdatedAt is when the state was set or removed, in Unix milliseconds.
	UpdatedAt int64 `json:"t"`
	// Version orders the changes of one connection's state (the service's;
	// not sent to clients).
	Version uint64 `json:"v,omitempty"`
}

// ValidateGroupState checks a state against the bounds above.
func ValidateGroupState(state map[string]string) error {
	total := 0
	for k, v := range state {
		switch {
		case k == "":
			return errors.New("a state key must not be empty")
		case len(k) > MaxGroupStateKey:
			return fmt.Errorf("a state key is longer than %d bytes", MaxGroupStateKey)
		case len(v) > MaxGroupStateValue:
			return fmt.Errorf("the state value of %q is longer than %d bytes", k, MaxGroupStateValue)
		}
		total += len(k) + len(v)
	}
	if total > MaxGroupStateTotal {
		return fmt.Errorf("the state is larger than %d bytes", MaxGroupStateTotal)
	}
	return nil
}

// decodeGroupState reads setGroupState's state: absent, null or {} clear
// it (nil); otherwise an object of strings with no key twice (a map would
// silently merge them). Bounds are the caller's (ValidateGroupState).
func decodeGroupState(raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, invalid("state must be an object of strings or null")
	}
	state := map[string]string{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid("state: %v", err)
		}
		k, _ := tok.(string)
		tok, err = dec.Token()
		v, ok := tok.(string)
		if err != nil || !ok {
			return nil, invalid("state values must be strings")
		}
		if _, dup := state[k]; dup {
			return nil, invalid("duplicate state key %q", k)
		}
		state[k] = v
	}
	if len(state) == 0 {
		return nil, nil
	}
	return state, nil
}

// decodeGroupStateRequest finishes a setGroupState, subscribeGroupState or
// unsubscribeGroupState request: a valid group, and a set's state.
func decodeGroupStateRequest(req Request, raw *jsonRequest) (Request, error) {
	if raw.Group == nil || !ValidGroupName(*raw.Group) {
		return Request{}, errBadGroupName
	}
	req.Group = *raw.Group
	if req.Type == SetGroupState {
		var err error
		if req.State, err = decodeGroupState(raw.State); err != nil {
			return Request{}, err
		}
	}
	return req, nil
}

// AppendGroupStateSnapshot appends the groupStateSnapshot frame of group:
// the items of its members that have a state.
func AppendGroupStateSnapshot(dst []byte, group string, items []GroupStateItem) []byte {
	dst = append(dst, `{"type":"groupStateSnapshot","group":`...)
	dst = AppendString(dst, group)
	return appendGroupStateItems(dst, items)
}

// AppendGroupStateUpdate appends a groupStateUpdate frame, without a
// sequenceId (a reliable receiver's copy adds its own in front, as for
// messages).
func AppendGroupStateUpdate(dst []byte, group string, items []GroupStateItem) []byte {
	dst = append(dst, `{"type":"groupStateUpdate","group":`...)
	dst = AppendString(dst, group)
	return appendGroupStateItems(dst, items)
}

// appendGroupStateItems appends `,"items":[…]}`; an item's state keys are
// sorted, and userId and state are left out when absent.
func appendGroupStateItems(dst []byte, items []GroupStateItem) []byte {
	dst = append(dst, `,"items":[`...)
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"connectionId":`...)
		dst = AppendString(dst, it.ConnectionID)
		if it.UserID != "" {
			dst = append(dst, `,"userId":`...)
			dst = AppendString(dst, it.UserID)
		}
		if it.State != nil {
			dst = append(dst, `,"state":{`...)
			for j, k := range sortedKeys(it.State) {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = AppendString(dst, k)
				dst = append(dst, ':')
				dst = AppendString(dst, it.State[k])
			}
			dst = append(dst, '}')
		}
		dst = append(dst, `,"updatedAt":`...)
		dst = strconv.AppendInt(dst, it.UpdatedAt, 10)
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}
