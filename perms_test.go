package pubsub_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// tryJoinAndSend asks c to join and publish to group and reports what the
// acks said.
func tryJoinAndSend(t *testing.T, c *wstest.Client, ack *int, group string) (join, send bool) {
	t.Helper()
	*ack++
	c.Send(fmt.Sprintf(`{"type":"joinGroup","group":%q,"ackId":%d}`, group, *ack))
	join = ackOK(t, c, *ack)
	*ack++
	c.Send(fmt.Sprintf(`{"type":"sendToGroup","group":%q,"ackId":%d,"noEcho":true,"dataType":"text","data":"x"}`, group, *ack))
	send = ackOK(t, c, *ack)
	return join, send
}

func ackOK(t *testing.T, c *wstest.Client, ackID int) bool {
	t.Helper()
	m := c.NextJSON()
	if m["type"] != "ack" || m["ackId"] != float64(ackID) {
		t.Fatalf("want ack %d, got %v", ackID, m)
	}
	if m["success"] == true {
		return true
	}
	if e := m["error"].(map[string]any); e["name"] != "Forbidden" {
		t.Fatalf("unexpected ack error %v", e)
	}
	return false
}

func TestTokenRoles(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	cases := []struct {
		roles []string
		group string
		join  bool
		send  bool
	}{
		{nil, "room", false, false},
		{[]string{"webpubsub.joinLeaveGroup"}, "anything", true, false},
		{[]string{"webpubsub.sendToGroup"}, "anything", false, true},
		{[]string{"webpubsub.joinLeaveGroup.room1"}, "room1", true, false},
		{[]string{"webpubsub.joinLeaveGroup.room1"}, "room2", false, false},
		{[]string{"webpubsub.joinLeaveGroup.room1"}, "ROOM1", false, false}, // case-sensitive
		{[]string{"webpubsub.sendToGroup.a.b.c"}, "a.b.c", false, true},     // dots belong to the group
		{[]string{"webpubsub.joinLeaveGroups.chat-*", "webpubsub.sendToGroups.chat-*"}, "chat-1", true, true},
		{[]string{"webpubsub.joinLeaveGroups.chat-*"}, "chat.1", false, false},
		{[]string{"webpubsub.joinLeaveGroups.clientA.*"}, "clientA.alpha", true, false},
		{[]string{"webpubsub.joinLeaveGroups.clientA.*"}, "clientA.alpha.room1", false, false},
		{[]string{"webpubsub.joinLeaveGroups.clientA.**"}, "clientA.alpha.room1", true, false},
		{[]string{"webpubsub.sendToGroups.clientA.rooms.?1"}, "clientA.rooms.a1", false, true},
		{[]string{"webpubsub.sendToGroups.clientA.rooms.?1"}, "clientA.rooms.ab1", false, false},
		{[]string{`webpubsub.sendToGroups.literal\*star`}, "literal*star", false, true},
		{[]string{`webpubsub.sendToGroups.literal\*star`}, "literalXstar", false, false},
		{[]string{"not.a.webpubsub.role"}, "room", false, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%v on %s", tc.roles, tc.group), func(t *testing.T) {
			c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: tc.roles}))
			ack := 0
			join, send := tryJoinAndSend(t, c, &ack, tc.group)
			if join != tc.join || send != tc.send {
				t.Fatalf("join %v send %v, want join %v send %v", join, send, tc.join, tc.send)
			}
		})
	}
	t.Run("too many stars is refused at connect", func(t *testing.T) {
		u := e.url(pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroups.a*b*c*d*e*f*g"}})
		if got := wstest.HandshakeStatus(t, u, nil); got != 400 {
			t.Fatalf("status %d, want 400", got)
		}
	})
}

