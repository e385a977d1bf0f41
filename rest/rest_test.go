package rest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/filter"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/rest"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	primaryKey   = "primary-access-key-0123456789abcdef"
	secondaryKey = "secondary-access-key-0123456789abcdef"
)

type env struct {
	t   *testing.T
	svc *pubsub.Service
	srv *httptest.Server
	hub *pubsub.Hub
	tr  *http.Transport
}

func newEnv(t *testing.T, opts rest.Options) *env {
	t.Helper()
	return newEnvWith(t, pubsub.Config{}, opts)
}

// newEnvWith is newEnv with a service configured by cfg (its endpoint and
// keys are the test's).
func newEnvWith(t *testing.T, cfg pubsub.Config, opts rest.Options) *env {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	cfg.Endpoint, cfg.AccessKey, cfg.SecondaryAccessKey = "http://"+srv.Listener.Addr().String(), primaryKey, secondaryKey
	svc, err := pubsub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = rest.NewServiceHandler(svc, opts, nil)
	srv.Start()
	hub, _ := svc.Hub("chat")
	e := &env{t: t, svc: svc, srv: srv, hub: hub, tr: &http.Transport{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wstest.WaitFor)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		e.tr.CloseIdleConnections()
		srv.Close()
	})
	return e
}

// token signs an access token for aud, as the SDKs do.
func token(t *testing.T, key string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) errorDetail(t *testing.T) rest.ErrorDetail {
	t.Helper()
	var d rest.ErrorDetail
	if err := json.Unmarshal(r.body, &d); err != nil || d.Code == "" {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	if r.header.Get("x-ms-error-code") != d.Code {
		t.Fatalf("x-ms-error-code %q, body code %q", r.header.Get("x-ms-error-code"), d.Code)
	}
	return d
}

// do calls the API with a valid token whose aud is the full request URL, as
// Azure's JS and Go SDKs sign it. path is relative to /api/; query gets
// api-version 2024-12-01 unless it sets one.
func (e *env) do(method, path string, query url.Values, contentType string, body string) response {
	e.t.Helper()
	u := e.url(path, query)
	return e.send(method, u, contentType, body, "Bearer "+token(e.t, primaryKey, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}))
}

func (e *env) url(path string, query url.Values) string {
	if query == nil {
		query = url.Values{}
	}
	if _, ok := query["api-version"]; !ok {
		query.Set("api-version", "2024-12-01")
	}
	return e.srv.URL + "/api/" + path + "?" + query.Encode()
}

func (e *env) send(method, u, contentType, body, auth string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, b}
}

