package rest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/filter"
)

type operation func(h *handler, rq *request)

// routeDef is one path of rest-api.md §4: literal segments and "{}" for a
// parameter (the first is the hub), with an operation per method.
type routeDef struct {
	path []string
	ops  map[string]namedOperation
}

// namedOperation is an operation with its name, which metrics, traces and
// the live trace label it with: the Go API's words (sendToAll, ...).
type namedOperation struct {
	name string
	fn   operation
}

func r(path string, ops map[string]namedOperation) routeDef {
	return routeDef{path: strings.Split(path, "/"), ops: ops}
}

const (
	get, head, post, put, del = http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete
)

// routes are the 24 hub operations (health is served before them).
var routes = []routeDef{
	r("hubs/{}/:send", map[string]namedOperation{post: {"sendToAll", sendToAll}}),
	r("hubs/{}/:closeConnections", map[string]namedOperation{post: {"closeAllConnections", closeAllConnections}}),
	r("hubs/{}/:generateToken", map[string]namedOperation{post: {"generateClientToken", generateClientToken}}),
	r("hubs/{}/:addToGroups", map[string]namedOperation{post: {"addConnectionsToGroups", addConnectionsToGroups}}),
	r("hubs/{}/:removeFromGroups", map[string]namedOperation{post: {"removeConnectionsFromGroups", removeConnectionsFromGroups}}),
	r("hubs/{}/connections/{}", map[string]namedOperation{del: {"closeConnection", closeConnection}, head: {"connectionExists", connectionExists}}),
	r("hubs/{}/connections/{}/:send", map[string]namedOperation{post: {"sendToConnection", sendToConnection}}),
	r("hubs/{}/connections/{}/groups", map[string]namedOperation{del: {"removeConnectionFromAllGroups", removeConnectionFromAllGroups}}),
	r("hubs/{}/groups/{}", map[string]namedOperation{head: {"groupExists", groupExists}}),
	r("hubs/{}/groups/{}/:closeConnections", map[string]namedOperation{post: {"closeGroupConnections", closeGroupConnections}}),
	r("hubs/{}/groups/{}/:send", map[string]namedOperation{post: {"sendToGroup", sendToGroup}}),
	r("hubs/{}/groups/{}/connections", map[string]namedOperation{get: {"listConnectionsInGroup", listConnectionsInGroup}}),
	r("hubs/{}/groups/{}/connections/{}", map[string]namedOperation{del: {"removeConnectionFromGroup", removeConnectionFromGroup}, put: {"addConnectionToGroup", addConnectionToGroup}}),
	r("hubs/{}/permissions/{}/connections/{}", map[string]namedOperation{del: {"revokePermission", revokePermission}, head: {"checkPermission", checkPermission}, put: {"grantPermission", grantPermission}}),
	r("hubs/{}/users/{}", map[string]namedOperation{head: {"userExists", userExists}}),
	r("hubs/{}/users/{}/:closeConnections", map[string]namedOperation{post: {"closeUserConnections", closeUserConnections}}),
	r("hubs/{}/users/{}/:send", map[string]namedOperation{post: {"sendToUser", sendToUser}}),
	r("hubs/{}/users/{}/groups", map[string]namedOperation{del: {"removeUserFromAllGroups", removeUserFromAllGroups}}),
	r("hubs/{}/users/{}/groups/{}", map[string]namedOperation{del: {"removeUserFromGroup", removeUserFromGroup}, put: {"addUserToGroup", addUserToGroup}}),
}

