package pubsub_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/golang-jwt/jwt/v5"
)

const secondaryKey = "secondary-access-key-0123456789abcdef"

func signed(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClientTokenValidation(t *testing.T) {
	e := newEnv(t, pubsub.Config{SecondaryAccessKey: secondaryKey})
	aud := e.srv.URL + "/client/hubs/chat"
	exp := time.Now().Add(time.Hour).Unix()
	primary := []byte("primary-access-key-0123456789abcdef")

	cases := []struct {
		name   string
		token  string
		header bool
		want   int
	}{
		{"minted by the service", e.token(pubsub.TokenOptions{UserID: "u"}), false, http.StatusSwitchingProtocols},
		{"in the Authorization header", e.token(pubsub.TokenOptions{UserID: "u"}), true, http.StatusSwitchingProtocols},
		{"signed with the secondary key", signed(t, jwt.SigningMethodHS256, []byte(secondaryKey), jwt.MapClaims{"aud": aud, "exp": exp}), false, http.StatusSwitchingProtocols},
		{"aud as an array, ws scheme, upper case, trailing slash", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": []string{"WS://" + strings.TrimPrefix(e.srv.URL, "http://") + "/CLIENT/hubs/Chat/"}, "exp": exp}), false, http.StatusSwitchingProtocols},
		{"missing", "", false, http.StatusUnauthorized},
		{"garbage", "not-a-jwt", false, http.StatusUnauthorized},
		{"expired", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": aud, "exp": time.Now().Add(-10 * time.Minute).Unix()}), false, http.StatusUnauthorized},
		{"expired within the clock skew", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": aud, "exp": time.Now().Add(-time.Minute).Unix()}), false, http.StatusSwitchingProtocols},
		{"no exp", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": aud}), false, http.StatusUnauthorized},
		{"not yet valid", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": aud, "exp": exp, "nbf": time.Now().Add(10 * time.Minute).Unix()}), false, http.StatusUnauthorized},
		{"wrong key", signed(t, jwt.SigningMethodHS256, []byte("some-other-key"), jwt.MapClaims{"aud": aud, "exp": exp}), false, http.StatusUnauthorized},
		{"wrong audience hub", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": e.srv.URL + "/client/hubs/other", "exp": exp}), false, http.StatusUnauthorized},
		{"wrong audience host", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": "https://evil.example/client/hubs/chat", "exp": exp}), false, http.StatusUnauthorized},
		{"no audience", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"exp": exp}), false, http.StatusUnauthorized},
		{"alg none", signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"aud": aud, "exp": exp}), false, http.StatusUnauthorized},
		{"alg HS384", signed(t, jwt.SigningMethodHS384, primary, jwt.MapClaims{"aud": aud, "exp": exp}), false, http.StatusUnauthorized},
		{"invalid group claim", signed(t, jwt.SigningMethodHS256, primary, jwt.MapClaims{"aud": aud, "exp": exp, "webpubsub.group": []string{"  "}}), false, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := e.wsURL() + "/client/hubs/chat"
			h := http.Header{}
			if tc.header {
				h.Set("Authorization", "Bearer "+tc.token)
			} else if tc.token != "" {
				u += "?access_token=" + url.QueryEscape(tc.token)
			}
			if got := wstest.HandshakeStatus(t, u, h); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
}

func TestClientEndpointForms(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	tok := url.QueryEscape(e.token(pubsub.TokenOptions{UserID: "alice"}))

	// Both URL forms reach the same hub, whose name is case-insensitive.
	for _, u := range []string{
		e.wsURL() + "/client/hubs/chat?access_token=" + tok,
		e.wsURL() + "/client/hubs/CHAT?access_token=" + tok,
		e.wsURL() + "/client/?hub=chat&access_token=" + tok,
	} {
		c, id := wstest.DialJSON(t, u)
		if ok, _ := e.hub.ConnectionExists(t.Context(), id); !ok {
			t.Fatalf("%s: connection %s not in hub chat", u, id)
		}
		c.Conn.WriteClose(1000, nil)
		c.ExpectClose()
	}

	for name, tc := range map[string]struct {
		url  string
		want int
	}{
		"hub name with a bad character":  {e.wsURL() + "/client/hubs/ch@t?access_token=" + tok, http.StatusBadRequest},
		"hub name starting with a digit": {e.wsURL() + "/client/hubs/1chat?access_token=" + tok, http.StatusBadRequest},
		"hub name too long":              {e.wsURL() + "/client/hubs/" + strings.Repeat("a", 129) + "?access_token=" + tok, http.StatusBadRequest},
		"no hub in the query form":       {e.wsURL() + "/client/?access_token=" + tok, http.StatusNotFound},
	} {
		t.Run(name, func(t *testing.T) {
			if got := wstest.HandshakeStatus(t, tc.url, nil); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}

	t.Run("not a WebSocket request", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/client/hubs/chat?access_token="+tok, nil)
		req.Close = true
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d, want 400", resp.StatusCode)
		}
	})
}

func TestAnonymousConnectPolicy(t *testing.T) {
	deny := newEnv(t, pubsub.Config{})
	if got := wstest.HandshakeStatus(t, deny.wsURL()+"/client/hubs/chat", nil); got != http.StatusUnauthorized {
		t.Fatalf("deny: status %d, want 401", got)
	}
	allow := newEnv(t, pubsub.Config{AllowAnonymous: true})
	c, _ := wstest.DialJSON(t, allow.wsURL()+"/client/hubs/chat")
	_ = c
	// A bad token is still refused when anonymous clients are allowed.
	if got := wstest.HandshakeStatus(t, allow.wsURL()+"/client/hubs/chat?access_token=bad", nil); got != http.StatusUnauthorized {
		t.Fatalf("allow with a bad token: status %d, want 401", got)
	}
}

func TestClientURLAndTokenClaims(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	u, err := e.svc.ClientURL("Chat", pubsub.TokenOptions{UserID: "bob", Roles: []string{"webpubsub.sendToGroup"}, Groups: []string{"g1"}, Lifetime: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u, e.wsURL()+"/client/hubs/chat?access_token=") {
		t.Fatalf("client URL %s", u)
	}
	parsed, _ := url.Parse(u)
	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(parsed.Query().Get("access_token"), claims, func(*jwt.Token) (any, error) {
		return []byte("primary-access-key-0123456789abcdef"), nil
	}); err != nil {
		t.Fatal(err)
	}
	if claims["aud"] != e.srv.URL+"/client/hubs/chat" || claims["sub"] != "bob" {
		t.Fatalf("claims %v", claims)
	}
	if r, _ := claims["role"].([]any); len(r) != 1 || r[0] != "webpubsub.sendToGroup" {
		t.Fatalf("role claim %v", claims["role"])
	}
	if g, _ := claims["webpubsub.group"].([]any); len(g) != 1 || g[0] != "g1" {
		t.Fatalf("group claim %v", claims["webpubsub.group"])
	}
	exp, _ := claims.GetExpirationTime()
	if d := time.Until(exp.Time); d < 4*time.Minute || d > 6*time.Minute {
		t.Fatalf("lifetime %v", d)
	}
	// The user and the group of the token take effect.
	c, id := wstest.DialJSON(t, u)
	_ = c
	if ok, _ := e.hub.UserExists(t.Context(), "bob"); !ok {
		t.Fatal("user bob does not exist")
	}
	members, _ := e.hub.ListConnectionsInGroup(t.Context(), "g1")
	if len(members) != 1 || members[0].ConnectionID != id || members[0].UserID != "bob" {
		t.Fatalf("group g1 members %v", members)
	}
}

func TestClientTokenLifetimeIsBounded(t *testing.T) {
	svc, err := pubsub.New(pubsub.Config{AccessKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ClientToken("chat", pubsub.TokenOptions{Lifetime: pubsub.MaxTokenLifetime}); err != nil {
		t.Fatalf("a year: %v", err)
	}
	// 153,722,867 minutes made a token valid until 2319: time arithmetic
	// overflowed past the cap.
	for _, d := range []time.Duration{pubsub.MaxTokenLifetime + time.Second, 153722867 * time.Minute} {
		if _, err := svc.ClientToken("chat", pubsub.TokenOptions{Lifetime: d}); !errors.Is(err, pubsub.ErrInvalidTokenLifetime) {
			t.Fatalf("%v: %v", d, err)
		}
	}
}