// client never follows a redirect: a redirect is an answer the test checks.
func (e *env) client() *http.Client {
	return &http.Client{Transport: e.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) expect(want int, r response) response {
	e.t.Helper()
	if r.status != want {
		e.t.Fatalf("status %d, want %d; body %s", r.status, want, r.body)
	}
	return r
}

func (e *env) clientURL(opts pubsub.TokenOptions) string {
	u, err := e.svc.ClientURL("chat", opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return u
}

// barrier: a marker sent now must be the next frame c reads, so nothing
// else was delivered to it before.
func (e *env) barrier(c *wstest.Client, id string) {
	e.t.Helper()
	e.expect(202, e.do("POST", "hubs/chat/connections/"+id+"/:send", nil, "text/plain", "barrier"))
	if f := c.Next(); !strings.Contains(string(f.Data), "barrier") {
		e.t.Fatalf("expected nothing before the barrier, got %s", f.Data)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, rest.Options{})
	u := e.url("hubs/chat/:send", nil)
	noQuery := strings.SplitN(u, "?", 2)[0]
	exp := time.Now().Add(time.Hour).Unix()
	cases := []struct {
		name string
		auth string
		want int
	}{
		{"aud with the query", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": u, "exp": exp}), 202},
		{"aud without the query", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": noQuery, "exp": exp}), 202},
		{"aud with a trailing slash, other case", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": strings.ToUpper(noQuery[:4]) + noQuery[4:] + "/", "exp": exp}), 202},
		{"secondary key", "Bearer " + token(t, secondaryKey, jwt.MapClaims{"aud": u, "exp": exp}), 202},
		{"missing", "", 401},
		{"not bearer", "Basic abc", 401},
		{"wrong key", "Bearer " + token(t, "other-key", jwt.MapClaims{"aud": u, "exp": exp}), 401},
		{"wrong audience", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": e.srv.URL + "/api/hubs/other/:send", "exp": exp}), 401},
		{"client audience", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": e.srv.URL + "/client/hubs/chat", "exp": exp}), 401},
		{"expired", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": u, "exp": time.Now().Add(-10 * time.Minute).Unix()}), 401},
		{"no exp", "Bearer " + token(t, primaryKey, jwt.MapClaims{"aud": u}), 401},
		{"alg none", "Bearer " + func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"aud": u, "exp": exp}).SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}(), 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.send("POST", u, "text/plain", "x", tc.auth)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.body)
			}
			if r.status == 401 {
				r.errorDetail(t)
			}
		})
	}
	t.Run("health needs no token", func(t *testing.T) {
		e.expect(200, e.send("HEAD", e.srv.URL+"/api/health?api-version=2024-12-01", "", "", ""))
	})
}

func TestAPIVersionsAndRouting(t *testing.T) {
	e := newEnv(t, rest.Options{})
	for _, v := range []string{"2021-10-01", "2022-11-01", "2023-07-01", "2024-01-01", "2024-12-01"} {
		e.expect(202, e.do("POST", "hubs/chat/:send", url.Values{"api-version": {v}}, "text/plain", "x"))
	}
	for _, v := range []string{"", "2020-01-01", "latest"} {
		r := e.expect(400, e.do("POST", "hubs/chat/:send", url.Values{"api-version": {v}}, "text/plain", "x"))
		if d := r.errorDetail(t); !strings.Contains(d.Message, "api-version") {
			t.Fatalf("api-version %q: %+v", v, d)
		}
	}
	e.expect(404, e.do("POST", "hubs/chat/:dance", nil, "", ""))
	e.expect(404, e.do("GET", "nothing", nil, "", ""))
	r := e.expect(405, e.do("GET", "hubs/chat/:send", nil, "", ""))
	if r.header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	e.expect(400, e.do("POST", "hubs/1bad/:send", nil, "text/plain", "x"))
}

func TestSends(t *testing.T) {
	e := newEnv(t, rest.Options{MaxBodySize: 1024})
	alice, aliceID := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice", Groups: []string{"room"}}))
	bob, bobID := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "tenant%2Fbob", Groups: []string{"room", "vip"}}))
	simple := wstest.Dial(t, e.clientURL(pubsub.TokenOptions{UserID: "carol", Groups: []string{"room"}}), nil)
	// A simple client sees no connected message: prove it is registered.
	if ok, _ := e.hub.UserExists(t.Context(), "carol"); !ok {
		t.Fatal("carol is not connected")
	}

	// Each content type, to JSON and to simple clients (rest-api.md §3.1).
	for _, tc := range []struct {
		ct, body, json string
		binary         bool
	}{
		{"text/plain; charset=utf-8", "Hello", `"dataType":"text","data":"Hello"`, false},
		{"application/json", `"Hello"`, `"dataType":"json","data":"Hello"`, false},
		{"application/json", `{"a": 1}`, `"dataType":"json","data":{"a": 1}`, false},
		{"application/octet-stream", "\x00\x01", `"dataType":"binary","data":"AAE="`, true},
	} {
		e.expect(202, e.do("POST", "hubs/chat/:send", nil, tc.ct, tc.body))
		for _, c := range []*wstest.Client{alice, bob} {
			if f := c.Next(); string(f.Data) != `{"type":"message","from":"server",`+tc.json+`}` {
				t.Fatalf("%s: JSON client got %s", tc.ct, f.Data)
			}
		}
		if f := simple.Next(); f.Binary != tc.binary || string(f.Data) != tc.body {
			t.Fatalf("%s: simple client got %v %q", tc.ct, f.Binary, f.Data)
		}
	}

	// Targets, exclusions and filters.
	e.expect(202, e.do("POST", "hubs/chat/groups/vip/:send", nil, "text/plain", "to vip"))
	if m := bob.NextJSON(); m["from"] != "group" || m["group"] != "vip" || m["fromUserId"] != nil || m["data"] != "to vip" {
		t.Fatalf("group message %v", m)
	}
	e.expect(202, e.do("POST", "hubs/chat/users/tenant%2Fbob/:send", nil, "text/plain", "to bob"))
	if m := bob.NextJSON(); m["data"] != "to bob" {
		t.Fatalf("user message %v", m)
	}
	e.expect(202, e.do("POST", "hubs/chat/connections/"+aliceID+"/:send", nil, "text/plain", "to alice"))
	if m := alice.NextJSON(); m["data"] != "to alice" {
		t.Fatalf("connection message %v", m)
	}
	e.expect(202, e.do("POST", "hubs/chat/groups/room/:send", url.Values{"excluded": {aliceID, bobID}}, "text/plain", "carol only"))
	if f := simple.Next(); string(f.Data) != "carol only" {
		t.Fatalf("simple got %q", f.Data)
	}
	e.expect(202, e.do("POST", "hubs/chat/:send", url.Values{"filter": {"'vip' in groups or userId eq 'carol'"}}, "text/plain", "filtered"))
	if m := bob.NextJSON(); m["data"] != "filtered" {
		t.Fatalf("bob got %v", m)
	}
	if f := simple.Next(); string(f.Data) != "filtered" {
		t.Fatalf("carol got %q", f.Data)
	}
	e.barrier(alice, aliceID)
	e.expect(202, e.do("POST", "hubs/chat/users/alice/:send", url.Values{"filter": {"connectionId ne '" + aliceID + "'"}}, "text/plain", "nobody"))
	e.barrier(alice, aliceID)

	// Sending to nobody is accepted.
	e.expect(202, e.do("POST", "hubs/chat/connections/missing/:send", nil, "text/plain", "x"))
	e.expect(202, e.do("POST", "hubs/chat/groups/empty/:send", nil, "text/plain", "x"))

	// Bad input: nothing is delivered.
	r := e.expect(400, e.do("POST", "hubs/chat/:send", url.Values{"filter": {"userId eq"}}, "text/plain", "x"))
	if d := r.errorDetail(t); !strings.Contains(d.Message, "position 9") || d.Target != "filter" {
		t.Fatalf("filter error %+v", d)
	}
	e.expect(400, e.do("POST", "hubs/chat/:send", nil, "application/json", "{nope"))
	e.expect(415, e.do("POST", "hubs/chat/:send", nil, "application/xml", "<a/>"))
	e.expect(415, e.do("POST", "hubs/chat/:send", nil, "", "no type"))
	e.expect(413, e.do("POST", "hubs/chat/:send", nil, "text/plain", strings.Repeat("x", 1025)))
	e.expect(400, e.do("POST", "hubs/chat/:send", url.Values{"messageTtlSeconds": {"301"}}, "text/plain", "x"))
	e.expect(400, e.do("POST", "hubs/chat/:send", url.Values{"messageTtlSeconds": {"soon"}}, "text/plain", "x"))
	e.expect(202, e.do("POST", "hubs/chat/:send", url.Values{"messageTtlSeconds": {"300"}}, "text/plain", "with ttl"))
	for _, c := range []*wstest.Client{alice, bob} {
		if m := c.NextJSON(); m["data"] != "with ttl" {
			t.Fatalf("got %v", m)
		}
	}
	if f := simple.Next(); string(f.Data) != "with ttl" {
		t.Fatalf("carol got %q", f.Data)
	}
	e.barrier(alice, aliceID)
	e.barrier(bob, bobID)
}