// route finds the operation for a method and path, with its parameters after
// the hub; for a known path with another method it returns the allowed ones.
func route(method string, segs []string) (namedOperation, []string, string) {
	for _, rt := range routes {
		if len(rt.path) != len(segs) {
			continue
		}
		var args []string
		match := true
		for i, p := range rt.path {
			if p == "{}" {
				if i > 1 {
					args = append(args, segs[i])
				}
			} else if p != segs[i] {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if op, ok := rt.ops[method]; ok {
			return op, args, ""
		}
		var allowed []string
		for m := range rt.ops {
			allowed = append(allowed, m)
		}
		slices.Sort(allowed)
		return namedOperation{}, nil, strings.Join(allowed, ", ")
	}
	return namedOperation{}, nil, ""
}

// Operation names the REST operation r asks for, as metrics, traces and
// the live trace label it (sendToAll, addConnectionToGroup, health, ...),
// with its hub, lower-cased; name is "" when r is no operation of the API
// (another path or method). It reads r's path only, before any check of
// the request's token, so that a middleware may call it: hub is "" when
// the path's is no hub name (anyone may send one).
func Operation(r *http.Request) (name, hub string) {
	segs, ok := pathSegments(r.URL.EscapedPath())
	if !ok {
		return "", ""
	}
	if len(segs) == 1 && segs[0] == "health" {
		return "health", ""
	}
	op, _, _ := route(r.Method, segs)
	if op.fn == nil {
		return "", ""
	}
	hub = segs[1]
	if !hubName(hub) {
		hub = ""
	}
	return op.name, strings.ToLower(hub)
}

// hubName reports whether s is a hub name by the service's rule
// (pubsub's Service.Hub, the swagger's: ^[A-Za-z][A-Za-z0-9_`,.[\]]{0,127}$).
func hubName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || strings.IndexByte("_`,.[]", c) >= 0):
		default:
			return false
		}
	}
	return true
}

func (rq *request) status(code int) { rq.w.WriteHeader(code) }

// exists answers a HEAD existence check.
func (h *handler) exists(rq *request, ok bool, err error) {
	switch {
	case err != nil:
		h.failErr(rq, err)
	case ok:
		rq.status(http.StatusOK)
	default:
		rq.status(http.StatusNotFound)
	}
}

func (h *handler) done(rq *request, err error, status int) {
	if err != nil {
		h.failErr(rq, err)
		return
	}
	rq.status(status)
}

// message reads a :send body per rest-api.md §3.1.
func (rq *request) message(max int64) (pubsub.Message, bool) {
	body, ok := rq.body(max)
	if !ok {
		return pubsub.Message{}, false
	}
	ct := rq.r.Header.Get("Content-Type")
	if ct == "" && len(body) == 0 {
		return pubsub.TextMessage(""), true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		rq.fail(http.StatusUnsupportedMediaType, "Error.UnsupportedMediaType", "a Content-Type of text/plain, application/json or application/octet-stream is required", "Content-Type")
		return pubsub.Message{}, false
	}
	switch mt {
	case "text/plain":
		return pubsub.Message{DataType: pubsub.DataTypeText, Data: body}, true
	case "application/json":
		if !json.Valid(body) {
			rq.badRequest("the body is not valid JSON", "body")
			return pubsub.Message{}, false
		}
		return pubsub.JSONMessage(body), true
	case "application/octet-stream":
		return pubsub.BinaryMessage(body), true
	}
	rq.fail(http.StatusUnsupportedMediaType, "Error.UnsupportedMediaType", "Content-Type "+mt+" is not supported; use text/plain, application/json or application/octet-stream", "Content-Type")
	return pubsub.Message{}, false
}

// body reads the request body, answering 413 past max.
func (rq *request) body(max int64) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(rq.w, rq.r.Body, max))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		rq.fail(http.StatusRequestEntityTooLarge, "Error.PayloadTooLarge", "the body is larger than "+strconv.FormatInt(max, 10)+" bytes", "body")
		return nil, false
	case errors.Is(err, os.ErrDeadlineExceeded):
		// 408: the request did not arrive in time (RFC 9110 §15.5.9); the
		// rest of it is unread, so the connection cannot be reused.
		rq.w.Header().Set("Connection", "close")
		rq.fail(http.StatusRequestTimeout, "Error.RequestTimeout", "the body did not arrive within "+rq.readTimeout.String(), "body")
		return nil, false
	case err != nil:
		rq.badRequest("reading the body: "+err.Error(), "body")
		return nil, false
	}
	return b, true
}

