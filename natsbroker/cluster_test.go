package natsbroker_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// spread connects users over the nodes: alice on 0 and 1, bob on 1 and 2,
// carol on 2, dave (anonymous groups aside) on 0. Groups: room has
// alice@0, bob@2, carol@2; lobby has bob@1.
type spread struct {
	nodes                                     []*node
	alice0, alice1, bob1, bob2, carol2, dave0 *client
	all                                       []*client
}

func newSpread(t *testing.T, nodes []*node) *spread {
	s := &spread{nodes: nodes}
	s.alice0 = nodes[0].dial("alice", "room")
	s.alice1 = nodes[1].dial("alice")
	s.bob1 = nodes[1].dial("bob", "lobby")
	s.bob2 = nodes[2].dial("bob", "room")
	s.carol2 = nodes[2].dial("carol", "room")
	s.dave0 = nodes[0].dial("dave")
	s.all = []*client{s.alice0, s.alice1, s.bob1, s.bob2, s.carol2, s.dave0}
	return s
}

// expect ends a round: a marker to everyone, then each client must have
// got exactly want[client] before it, in order.
func (s *spread) expect(t *testing.T, round string, want map[*client][]string) {
	t.Helper()
	s.expectAfter(t, s.nodes[rand.IntN(len(s.nodes))], round, want)
}

// expectAfter is expect with the marker sent from n: after a client's send
// on n, whose publish may still be on its way to NATS when its ack is
// written, a marker from another node could pass it.
func (s *spread) expectAfter(t *testing.T, n *node, round string, want map[*client][]string) {
	t.Helper()
	marker := "end of " + round
	must(t, n.hub.SendToAll(context.Background(), text(marker)))
	for _, c := range s.all {
		got := c.messagesUntil(t, marker)
		if !slices.Equal(got, want[c]) {
			t.Errorf("%s: %s@%s got %q, want %q", round, c.user, c.node.id, got, want[c])
		}
	}
}

func (s *spread) random() *node { return s.nodes[rand.IntN(len(s.nodes))] }

// Every send of the Go API, made on any node, reaches the connections it
// addresses on every node, once each, and no other.
func TestSendsReachEveryNode(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	ctx := context.Background()
	all := func(m string) map[*client][]string {
		out := map[*client][]string{}
		for _, c := range s.all {
			out[c] = []string{m}
		}
		return out
	}

	must(t, s.random().hub.SendToAll(ctx, text("to all")))
	s.expect(t, "all", all("to all"))

	w := all("all but two")
	delete(w, s.bob2)
	delete(w, s.dave0)
	must(t, s.random().hub.SendToAll(ctx, text("all but two"), pubsub.Excluding(s.bob2.id, s.dave0.id)))
	s.expect(t, "excluded", w)

	must(t, s.nodes[1].hub.SendToGroup(ctx, "room", text("to room")))
	s.expect(t, "group", map[*client][]string{s.alice0: {"to room"}, s.bob2: {"to room"}, s.carol2: {"to room"}})

	must(t, s.nodes[0].hub.SendToGroup(ctx, "room", text("room but carol"), pubsub.Excluding(s.carol2.id)))
	s.expect(t, "group excluded", map[*client][]string{s.alice0: {"room but carol"}, s.bob2: {"room but carol"}})

	must(t, s.nodes[2].hub.SendToUser(ctx, "alice", text("to alice")))
	s.expect(t, "user", map[*client][]string{s.alice0: {"to alice"}, s.alice1: {"to alice"}})

	must(t, s.nodes[0].hub.SendToConnection(ctx, s.bob2.id, text("to bob2")))
	must(t, s.nodes[2].hub.SendToConnection(ctx, s.alice0.id, text("to alice0")))
	s.expect(t, "connection", map[*client][]string{s.bob2: {"to bob2"}, s.alice0: {"to alice0"}})

	must(t, s.nodes[1].hub.SendToAll(ctx, text("filtered"), pubsub.WithFilter("userId eq 'bob' or 'room' in groups")))
	s.expect(t, "filter", map[*client][]string{s.alice0: {"filtered"}, s.bob1: {"filtered"}, s.bob2: {"filtered"}, s.carol2: {"filtered"}})

	must(t, s.nodes[2].hub.SendToGroup(ctx, "room", text("ttl"), pubsub.WithTTL(time.Minute)))
	s.expect(t, "ttl", map[*client][]string{s.alice0: {"ttl"}, s.bob2: {"ttl"}, s.carol2: {"ttl"}})

	if err := s.random().hub.SendToAll(ctx, text("x"), pubsub.WithFilter("userId eq")); !errors.Is(err, pubsub.ErrInvalidFilter) {
		t.Fatalf("an invalid filter: %v", err)
	}
	// Sending to nobody is not an error, on any node.
	must(t, s.random().hub.SendToGroup(ctx, "empty", text("nobody")))
	must(t, s.random().hub.SendToUser(ctx, "nobody", text("nobody")))
	must(t, s.random().hub.SendToConnection(ctx, "node9.missing", text("nobody")))
	s.expect(t, "nobody", nil)
}