func TestGroupsUsersAndConnections(t *testing.T) {
	e := newEnv(t, rest.Options{})
	_, a1 := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice"}))
	_, a2 := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice"}))
	_, b := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "bob"}))
	_, anon := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{}))

	members := func(g string) []string {
		t.Helper()
		ms, _ := e.hub.ListConnectionsInGroup(t.Context(), g)
		var ids []string
		for _, m := range ms {
			ids = append(ids, m.ConnectionID)
		}
		return ids
	}
	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }

	e.expect(200, e.do("PUT", "hubs/chat/groups/g/connections/"+b, nil, "", ""))
	e.expect(404, e.do("PUT", "hubs/chat/groups/g/connections/missing", nil, "", ""))
	e.expect(200, e.do("HEAD", "hubs/chat/groups/g", nil, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/groups/nope", nil, "", ""))
	e.expect(200, e.do("PUT", "hubs/chat/users/alice/groups/g", nil, "", ""))
	e.expect(404, e.do("PUT", "hubs/chat/users/nobody/groups/g", nil, "", ""))
	if got := members("g"); !slices.Equal(got, sorted(a1, a2, b)) {
		t.Fatalf("g = %v", got)
	}
	e.expect(204, e.do("DELETE", "hubs/chat/groups/g/connections/"+a1, nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/groups/g/connections/missing", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/users/alice/groups/g", nil, "", ""))
	if got := members("g"); !slices.Equal(got, []string{b}) {
		t.Fatalf("g = %v", got)
	}
	e.expect(204, e.do("DELETE", "hubs/chat/connections/"+b+"/groups", nil, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/groups/g", nil, "", ""))
	e.expect(200, e.do("PUT", "hubs/chat/users/alice/groups/h", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/users/alice/groups", nil, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/groups/h", nil, "", ""))

	// :addToGroups / :removeFromGroups with and without a filter.
	e.expect(200, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":["x","y"],"filter":"userId eq 'alice'"}`))
	if !slices.Equal(members("x"), sorted(a1, a2)) || !slices.Equal(members("y"), sorted(a1, a2)) {
		t.Fatalf("x = %v, y = %v", members("x"), members("y"))
	}
	e.expect(200, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":["x"]}`))
	if !slices.Equal(members("x"), sorted(a1, a2, b, anon)) {
		t.Fatalf("x = %v", members("x"))
	}
	e.expect(200, e.do("POST", "hubs/chat/:removeFromGroups", nil, "application/json", `{"groups":["x"],"filter":"userId eq null or 'y' in groups"}`))
	if !slices.Equal(members("x"), []string{b}) {
		t.Fatalf("x = %v", members("x"))
	}
	e.expect(415, e.do("POST", "hubs/chat/:addToGroups", nil, "text/plain", `{"groups":["x"]}`))
	e.expect(400, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":[]}`))
	e.expect(400, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":[" "]}`))
	e.expect(400, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":["x"],"filter":"bad filter"}`))
	e.expect(400, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `not json`))

	// Existence.
	e.expect(200, e.do("HEAD", "hubs/chat/connections/"+a1, nil, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/connections/missing", nil, "", ""))
	e.expect(200, e.do("HEAD", "hubs/chat/users/alice", nil, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/users/nobody", nil, "", ""))

	// Listing pages through the group in connection id order.
	e.expect(200, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":["all"]}`))
	all := sorted(a1, a2, b, anon)
	var got []string
	next := e.url("hubs/chat/groups/all/connections", url.Values{"maxpagesize": {"1"}, "top": {"3"}})
	pages := 0
	for next != "" {
		r := e.expect(200, e.send("GET", next, "", "", "Bearer "+token(t, primaryKey, jwt.MapClaims{"aud": next, "exp": time.Now().Add(time.Hour).Unix()})))
		var page struct {
			Value []struct {
				ConnectionID string  `json:"connectionId"`
				UserID       *string `json:"userId"`
			} `json:"value"`
			NextLink string `json:"nextLink"`
		}
		if err := json.Unmarshal(r.body, &page); err != nil {
			t.Fatal(err)
		}
		if len(page.Value) != 1 {
			t.Fatalf("page of %d", len(page.Value))
		}
		v := page.Value[0]
		if (v.ConnectionID == anon) != (v.UserID == nil) {
			t.Fatalf("userId of %s: %v", v.ConnectionID, v.UserID)
		}
		got = append(got, v.ConnectionID)
		if page.NextLink != "" && !strings.HasPrefix(page.NextLink, e.srv.URL+"/api/hubs/chat/groups/all/connections?") {
			t.Fatalf("nextLink %s is not absolute", page.NextLink)
		}
		next = page.NextLink
		pages++
	}
	if !slices.Equal(got, all[:3]) || pages != 3 {
		t.Fatalf("listed %v in %d pages, want %v", got, pages, all[:3])
	}
	r := e.expect(200, e.do("GET", "hubs/chat/groups/none/connections", nil, "", ""))
	if strings.TrimSpace(string(r.body)) != `{"value":[]}` {
		t.Fatalf("empty group: %s", r.body)
	}
	e.expect(400, e.do("GET", "hubs/chat/groups/all/connections", url.Values{"maxpagesize": {"201"}}, "", ""))
	e.expect(400, e.do("GET", "hubs/chat/groups/all/connections", url.Values{"top": {"0"}}, "", ""))
	e.expect(400, e.do("GET", "hubs/chat/groups/all/connections", url.Values{"continuationToken": {"!!"}}, "", ""))
}

func TestPermissionsAndCloses(t *testing.T) {
	e := newEnv(t, rest.Options{})
	c, id := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice"}))

	perm := "hubs/chat/permissions/sendToGroup/connections/" + id
	target := url.Values{"targetName": {"g"}}
	e.expect(404, e.do("HEAD", perm, target, "", ""))
	e.expect(200, e.do("PUT", perm, target, "", ""))
	e.expect(200, e.do("HEAD", perm, target, "", ""))
	c.Send(`{"type":"sendToGroup","group":"g","ackId":1,"dataType":"text","data":"x"}`)
	c.ExpectAck(1, "")
	e.expect(204, e.do("DELETE", perm, target, "", ""))
	e.expect(404, e.do("HEAD", perm, target, "", ""))
	c.Send(`{"type":"sendToGroup","group":"g","ackId":2,"dataType":"text","data":"x"}`)
	c.ExpectAck(2, "Forbidden")
	e.expect(200, e.do("PUT", "hubs/chat/permissions/joinLeaveGroup/connections/"+id, nil, "", "")) // every group
	e.expect(200, e.do("HEAD", "hubs/chat/permissions/joinLeaveGroup/connections/"+id, url.Values{"targetName": {"any"}}, "", ""))
	e.expect(404, e.do("PUT", "hubs/chat/permissions/sendToGroup/connections/missing", target, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/permissions/sendToGroup/connections/missing", target, "", ""))
	e.expect(400, e.do("PUT", "hubs/chat/permissions/admin/connections/"+id, target, "", ""))

	// Closes: the reason reaches the client; 204 even when nothing matched.
	e.expect(204, e.do("POST", "hubs/chat/users/nobody/:closeConnections", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/connections/missing", nil, "", ""))
	e.expect(204, e.do("POST", "hubs/chat/groups/none/:closeConnections", nil, "", ""))
	e.expect(204, e.do("DELETE", "hubs/chat/connections/"+id, url.Values{"reason": {"kicked"}}, "", ""))
	if info, frames := c.ExpectClose(); info.Code != 1000 || info.Reason != "kicked" || len(frames) != 1 {
		t.Fatalf("close %+v after %d frames", info, len(frames))
	}
	c1, _ := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "u1", Groups: []string{"g"}}))
	c2, id2 := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "u1", Groups: []string{"g"}}))
	c3, id3 := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "u2"}))
	e.expect(204, e.do("POST", "hubs/chat/users/u1/:closeConnections", url.Values{"excluded": {id2}, "reason": {"user"}}, "", ""))
	if info, _ := c1.ExpectClose(); info.Reason != "user" {
		t.Fatalf("close %+v", info)
	}
	e.expect(204, e.do("POST", "hubs/chat/groups/g/:closeConnections", url.Values{"reason": {"group"}}, "", ""))
	if info, _ := c2.ExpectClose(); info.Reason != "group" {
		t.Fatalf("close %+v", info)
	}
	e.barrier(c3, id3)
	e.expect(204, e.do("POST", "hubs/chat/:closeConnections", nil, "", ""))
	if info, _ := c3.ExpectClose(); info.Code != 1000 || info.Reason != "Closed by app server." {
		t.Fatalf("close %+v", info)
	}
}

func TestGenerateClientToken(t *testing.T) {
	e := newEnv(t, rest.Options{})
	r := e.expect(200, e.do("POST", "hubs/chat/:generateToken", url.Values{
		"userId": {"alice"}, "role": {"webpubsub.sendToGroup.g", "webpubsub.joinLeaveGroup"}, "group": {"g1", "g2"}, "minutesToExpire": {"5"},
	}, "", ""))
	var body struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || body.Token == "" {
		t.Fatalf("body %s", r.body)
	}
	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(body.Token, claims, func(*jwt.Token) (any, error) { return []byte(primaryKey), nil }); err != nil {
		t.Fatal(err)
	}
	exp, _ := claims.GetExpirationTime()
	if d := time.Until(exp.Time); d < 4*time.Minute || d > 6*time.Minute {
		t.Fatalf("lifetime %v", d)
	}
	// The token works on the client endpoint with its user, roles and groups.
	c, _ := wstest.DialJSON(t, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/client/hubs/chat?access_token="+body.Token)
	for _, g := range []string{"g1", "g2"} {
		if ok, _ := e.hub.GroupExists(t.Context(), g); !ok {
			t.Fatalf("not in %s", g)
		}
	}
	c.Send(`{"type":"sendToGroup","group":"g","ackId":1,"dataType":"text","data":"x"}`)
	c.ExpectAck(1, "")
	c.Send(`{"type":"joinGroup","group":"other","ackId":2}`)
	c.ExpectAck(2, "")
	if ok, _ := e.hub.UserExists(t.Context(), "alice"); !ok {
		t.Fatal("user alice missing")
	}
	e.expect(400, e.do("POST", "hubs/chat/:generateToken", url.Values{"minutesToExpire": {"0"}}, "", ""))
	r = e.expect(400, e.do("POST", "hubs/chat/:generateToken", url.Values{"clientType": {"mqtt"}}, "", ""))
	if d := r.errorDetail(t); d.Code != "NotSupported" {
		t.Fatalf("MQTT: %+v", d)
	}
}

// TestDotSegmentsAreNames: "." and ".." (also percent-encoded) in a path are
// user, group and connection names like any other, never dot segments that
// lead to another operation. Behind http.ServeMux,
// /users/../:send was redirected to the hub's /:send.
func TestDotSegmentsAreNames(t *testing.T) {
	e := newEnv(t, rest.Options{})
	dotdot, dotdotID := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "..", Groups: []string{".."}}))
	dot, dotID := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: ".", Groups: []string{"."}}))
	alice, aliceID := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice", Groups: []string{"room"}}))
	quiet := func() {
		t.Helper()
		e.barrier(dotdot, dotdotID)
		e.barrier(dot, dotID)
		e.barrier(alice, aliceID)
	}

	for _, tc := range []struct {
		path string
		to   *wstest.Client
	}{
		{"hubs/chat/users/../:send", dotdot},
		{"hubs/chat/users/%2E%2E/:send", dotdot},
		{"hubs/chat/users/%2e./:send", dotdot},
		{"hubs/chat/users/./:send", dot},
		{"hubs/chat/groups/../:send", dotdot},
		{"hubs/chat/groups/%2E/:send", dot},
	} {
		e.expect(202, e.do("POST", tc.path, nil, "text/plain", tc.path))
		if m := tc.to.NextJSON(); m["data"] != tc.path {
			t.Fatalf("%s: got %v", tc.path, m)
		}
		quiet() // and nobody else got it
	}

	e.expect(200, e.do("HEAD", "hubs/chat/users/..", nil, "", ""))
	e.expect(200, e.do("HEAD", "hubs/chat/groups/%2E%2E", nil, "", ""))
	e.expect(404, e.do("HEAD", "hubs/chat/users/../..", nil, "", "")) // no such route, not hubs/chat
	e.expect(404, e.do("HEAD", "hubs/chat/connections/..", nil, "", ""))
	e.expect(204, e.do("POST", "hubs/chat/users/../:closeConnections", url.Values{"reason": {"dots"}}, "", ""))
	if info, _ := dotdot.ExpectClose(); info.Reason != "dots" {
		t.Fatalf("close %+v", info)
	}
	e.expect(404, e.do("HEAD", "hubs/chat/users/..", nil, "", ""))
	e.expect(204, e.do("POST", "hubs/chat/groups/./:closeConnections", url.Values{"reason": {"dot"}}, "", ""))
	if info, _ := dot.ExpectClose(); info.Reason != "dot" {
		t.Fatalf("close %+v", info)
	}
	e.barrier(alice, aliceID) // alice is still connected
}

// TestServiceHandlerRoutes: the prefixes go where they belong, on the raw
// path; anything else reaches next as it came, uncleaned (nil next: 404).
func TestServiceHandlerRoutes(t *testing.T) {
	svc, err := pubsub.New(pubsub.Config{Endpoint: "http://localhost", AccessKey: primaryKey})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Shutdown(t.Context())
	var nextGot []string
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nextGot = append(nextGot, r.URL.EscapedPath())
		w.WriteHeader(http.StatusTeapot)
	})
	withNext, withoutNext := rest.NewServiceHandler(svc, rest.Options{}, next), rest.NewServiceHandler(svc, rest.Options{}, nil)
	for _, tc := range []struct {
		target string
		want   int // 418: next
	}{
		{"/api/health", 200},                        // REST
		{"/api/hubs/chat/users/../:send", 405},      // REST (it takes POST), not redirected
		{"/client?hub=chat", 400},                   // the client endpoint: not an upgrade
		{"/client/hubs/chat", 400},                  // the client endpoint
		{"/client/../api/health", 404},              // the client endpoint's 404, not REST's health
		{"/other/../api/health", http.StatusTeapot}, // next, uncleaned
		{"/api", http.StatusTeapot},
		{"/apiary", http.StatusTeapot},
		{"/clients", http.StatusTeapot},
	} {
		w := httptest.NewRecorder()
		withNext.ServeHTTP(w, httptest.NewRequest("GET", tc.target, nil))
		if w.Code != tc.want {
			t.Errorf("%s: %d, want %d", tc.target, w.Code, tc.want)
		}
		if tc.want == http.StatusTeapot {
			w := httptest.NewRecorder()
			withoutNext.ServeHTTP(w, httptest.NewRequest("GET", tc.target, nil))
			if w.Code != http.StatusNotFound {
				t.Errorf("%s without next: %d, want 404", tc.target, w.Code)
			}
		}
	}
	if want := []string{"/other/../api/health", "/api", "/apiary", "/clients"}; !slices.Equal(nextGot, want) {
		t.Fatalf("next got %v, want %v", nextGot, want)
	}
}