// sendOptions reads excluded, filter and messageTtlSeconds.
func (rq *request) sendOptions(excluded bool) ([]pubsub.SendOption, bool) {
	var opts []pubsub.SendOption
	if ids := rq.query["excluded"]; excluded && len(ids) > 0 {
		opts = append(opts, pubsub.Excluding(ids...))
	}
	if f := rq.query.Get("filter"); f != "" {
		if _, err := filter.Parse(f); err != nil {
			rq.badRequest(err.Error(), "filter")
			return nil, false
		}
		opts = append(opts, pubsub.WithFilter(f))
	}
	if v := rq.query.Get("messageTtlSeconds"); v != "" {
		ttl, err := strconv.Atoi(v)
		if err != nil || ttl < 0 || ttl > 300 {
			rq.badRequest("messageTtlSeconds must be an integer from 0 to 300", "messageTtlSeconds")
			return nil, false
		}
		if ttl > 0 {
			opts = append(opts, pubsub.WithTTL(time.Duration(ttl)*time.Second))
		}
	}
	return opts, true
}

// send reads a message and its options and hands them to the Go API: 202,
// whoever receives it (fire and forget).
func (h *handler) send(rq *request, excluded bool, f func(pubsub.Message, []pubsub.SendOption) error) {
	opts, ok := rq.sendOptions(excluded)
	if !ok {
		return
	}
	msg, ok := rq.message(h.opts.MaxBodySize)
	if !ok {
		return
	}
	h.done(rq, f(msg, opts), http.StatusAccepted)
}

func sendToAll(h *handler, rq *request) {
	h.send(rq, true, func(m pubsub.Message, o []pubsub.SendOption) error {
		return rq.hub.SendToAll(rq.r.Context(), m, o...)
	})
}

func sendToGroup(h *handler, rq *request) {
	h.send(rq, true, func(m pubsub.Message, o []pubsub.SendOption) error {
		return rq.hub.SendToGroup(rq.r.Context(), rq.args[0], m, o...)
	})
}

func sendToUser(h *handler, rq *request) {
	h.send(rq, false, func(m pubsub.Message, o []pubsub.SendOption) error {
		return rq.hub.SendToUser(rq.r.Context(), rq.args[0], m, o...)
	})
}

func sendToConnection(h *handler, rq *request) {
	if rq.query.Get("filter") != "" {
		rq.badRequest("SendToConnection takes no filter", "filter")
		return
	}
	h.send(rq, false, func(m pubsub.Message, o []pubsub.SendOption) error {
		return rq.hub.SendToConnection(rq.r.Context(), rq.args[0], m, o...)
	})
}

func closeAllConnections(h *handler, rq *request) {
	h.done(rq, rq.hub.CloseAllConnections(rq.r.Context(), rq.query.Get("reason"), rq.query["excluded"]...), http.StatusNoContent)
}

func closeGroupConnections(h *handler, rq *request) {
	h.done(rq, rq.hub.CloseGroupConnections(rq.r.Context(), rq.args[0], rq.query.Get("reason"), rq.query["excluded"]...), http.StatusNoContent)
}

func closeUserConnections(h *handler, rq *request) {
	h.done(rq, rq.hub.CloseUserConnections(rq.r.Context(), rq.args[0], rq.query.Get("reason"), rq.query["excluded"]...), http.StatusNoContent)
}

func closeConnection(h *handler, rq *request) {
	h.done(rq, rq.hub.CloseConnection(rq.r.Context(), rq.args[0], rq.query.Get("reason")), http.StatusNoContent)
}

func connectionExists(h *handler, rq *request) {
	ok, err := rq.hub.ConnectionExists(rq.r.Context(), rq.args[0])
	h.exists(rq, ok, err)
}

func groupExists(h *handler, rq *request) {
	ok, err := rq.hub.GroupExists(rq.r.Context(), rq.args[0])
	h.exists(rq, ok, err)
}

func userExists(h *handler, rq *request) {
	ok, err := rq.hub.UserExists(rq.r.Context(), rq.args[0])
	h.exists(rq, ok, err)
}

func removeConnectionFromAllGroups(h *handler, rq *request) {
	h.done(rq, rq.hub.RemoveConnectionFromAllGroups(rq.r.Context(), rq.args[0]), http.StatusNoContent)
}

