package pubsub

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"

	"github.com/embedwps/pubsub/protocol"
)

// rawPublish is a simple client's webpubsub_mode=sendToGroup (client spec
// §1): each of its frames is a message to group, not a "message" event.
type rawPublish struct {
	group  string
	noEcho bool
}

// The query parameters of a simple client's mode.
const (
	queryMode   = "webpubsub_mode"
	queryGroup  = "group"
	queryNoEcho = "noEcho"
)

// parseRawPublish reads a client URL's webpubsub_mode: nil for sendEvent,
// the default (absent or empty too); an error, to answer with 400, for an
// unknown mode or a sendToGroup without one valid group or with a noEcho
// that is not a boolean. Names and booleans match case-insensitively.
func parseRawPublish(q url.Values) (*rawPublish, error) {
	modes := q[queryMode]
	if len(modes) > 1 {
		return nil, fmt.Errorf("%s must be given once", queryMode)
	}
	mode := q.Get(queryMode)
	switch {
	case mode == "" || strings.EqualFold(mode, "sendEvent"):
		return nil, nil
	case !strings.EqualFold(mode, "sendToGroup"):
		return nil, fmt.Errorf("unknown %s %q: it is sendEvent or sendToGroup", queryMode, mode)
	}
	groups := q[queryGroup]
	switch {
	case len(groups) == 0:
		return nil, fmt.Errorf("%s=sendToGroup needs the group query parameter", queryMode)
	case len(groups) > 1:
		return nil, fmt.Errorf("%s=sendToGroup takes one group", queryMode)
	case !protocol.ValidGroupName(groups[0]):
		return nil, fmt.Errorf("%s=sendToGroup: %q is not a valid group name", queryMode, groups[0])
	}
	p := &rawPublish{group: groups[0]}
	switch v := q[queryNoEcho]; {
	case len(v) == 0:
	case len(v) == 1 && strings.EqualFold(v[0], "true"):
		p.noEcho = true
	case len(v) == 1 && strings.EqualFold(v[0], "false"):
	default:
		return nil, fmt.Errorf("%s must be given once, true or false", queryNoEcho)
	}
	return p, nil
}

// forbidden is the refusal of a raw publisher without the send permission:
// the JSON ack's words, as an HTTP 403 body.
func (p *rawPublish) forbidden() string {
	return fmt.Sprintf("The client does not have permission to send to group '%s'.", p.group)
}

// publishRaw sends one frame of a raw publisher to its group, the way a
// JSON client's sendToGroup goes (conn.do): the frame's kind is the
// message's, the publisher's user its fromUserId. The permission is checked
// per frame, as it can be revoked at runtime; with no ack to refuse with,
// a frame without it closes the connection.
func (c *conn) publishRaw(binary bool, payload []byte) {
	p := c.rawPublish
	if !c.perms.allows(PermissionSendToGroup, p.group) {
		c.close(DisconnectRawSendForbidden)
		return
	}
	t := DataTypeText
	if binary {
		t = DataTypeBinary
	}
	cmd := &command{
		Op:         opSendToGroup,
		Hub:        c.hub.name,
		Target:     p.group,
		DataType:   t,
		Data:       bytes.Clone(payload), // the read buffer is reused
		FromUserID: c.userID,
	}
	if p.noEcho {
		cmd.Excluded = []string{c.id}
	}
	if err := c.svc.publishFromClient(cmd); err != nil {
		// Only a service that is shutting down refuses: it closes every
		// client itself.
		c.svc.log.Debug("raw publish dropped", "hub", c.hub.name, "connectionId", c.id, "err", err)
	}
}