// rawConn opens a TCP connection to the test server that the test writes
// HTTP/1.1 by hand on; every read on it gives up after wstest.WaitFor.
func (e *env) rawConn() (net.Conn, *bufio.Reader) {
	e.t.Helper()
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(wstest.WaitFor))
	return c, bufio.NewReader(c)
}

// chunkedHead is a request whose chunked body has begun with one chunk; the
// test decides whether it ever ends.
func (e *env) chunkedHead(method, path string, auth bool) string {
	u := e.url(path, nil)
	head := method + " " + strings.TrimPrefix(u, e.srv.URL) + " HTTP/1.1\r\nHost: " + e.srv.Listener.Addr().String() + "\r\n"
	if auth {
		head += "Authorization: Bearer " + token(e.t, primaryKey, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}) + "\r\n"
	}
	return head + "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
}

// expectAnswerThenClose reads one response with the status, then the end
// of the connection: the server closed it, rather than wait for the rest
// of the body.
func (e *env) expectAnswerThenClose(r *bufio.Reader, method string, status int) {
	e.t.Helper()
	resp, err := http.ReadResponse(r, &http.Request{Method: method})
	if err != nil {
		e.t.Fatalf("no answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status {
		e.t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, b)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		e.t.Fatalf("after the answer: %v, want the connection closed (EOF)", err)
	}
}

