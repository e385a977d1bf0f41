package main

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/golang-jwt/jwt/v5"
)

// sdkDo calls the REST API as Azure's SDK pipelines do: the path goes out
// as written, a token is signed for each URL, and a 307/308 redirect is
// followed with a token signed for the new URL.
func sdkDo(t *testing.T, cs pubsub.ConnectionString, method, path, contentType, body string) *http.Response {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	u := cs.Endpoint + "/api/" + path + "?api-version=2024-12-01"
	for range 5 {
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(cs.AccessKey))
		req, err := http.NewRequest(method, u, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTemporaryRedirect && resp.StatusCode != http.StatusPermanentRedirect {
			return resp
		}
		next, err := req.URL.Parse(resp.Header.Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		u = next.String()
	}
	t.Fatal("too many redirects")
	return nil
}

// TestDotNamesStayNames: through cmd/webpubsub, the user and group ".."
// are names. Behind http.ServeMux, /users/../:send was redirected to the
// hub's /:send, and a client that re-signs on redirects reached everyone.
func TestDotNamesStayNames(t *testing.T) {
	cs := startServer(t)
	minter, err := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(user, group string) (*wstest.Client, string) {
		u, err := minter.ClientURL("chat", pubsub.TokenOptions{UserID: user, Groups: []string{group}})
		if err != nil {
			t.Fatal(err)
		}
		return wstest.DialJSON(t, u)
	}
	dots, dotsID := dial("..", "..")
	alice, aliceID := dial("alice", "room")
	quiet := func(step string) {
		t.Helper()
		for _, c := range []struct {
			c  *wstest.Client
			id string
		}{{dots, dotsID}, {alice, aliceID}} {
			restSend(t, cs, c.id, "barrier:"+step)
			if f := c.c.Next(); !strings.Contains(string(f.Data), "barrier:"+step) {
				t.Fatalf("%s: unexpected %s", step, f.Data)
			}
		}
	}

	for _, path := range []string{"hubs/chat/users/../:send", "hubs/chat/groups/../:send", "hubs/chat/users/%2E%2E/:send"} {
		if resp := sdkDo(t, cs, "POST", path, "text/plain", path); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		if m := dots.NextJSON(); m["data"] != path {
			t.Fatalf("%s: .. got %v", path, m)
		}
		quiet(url.PathEscape(path)) // alice got nothing
	}
	if resp := sdkDo(t, cs, "HEAD", "hubs/chat/users/..", "", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("userExists(..): %d", resp.StatusCode)
	}
	if resp := sdkDo(t, cs, "POST", "hubs/chat/users/../:closeConnections", "", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("closeUserConnections(..): %d", resp.StatusCode)
	}
	if info, _ := dots.ExpectClose(); info.Code != 1000 {
		t.Fatalf(".. closed with %+v", info)
	}
	restSend(t, cs, aliceID, "still here")
	if m := alice.NextJSON(); m["data"] != "still here" {
		t.Fatalf("alice got %v", m)
	}
}