// A client's sendToGroup reaches the group's members on every node, with
// its fromUserId, and not the sender itself when it asked for noEcho.
func TestClientSendToGroupReachesEveryNode(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	s.alice0.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"hello","ackId":1}`)
	// The sender's own copy comes back through NATS and may pass its ack.
	var echo map[string]any
	for acked := false; !acked || echo == nil; {
		switch m := s.alice0.NextJSON(); m["type"] {
		case "ack":
			if m["ackId"] != float64(1) || m["success"] != true {
				t.Fatalf("ack %v", m)
			}
			acked = true
		case "message":
			echo = m
		}
	}
	for _, c := range []*client{s.alice0, s.bob2, s.carol2} {
		m := echo
		if c != s.alice0 {
			m = c.nextMessage(t)
		}
		if m["from"] != "group" || m["group"] != "room" || m["fromUserId"] != "alice" || m["data"] != "hello" {
			t.Fatalf("%s@%s got %v", c.user, c.node.id, m)
		}
	}
	s.carol2.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"quiet","noEcho":true,"ackId":2}`)
	s.carol2.ExpectAck(2, "")
	s.expectAfter(t, s.nodes[2], "noEcho", map[*client][]string{s.alice0: {"quiet"}, s.bob2: {"quiet"}})
}

// A raw publisher's frames (webpubsub_mode=sendToGroup) go the way a JSON
// client's sendToGroup goes: to the group's members on every node, text as
// text and binary as binary, with its fromUserId, once each.
func TestRawPublisherReachesEveryNode(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	u := s.nodes[1].url(pubsub.TokenOptions{UserID: "raw", Roles: []string{"webpubsub.sendToGroup.room"}})
	pub := wstest.Dial(t, u+"&webpubsub_mode=sendToGroup&group=room", nil)
	pub.Send("raw hello")
	pub.SendBinary([]byte{1, 2})
	for _, c := range []*client{s.alice0, s.bob2, s.carol2} {
		for _, want := range []map[string]any{
			{"type": "message", "from": "group", "group": "room", "fromUserId": "raw", "dataType": "text", "data": "raw hello"},
			{"type": "message", "from": "group", "group": "room", "fromUserId": "raw", "dataType": "binary", "data": "AQI="},
		} {
			if m := c.nextMessage(t); !reflect.DeepEqual(m, want) {
				t.Fatalf("%s@%s got %v, want %v", c.user, c.node.id, m, want)
			}
		}
	}
	s.expect(t, "raw", nil)
}