// TestBodyReadTimeout: a request body that never ends gets an answer and
// its connection closed within Options.ReadTimeout, on an http.Server with
// no timeouts of its own; a body that ends is unaffected, and so is the
// next request on its connection.
func TestBodyReadTimeout(t *testing.T) {
	e := newEnv(t, rest.Options{ReadTimeout: 200 * time.Millisecond})
	c, _ := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "alice"}))

	// A complete request first: its connection stays open.
	keep, keepR := e.rawConn()
	complete := func() {
		t.Helper()
		fmt.Fprint(keep, e.chunkedHead("POST", "hubs/chat/:send", true)+"0\r\n\r\n")
		resp, err := http.ReadResponse(keepR, nil)
		if err != nil || resp.StatusCode != 202 {
			t.Fatalf("complete request: %v %v", resp, err)
		}
		resp.Body.Close()
		if m := c.NextJSON(); m["data"] != "hello" {
			t.Fatalf("got %v", m)
		}
	}
	complete()

	// A :send whose body never ends: 408, then closed.
	never, neverR := e.rawConn()
	fmt.Fprint(never, e.chunkedHead("POST", "hubs/chat/:send", true))
	e.expectAnswerThenClose(neverR, "POST", http.StatusRequestTimeout)

	// Answered before the body is read (no token): closed, not held.
	for _, path := range []string{"hubs/chat/:send", "health"} {
		unauth, unauthR := e.rawConn()
		fmt.Fprint(unauth, e.chunkedHead("POST", path, false))
		want := http.StatusUnauthorized
		if path == "health" {
			want = http.StatusMethodNotAllowed
		}
		e.expectAnswerThenClose(unauthR, "POST", want)
	}

	// The client endpoint and other paths of NewServiceHandler too.
	for _, tc := range []struct {
		target string
		want   int
	}{{"/client/hubs/chat", 400}, {"/elsewhere", 404}} {
		conn, r := e.rawConn()
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", tc.target)
		e.expectAnswerThenClose(r, "POST", tc.want)
	}

	// The first connection's deadline is long past: it serves another
	// request, and the WebSocket client is still connected.
	complete()
}

