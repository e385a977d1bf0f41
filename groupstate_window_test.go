package pubsub_test

import (
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A reliable member whose transport dropped and that never comes back:
// when its recovery window ends, its state leaves and subscribers are told.
func TestGroupStateLeavesWhenTheRecoveryWindowEnds(t *testing.T) {
	e := newEnv(t, pubsub.Config{RecoveryWindow: 200 * time.Millisecond})
	proxy := wstest.NewProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	c := wstest.Dial(t, proxy.URL(e.url(pubsub.TokenOptions{UserID: "r", Roles: allRoles, Groups: []string{"room"}})), nil, reliableJSON)
	id := c.NextJSON()["connectionId"].(string)
	sub := e.member("s", "room")
	sub.Send(`{"type":"subscribeGroupState","group":"room","ackId":1}`)
	sub.ExpectAck(1, "")
	sub.stateFrame(t, "groupStateSnapshot", "room")
	c.Send(`{"type":"setGroupState","group":"room","state":{"k":"v"},"ackId":1}`)
	c.ExpectAck(1, "")
	sub.update(t, "room", id, "r", map[string]string{"k": "v"})
	proxy.Drop()
	sub.update(t, "room", id, "r", nil) // when the window ends
	if items, _ := snapshotOf(t, e, "room"); len(items) != 0 {
		t.Fatalf("state after the window %v", items)
	}
}