// Membership operations, questions and permissions on connections,
// users and groups held by other nodes answer as one process would.
func TestOperationsOnOtherNodes(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	ctx := context.Background()
	n0, n1, n2 := s.nodes[0].hub, s.nodes[1].hub, s.nodes[2].hub

	exists := func(f func(context.Context, string) (bool, error), arg string) bool {
		t.Helper()
		ok, err := f(ctx, arg)
		must(t, err)
		return ok
	}
	if !exists(n0.ConnectionExists, s.carol2.id) || exists(n0.ConnectionExists, "node2.missing") || exists(n1.ConnectionExists, "node7.gone") {
		t.Fatal("ConnectionExists")
	}
	if !exists(n1.UserExists, "carol") || exists(n1.UserExists, "erin") {
		t.Fatal("UserExists")
	}
	if !exists(n0.GroupExists, "lobby") || exists(n2.GroupExists, "nothing") {
		t.Fatal("GroupExists")
	}
	members, err := n1.ListConnectionsInGroup(ctx, "room")
	must(t, err)
	want := []pubsub.GroupMember{{ConnectionID: s.alice0.id, UserID: "alice"}, {ConnectionID: s.bob2.id, UserID: "bob"}, {ConnectionID: s.carol2.id, UserID: "carol"}}
	slices.SortFunc(want, func(a, b pubsub.GroupMember) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	if !slices.Equal(members, want) {
		t.Fatalf("ListConnectionsInGroup = %v, want %v", members, want)
	}

	// A connection added by another node gets the group's next message.
	must(t, n0.AddConnectionToGroup(ctx, s.bob1.id, "room"))
	must(t, n1.SendToGroup(ctx, "room", text("with bob1")))
	s.expect(t, "added connection", map[*client][]string{s.alice0: {"with bob1"}, s.bob1: {"with bob1"}, s.bob2: {"with bob1"}, s.carol2: {"with bob1"}})
	must(t, n2.RemoveConnectionFromGroup(ctx, s.bob1.id, "room"))
	must(t, n2.RemoveConnectionFromGroup(ctx, "node1.missing", "room")) // not an error
	if err := n0.AddConnectionToGroup(ctx, "node1.missing", "room"); !errors.Is(err, pubsub.ErrConnectionNotFound) {
		t.Fatalf("adding a missing connection: %v", err)
	}

	// A user's connections on every node join and leave.
	must(t, n2.AddUserToGroup(ctx, "alice", "vip"))
	must(t, n1.SendToGroup(ctx, "vip", text("vip")))
	s.expect(t, "added user", map[*client][]string{s.alice0: {"vip"}, s.alice1: {"vip"}})
	if err := n0.AddUserToGroup(ctx, "erin", "vip"); !errors.Is(err, pubsub.ErrUserNotFound) {
		t.Fatalf("adding a user with no connection: %v", err)
	}
	must(t, n1.RemoveUserFromGroup(ctx, "alice", "vip"))
	if exists(n0.GroupExists, "vip") {
		t.Fatal("vip exists after its only user left it")
	}
	must(t, n0.RemoveUserFromAllGroups(ctx, "bob"))
	must(t, n0.RemoveConnectionFromAllGroups(ctx, s.carol2.id))
	s.expect(t, "left", nil)
	members, err = n2.ListConnectionsInGroup(ctx, "room")
	must(t, err)
	if len(members) != 1 || members[0].ConnectionID != s.alice0.id {
		t.Fatalf("room after the leaves: %v", members)
	}

	// Filters select over every node.
	must(t, n1.AddConnectionsToGroups(ctx, "userId ne 'alice'", "team"))
	must(t, n0.SendToGroup(ctx, "team", text("team")))
	s.expect(t, "filter add", map[*client][]string{s.bob1: {"team"}, s.bob2: {"team"}, s.carol2: {"team"}, s.dave0: {"team"}})
	must(t, n2.RemoveConnectionsFromGroups(ctx, "userId eq 'bob'", "team"))
	must(t, n1.SendToGroup(ctx, "team", text("team2")))
	s.expect(t, "filter remove", map[*client][]string{s.carol2: {"team2"}, s.dave0: {"team2"}})

	// Permissions of a connection another node holds.
	allowed := func(h *pubsub.Hub, id, group string) bool {
		t.Helper()
		ok, err := h.CheckPermission(ctx, id, pubsub.PermissionSendToGroup, group)
		must(t, err)
		return ok
	}
	if !allowed(n0, s.carol2.id, "room") {
		t.Fatal("carol's role allows sending to room")
	}
	must(t, n1.RevokePermission(ctx, s.carol2.id, pubsub.PermissionSendToGroup, "room"))
	if allowed(n0, s.carol2.id, "room") {
		t.Fatal("revoked, still allowed")
	}
	s.carol2.Send(`{"type":"sendToGroup","group":"room","dataType":"text","data":"x","ackId":9}`)
	s.carol2.ExpectAck(9, "Forbidden")
	must(t, n0.GrantPermission(ctx, s.carol2.id, pubsub.PermissionSendToGroup, "room"))
	if !allowed(n1, s.carol2.id, "room") {
		t.Fatal("granted, not allowed")
	}
	if _, err := n0.CheckPermission(ctx, "node2.missing", pubsub.PermissionSendToGroup, "room"); !errors.Is(err, pubsub.ErrConnectionNotFound) {
		t.Fatalf("CheckPermission of a missing connection: %v", err)
	}

	// Closes, by connection, user, group and everyone.
	must(t, n0.CloseConnection(ctx, s.carol2.id, "bye carol"))
	if info, _ := s.carol2.ExpectClose(); info.Code != 1000 {
		t.Fatalf("carol closed with %v", info)
	}
	must(t, n2.CloseUserConnections(ctx, "alice", "bye alice"))
	s.alice0.ExpectClose()
	s.alice1.ExpectClose()
	must(t, n1.CloseAllConnections(ctx, "bye", s.dave0.id))
	s.bob1.ExpectClose()
	s.bob2.ExpectClose()
	if !exists(n1.ConnectionExists, s.dave0.id) || exists(n0.UserExists, "bob") {
		t.Fatal("after the closes")
	}
}

// The REST API of any node answers for the whole cluster.
func TestRESTOnAnyNode(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	check := func(nd *node, method, path, body string, want int) string {
		t.Helper()
		status, resp := nd.rest(method, path, body)
		if status != want {
			t.Fatalf("%s %s on %s: %d %s, want %d", method, path, nd.id, status, resp, want)
		}
		return resp
	}
	n0, n1, n2 := s.nodes[0], s.nodes[1], s.nodes[2]
	check(n0, http.MethodHead, "/connections/"+s.carol2.id, "", 200)
	check(n1, http.MethodHead, "/connections/node2.missing", "", 404)
	check(n2, http.MethodHead, "/users/alice", "", 200)
	check(n2, http.MethodHead, "/groups/lobby", "", 200)
	check(n0, http.MethodPut, "/groups/room/connections/"+s.bob1.id, "", 200)
	check(n1, http.MethodPost, "/groups/room/:send", `"via rest"`, 202)
	s.expect(t, "rest group", map[*client][]string{s.alice0: {`via rest`}, s.bob1: {`via rest`}, s.bob2: {`via rest`}, s.carol2: {`via rest`}})
	// Pages over the whole cluster: 2 and 2 of the 4 members, on three nodes.
	var listed []string
	path := "/groups/room/connections?maxpagesize=2"
	for pages := 0; path != ""; pages++ {
		var page struct {
			Value []struct {
				ConnectionID string `json:"connectionId"`
			} `json:"value"`
			NextLink string `json:"nextLink"`
		}
		must(t, json.Unmarshal([]byte(check(s.random(), http.MethodGet, path, "", 200)), &page))
		for _, v := range page.Value {
			listed = append(listed, v.ConnectionID)
		}
		path = ""
		if page.NextLink != "" {
			_, rest, _ := strings.Cut(page.NextLink, "/api/hubs/chat")
			path = strings.Replace(rest, "api-version=2024-01-01&", "", 1)
		}
		if pages > 4 {
			t.Fatalf("more pages than members: %v", listed)
		}
	}
	slices.Sort(listed)
	wantListed := []string{s.alice0.id, s.bob1.id, s.bob2.id, s.carol2.id}
	slices.Sort(wantListed)
	if !slices.Equal(listed, wantListed) {
		t.Fatalf("the pages listed %v, want %v", listed, wantListed)
	}
	check(n1, http.MethodPut, "/permissions/sendToGroup/connections/"+s.alice0.id+"?targetName=lobby", "", 200)
	check(n2, http.MethodHead, "/permissions/sendToGroup/connections/"+s.alice0.id+"?targetName=lobby", "", 200)
	check(n0, http.MethodDelete, "/users/bob/groups/room", "", 204)
	check(n2, http.MethodPost, "/:send?excluded="+s.dave0.id, `"rest all"`, 202)
	w := map[*client][]string{}
	for _, c := range s.all {
		if c != s.dave0 {
			w[c] = []string{"rest all"}
		}
	}
	s.expect(t, "rest all", w)
	check(n1, http.MethodDelete, "/connections/"+s.alice0.id, "", 204)
	s.alice0.ExpectClose()
}

// The rest of the REST operations, each made on a node other than the one
// holding what it addresses.
func TestEveryRESTOperationAcrossNodes(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	check := func(nd *node, method, path, body string, want int) {
		t.Helper()
		if status, resp := nd.rest(method, path, body); status != want {
			t.Fatalf("%s %s on %s: %d %s, want %d", method, path, nd.id, status, resp, want)
		}
	}
	n0, n1, n2 := s.nodes[0], s.nodes[1], s.nodes[2]
	check(n2, http.MethodPost, "/users/alice/:send", `"to alice"`, 202)
	check(n0, http.MethodPost, "/connections/"+s.bob2.id+"/:send", `"to bob2"`, 202)
	s.expect(t, "user and connection", map[*client][]string{s.alice0: {"to alice"}, s.alice1: {"to alice"}, s.bob2: {"to bob2"}})

	check(n0, http.MethodPut, "/users/carol/groups/vip", "", 200)
	check(n1, http.MethodPut, "/users/nobody/groups/vip", "", 404)
	check(n1, http.MethodPost, "/:addToGroups", `{"groups":["vip"],"filter":"userId eq 'bob'"}`, 200)
	check(n0, http.MethodPost, "/groups/vip/:send", `"vip"`, 202)
	s.expect(t, "vip", map[*client][]string{s.bob1: {"vip"}, s.bob2: {"vip"}, s.carol2: {"vip"}})
	check(n1, http.MethodPost, "/:removeFromGroups", `{"groups":["vip"],"filter":"userId eq 'bob'"}`, 200)
	check(n2, http.MethodDelete, "/groups/room/connections/"+s.bob2.id, "", 204)
	check(n1, http.MethodDelete, "/connections/"+s.alice0.id+"/groups", "", 204)
	check(n0, http.MethodDelete, "/users/carol/groups", "", 204)
	check(n2, http.MethodPost, "/groups/vip/:send", `"nobody in vip"`, 202)
	check(n1, http.MethodPost, "/groups/room/:send", `"nobody in room"`, 202)
	s.expect(t, "left", nil)

	check(n0, http.MethodPut, "/permissions/sendToGroup/connections/"+s.bob1.id+"?targetName=x", "", 200)
	check(n2, http.MethodHead, "/permissions/sendToGroup/connections/"+s.bob1.id+"?targetName=x", "", 200)
	check(n1, http.MethodDelete, "/permissions/sendToGroup/connections/"+s.bob1.id+"?targetName=x", "", 204)
	check(n2, http.MethodHead, "/permissions/sendToGroup/connections/"+s.bob1.id+"?targetName=x", "", 404)

	check(n2, http.MethodPost, "/groups/lobby/:closeConnections", "", 204)
	s.bob1.ExpectClose()
	check(n0, http.MethodPost, "/users/carol/:closeConnections", "", 204)
	s.carol2.ExpectClose()
	check(n1, http.MethodPost, "/:closeConnections?excluded="+s.dave0.id, "", 204)
	for _, c := range []*client{s.alice0, s.alice1, s.bob2} {
		c.ExpectClose()
	}
	check(n2, http.MethodHead, "/connections/"+s.dave0.id, "", 200)
	check(n1, http.MethodHead, "/users/bob", "", 404)
}

// Closes by group and by user, with exclusions, reach every node.
func TestClosesWithExclusionsAcrossNodes(t *testing.T) {
	ns := startNATS(t, -1)
	s := newSpread(t, newCluster(t, ns.ClientURL(), 3, clusterOptions{}))
	ctx := context.Background()
	must(t, s.nodes[1].hub.CloseGroupConnections(ctx, "room", "room closed", s.bob2.id))
	for _, c := range []*client{s.alice0, s.carol2} {
		if info, _ := c.ExpectClose(); info.Code != 1000 {
			t.Fatalf("%s@%s closed with %v", c.user, c.node.id, info)
		}
	}
	s.all = []*client{s.alice1, s.bob1, s.bob2, s.dave0}
	s.expect(t, "after the group close", nil) // bob2, excluded, is open: it gets the marker
	must(t, s.nodes[0].hub.CloseUserConnections(ctx, "bob", "bob closed", s.bob1.id))
	s.bob2.ExpectClose()
	s.all = []*client{s.alice1, s.bob1, s.dave0}
	s.expect(t, "after the closes", nil) // the others are open and get the marker
}