// TestFilterLimits: filters past filter.MaxLength or filter.MaxTokens are
// refused with 400 before anything is sent; a filter of 40,000 clauses
// once cost seconds of CPU per send.
func TestFilterLimits(t *testing.T) {
	e := newEnv(t, rest.Options{})
	c, id := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "u"}))
	huge := "userId eq 'u'" + strings.Repeat(" or userId eq 'u'", 39999)
	many := "true" + strings.Repeat(" or true", filter.MaxTokens)
	for _, tc := range []struct{ src, msg string }{
		{huge, "position 16384: the filter is longer than 16384 bytes"},
		{many, "the filter has more than 1000 tokens"},
	} {
		start := time.Now()
		// aud without the query, or the token would be as long again
		u := e.url("hubs/chat/:send", url.Values{"filter": {tc.src}})
		aud := strings.SplitN(u, "?", 2)[0]
		r := e.expect(400, e.send("POST", u, "text/plain", "x", "Bearer "+token(t, primaryKey, jwt.MapClaims{"aud": aud, "exp": time.Now().Add(time.Hour).Unix()})))
		if d := r.errorDetail(t); !strings.Contains(d.Message, tc.msg) || d.Target != "filter" {
			t.Fatalf("error %+v, want %q", d, tc.msg)
		}
		t.Logf("%d-byte filter refused in %v", len(tc.src), time.Since(start))
		body, _ := json.Marshal(map[string]any{"groups": []string{"g"}, "filter": tc.src})
		r = e.expect(400, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", string(body)))
		if d := r.errorDetail(t); !strings.Contains(d.Message, tc.msg) {
			t.Fatalf("error %+v, want %q", d, tc.msg)
		}
	}
	e.barrier(c, id) // nothing was sent
	if ok, _ := e.hub.GroupExists(t.Context(), "g"); ok {
		t.Fatal("added to g")
	}
}