func TestRuntimePermissions(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: []string{"webpubsub.joinLeaveGroups.team-*"}}))
	ctx := t.Context()
	ack := 0
	check := func(perm pubsub.Permission, group string, want bool) {
		t.Helper()
		got, err := e.hub.CheckPermission(ctx, id, perm, group)
		if err != nil || got != want {
			t.Fatalf("CheckPermission(%v, %q) = %v, %v; want %v", perm, group, got, err, want)
		}
	}

	check(pubsub.PermissionSendToGroup, "g", false)
	if err := e.hub.GrantPermission(ctx, id, pubsub.PermissionSendToGroup, "g"); err != nil {
		t.Fatal(err)
	}
	check(pubsub.PermissionSendToGroup, "g", true)
	check(pubsub.PermissionSendToGroup, "h", false)
	if join, send := tryJoinAndSend(t, c, &ack, "g"); join || !send {
		t.Fatalf("after grant: join %v send %v", join, send)
	}

	// Revoking a literal group denies it even where a wildcard role allows it.
	check(pubsub.PermissionJoinLeaveGroup, "team-red", true)
	if err := e.hub.RevokePermission(ctx, id, pubsub.PermissionJoinLeaveGroup, "team-red"); err != nil {
		t.Fatal(err)
	}
	check(pubsub.PermissionJoinLeaveGroup, "team-red", false)
	check(pubsub.PermissionJoinLeaveGroup, "team-blue", true)
	if join, _ := tryJoinAndSend(t, c, &ack, "team-red"); join {
		t.Fatal("joined a revoked group")
	}
	if join, _ := tryJoinAndSend(t, c, &ack, "team-blue"); !join {
		t.Fatal("could not join a group of the wildcard role")
	}

	// An empty group grants or revokes every group.
	if err := e.hub.GrantPermission(ctx, id, pubsub.PermissionJoinLeaveGroup, ""); err != nil {
		t.Fatal(err)
	}
	check(pubsub.PermissionJoinLeaveGroup, "", true)
	check(pubsub.PermissionJoinLeaveGroup, "team-red", true)
	if err := e.hub.RevokePermission(ctx, id, pubsub.PermissionJoinLeaveGroup, ""); err != nil {
		t.Fatal(err)
	}
	check(pubsub.PermissionJoinLeaveGroup, "team-blue", false)
	// Revoking does not remove membership.
	if ok, _ := e.hub.GroupExists(ctx, "team-blue"); !ok {
		t.Fatal("revoking removed the membership")
	}

	if err := e.hub.GrantPermission(ctx, "no-such-connection", pubsub.PermissionSendToGroup, "g"); !errors.Is(err, pubsub.ErrConnectionNotFound) {
		t.Fatalf("grant on a missing connection: %v", err)
	}
	if _, err := e.hub.CheckPermission(ctx, id, pubsub.Permission(9), "g"); !errors.Is(err, pubsub.ErrInvalidPermission) {
		t.Fatalf("check of an unknown permission: %v", err)
	}
	if p, err := pubsub.ParsePermission("SendToGroup"); err != nil || p != pubsub.PermissionSendToGroup {
		t.Fatalf("ParsePermission: %v %v", p, err)
	}
	if _, err := pubsub.ParsePermission("admin"); !errors.Is(err, pubsub.ErrInvalidPermission) {
		t.Fatalf("ParsePermission(admin): %v", err)
	}
}

func TestGroupMembershipNeedsNoRole(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	// Joined by token, a client receives the group's messages without a role.
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Groups: []string{"news"}}))
	if err := e.hub.SendToGroup(t.Context(), "news", pubsub.TextMessage("headline")); err != nil {
		t.Fatal(err)
	}
	if m := c.NextJSON(); m["group"] != "news" || m["data"] != "headline" {
		t.Fatalf("got %v", m)
	}
	// Membership alone never grants publishing.
	c.Send(`{"type":"sendToGroup","group":"news","ackId":1,"dataType":"text","data":"x"}`)
	c.ExpectAck(1, "Forbidden")
}