func addConnectionToGroup(h *handler, rq *request) {
	h.done(rq, rq.hub.AddConnectionToGroup(rq.r.Context(), rq.args[1], rq.args[0]), http.StatusOK)
}

func removeConnectionFromGroup(h *handler, rq *request) {
	h.done(rq, rq.hub.RemoveConnectionFromGroup(rq.r.Context(), rq.args[1], rq.args[0]), http.StatusNoContent)
}

func addUserToGroup(h *handler, rq *request) {
	h.done(rq, rq.hub.AddUserToGroup(rq.r.Context(), rq.args[0], rq.args[1]), http.StatusOK)
}

func removeUserFromGroup(h *handler, rq *request) {
	h.done(rq, rq.hub.RemoveUserFromGroup(rq.r.Context(), rq.args[0], rq.args[1]), http.StatusNoContent)
}

func removeUserFromAllGroups(h *handler, rq *request) {
	h.done(rq, rq.hub.RemoveUserFromAllGroups(rq.r.Context(), rq.args[0]), http.StatusNoContent)
}

// groupsRequest is the body of :addToGroups and :removeFromGroups.
type groupsRequest struct {
	Groups []string `json:"groups"`
	Filter *string  `json:"filter"`
}

func addConnectionsToGroups(h *handler, rq *request) {
	h.groupsOperation(rq, rq.hub.AddConnectionsToGroups)
}

func removeConnectionsFromGroups(h *handler, rq *request) {
	h.groupsOperation(rq, rq.hub.RemoveConnectionsFromGroups)
}

func (h *handler) groupsOperation(rq *request, op func(ctx context.Context, filter string, groups ...string) error) {
	if mt, _, _ := mime.ParseMediaType(rq.r.Header.Get("Content-Type")); mt != "application/json" {
		rq.fail(http.StatusUnsupportedMediaType, "Error.UnsupportedMediaType", "the body must be application/json", "Content-Type")
		return
	}
	body, ok := rq.body(h.opts.MaxBodySize)
	if !ok {
		return
	}
	var req groupsRequest
	if err := json.Unmarshal(body, &req); err != nil {
		rq.badRequest("the body is not a valid request: "+err.Error(), "body")
		return
	}
	if len(req.Groups) == 0 {
		rq.badRequest("groups is required and must not be empty", "groups")
		return
	}
	odata := ""
	if req.Filter != nil && *req.Filter != "" { // no filter selects every connection
		if _, err := filter.Parse(*req.Filter); err != nil {
			rq.badRequest(err.Error(), "filter")
			return
		}
		odata = *req.Filter
	}
	h.done(rq, op(rq.r.Context(), odata, req.Groups...), http.StatusOK)
}

// groupMember is one item of ListConnectionsInGroup; userId is null for an
// anonymous connection.
type groupMember struct {
	ConnectionID string  `json:"connectionId"`
	UserID       *string `json:"userId"`
}

type groupMemberPage struct {
	Value    []groupMember `json:"value"`
	NextLink *string       `json:"nextLink,omitempty"`
}

// listConnectionsInGroup pages through the group ordered by connection id.
// The continuation token is the last id returned; top bounds the total.
func listConnectionsInGroup(h *handler, rq *request) {
	pageSize, ok := rq.intParam("maxpagesize", 200, 1, 200)
	if !ok {
		return
	}
	top, ok := rq.intParam("top", 1<<31-1, 1, 1<<31-1)
	if !ok {
		return
	}
	after := ""
	if tok := rq.query.Get("continuationToken"); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(b) == 0 {
			rq.badRequest("invalid continuationToken", "continuationToken")
			return
		}
		after = string(b)
	}
	members, err := rq.hub.ListConnectionsInGroup(rq.r.Context(), rq.args[0])
	if err != nil {
		h.failErr(rq, err)
		return
	}
	start, _ := slices.BinarySearchFunc(members, after, func(m pubsub.GroupMember, id string) int {
		return strings.Compare(m.ConnectionID, id)
	})
	if start < len(members) && after != "" && members[start].ConnectionID == after {
		start++
	}
	n := min(pageSize, top, len(members)-start)
	page := groupMemberPage{Value: make([]groupMember, 0, n)}
	for _, m := range members[start : start+n] {
		gm := groupMember{ConnectionID: m.ConnectionID}
		if m.UserID != "" {
			gm.UserID = &m.UserID
		}
		page.Value = append(page.Value, gm)
	}
	if rest := top - n; rest > 0 && start+n < len(members) {
		q := url.Values{}
		q.Set("api-version", rq.query.Get("api-version"))
		q.Set("maxpagesize", strconv.Itoa(pageSize))
		q.Set("top", strconv.Itoa(rest))
		q.Set("continuationToken", base64.RawURLEncoding.EncodeToString([]byte(members[start+n-1].ConnectionID)))
		scheme := "http"
		if rq.r.TLS != nil {
			scheme = "https"
		}
		link := scheme + "://" + rq.r.Host + rq.r.URL.EscapedPath() + "?" + q.Encode()
		page.NextLink = &link
	}
	rq.w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(rq.w).Encode(page)
}