// TestGenerateTokenLifetime: minutesToExpire is capped at a year (525,600
// minutes); past it, 400. Larger values once overflowed time.Duration:
// 2,147,483,647 minutes became a token of one hour, 153,722,867 one valid
// until 2319.
func TestGenerateTokenLifetime(t *testing.T) {
	e := newEnv(t, rest.Options{})
	expiry := func(minutes string) time.Duration {
		t.Helper()
		r := e.expect(200, e.do("POST", "hubs/chat/:generateToken", url.Values{"minutesToExpire": {minutes}}, "", ""))
		var body struct {
			Token string `json:"token"`
		}
		if err := json.Unmarshal(r.body, &body); err != nil {
			t.Fatal(err)
		}
		claims := jwt.MapClaims{}
		if _, err := jwt.ParseWithClaims(body.Token, claims, func(*jwt.Token) (any, error) { return []byte(primaryKey), nil }); err != nil {
			t.Fatal(err)
		}
		exp, _ := claims.GetExpirationTime()
		return time.Until(exp.Time)
	}
	if d := expiry("525600"); d < 365*24*time.Hour-time.Minute || d > 365*24*time.Hour {
		t.Fatalf("a year's token expires in %v", d)
	}
	if d := expiry("1"); d < 0 || d > time.Minute {
		t.Fatalf("a minute's token expires in %v", d)
	}
	for _, m := range []string{"525601", "153722867", "2147483647", "9223372036854775807", "99999999999999999999", "0", "-1"} {
		r := e.expect(400, e.do("POST", "hubs/chat/:generateToken", url.Values{"minutesToExpire": {m}}, "", ""))
		if d := r.errorDetail(t); d.Target != "minutesToExpire" || !strings.Contains(d.Message, "from 1 to 525600") {
			t.Fatalf("minutesToExpire %s: %+v", m, d)
		}
	}
}

// A connection in as many groups as it may be: adding it to one more is a
// 409, for a connection or a user; :addToGroups skips it.
func TestGroupsPerConnectionBound(t *testing.T) {
	e := newEnvWith(t, pubsub.Config{MaxGroupsPerConnection: 2}, rest.Options{})
	c, id := wstest.DialJSON(t, e.clientURL(pubsub.TokenOptions{UserID: "u", Groups: []string{"a", "b"}}))
	if d := e.expect(409, e.do("PUT", "hubs/chat/groups/c/connections/"+id, nil, "", "")).errorDetail(t); d.Code != "Error.Conflict" {
		t.Fatalf("%+v", d)
	}
	e.expect(409, e.do("PUT", "hubs/chat/users/u/groups/c", nil, "", ""))
	e.expect(200, e.do("POST", "hubs/chat/:addToGroups", nil, "application/json", `{"groups":["c"]}`))
	e.expect(404, e.do("HEAD", "hubs/chat/groups/c", nil, "", ""))
	e.expect(200, e.do("PUT", "hubs/chat/groups/a/connections/"+id, nil, "", "")) // in it already
	e.barrier(c, id)
}