// intParam reads an optional integer query parameter within [lo, hi].
func (rq *request) intParam(name string, def, lo, hi int) (int, bool) {
	v := rq.query.Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		rq.badRequest(name+" must be an integer from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi), name)
		return 0, false
	}
	return n, true
}

// permission reads the {permission} path parameter and targetName.
func (rq *request) permission() (pubsub.Permission, string, bool) {
	p, err := pubsub.ParsePermission(rq.args[0])
	if err != nil {
		rq.badRequest("permission must be sendToGroup or joinLeaveGroup", "permission")
		return 0, "", false
	}
	target := rq.query.Get("targetName")
	if target != "" && strings.TrimSpace(target) == "" || len(target) > 1024 {
		rq.badRequest("targetName must be a valid group name", "targetName")
		return 0, "", false
	}
	return p, target, true
}

func grantPermission(h *handler, rq *request) {
	if p, target, ok := rq.permission(); ok {
		h.done(rq, rq.hub.GrantPermission(rq.r.Context(), rq.args[1], p, target), http.StatusOK)
	}
}

func revokePermission(h *handler, rq *request) {
	p, target, ok := rq.permission()
	if !ok {
		return
	}
	err := rq.hub.RevokePermission(rq.r.Context(), rq.args[1], p, target)
	if errors.Is(err, pubsub.ErrConnectionNotFound) {
		err = nil // nothing left to revoke
	}
	h.done(rq, err, http.StatusNoContent)
}

func checkPermission(h *handler, rq *request) {
	if p, target, ok := rq.permission(); ok {
		has, err := rq.hub.CheckPermission(rq.r.Context(), rq.args[1], p, target)
		if errors.Is(err, pubsub.ErrConnectionNotFound) {
			has, err = false, nil
		}
		h.exists(rq, has, err)
	}
}

type tokenResponse struct {
	Token string `json:"token"`
}

// maxMinutesToExpire caps :generateToken's minutesToExpire at
// pubsub.MaxTokenLifetime, a year (525,600), far inside time.Duration's 292
// years, which larger values overflowed.
const maxMinutesToExpire = int(pubsub.MaxTokenLifetime / time.Minute)

// generateClientToken mints a client token for the hub (:generateToken).
func generateClientToken(h *handler, rq *request) {
	minutes, ok := rq.intParam("minutesToExpire", 60, 1, maxMinutesToExpire)
	if !ok {
		return
	}
	switch ct := rq.query.Get("clientType"); {
	case ct == "" || strings.EqualFold(ct, "Default"):
	case strings.EqualFold(ct, "MQTT"):
		rq.fail(http.StatusBadRequest, "NotSupported", "clientType MQTT is not supported", "clientType")
		return
	default:
		rq.badRequest("clientType must be Default or MQTT", "clientType")
		return
	}
	tok, err := h.svc.ClientToken(rq.hub.Name(), pubsub.TokenOptions{
		UserID:   rq.query.Get("userId"),
		Roles:    rq.query["role"],
		Groups:   rq.query["group"],
		Lifetime: time.Duration(minutes) * time.Minute,
	})
	if err != nil {
		h.failErr(rq, err)
		return
	}
	rq.w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(rq.w).Encode(tokenResponse{Token: tok})
}
