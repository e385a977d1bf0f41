package pubsub

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/embedwps/pubsub/internal/restauth"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/embedwps/pubsub/protocol"
	"github.com/golang-jwt/jwt/v5"
)

// Claim names of a client access token (client spec §2.2).
const (
	claimRole  = "role"
	claimGroup = "webpubsub.group"
	// The .NET JWT handler maps sub and role to these; accept them too.
	claimNameIdentifier = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier"
	claimRoleMapped     = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
)

var (
	errNoToken        = errors.New("no access token")
	errInvalidToken   = errors.New("invalid access token")
	errTokenAudience  = errors.New("the access token's audience is not this hub")
	errTokenGroupName = errors.New("the token contains an invalid group name")
)

// identity is what a valid client token says.
type identity struct {
	userID string
	roles  []string
	groups []string
	claims map[string][]string
}

// authenticateClient validates the client token of r for hub: HS256 with the
// primary or secondary key, exp required, nbf and iat checked when present,
// all with ClockSkew, and aud naming this hub's client endpoint.
func (s *Service) authenticateClient(r *http.Request, query url.Values, hub string) (*identity, error) {
	raw := query.Get("access_token")
	if raw == "" {
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			raw = strings.TrimSpace(h[7:])
		}
	}
	if raw == "" {
		return nil, errNoToken
	}
	claims, err := s.parseToken(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalidToken, err)
	}
	auds, err := claims.GetAudience()
	if err != nil || !s.audienceMatches(auds, r, hub) {
		return nil, errTokenAudience
	}
	id := &identity{claims: stringClaims(claims)}
	if sub, ok := claims["sub"].(string); ok {
		id.userID = sub
	} else if sub, ok := claims[claimNameIdentifier].(string); ok {
		id.userID = sub
	}
	id.roles = append(claimStrings(claims[claimRole]), claimStrings(claims[claimRoleMapped])...)
	id.groups = claimStrings(claims[claimGroup])
	for _, g := range id.groups {
		if !protocol.ValidGroupName(g) {
			return nil, errTokenGroupName
		}
	}
	return id, nil
}

// parseToken verifies a token's signature and lifetime: HS256 only, with the
// primary or secondary key, exp required, nbf and iat within ClockSkew.
func (s *Service) parseToken(raw string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithLeeway(s.cfg.ClockSkew),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	_, err := parser.ParseWithClaims(raw, claims, s.verificationKeys)
	return claims, err
}

func (s *Service) verificationKeys(*jwt.Token) (any, error) {
	set := jwt.VerificationKeySet{}
	for _, k := range s.keys {
		set.Keys = append(set.Keys, k)
	}
	return set, nil
}

// audienceMatches compares aud as client spec §2.2 recommends: any of
// http/https/ws/wss, host equal to the request's Host or the configured
// endpoint's, path ending in /client/hubs/{hub}; case-insensitive, trailing
// slash ignored, hub escaped or not.
func (s *Service) audienceMatches(auds []string, r *http.Request, hub string) bool {
	want := "/client/hubs/" + hub
	for _, a := range auds {
		u, err := url.Parse(strings.TrimSpace(a))
		if err != nil {
			continue
		}
		switch strings.ToLower(u.Scheme) {
		case "http", "https", "ws", "wss":
		default:
			continue
		}
		if !strings.EqualFold(u.Host, r.Host) && !strings.EqualFold(u.Host, s.endpoint.Host) {
			continue
		}
		p := strings.TrimRight(u.Path, "/") // url.Parse unescapes the path
		if len(p) >= len(want) && strings.EqualFold(p[len(p)-len(want):], want) {
			return true
		}
	}
	return false
}

// claimStrings reads a claim that may be a string or an array of strings.
func claimStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// stringClaims renders every claim as strings, the shape of the connect
// event's claims.
func stringClaims(claims jwt.MapClaims) map[string][]string {
	out := make(map[string][]string, len(claims))
	for k, v := range claims {
		if vs, ok := v.([]any); ok {
			for _, e := range vs {
				out[k] = append(out[k], claimString(e))
			}
			continue
		}
		out[k] = []string{claimString(v)}
	}
	return out
}

func claimString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case nil:
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// TokenOptions are the claims of a client access token.
type TokenOptions struct {
	// UserID becomes the sub claim: the connection's user.
	UserID string
	// Roles become the role claim, e.g. "webpubsub.joinLeaveGroup.room1".
	Roles []string
	// Groups become the webpubsub.group claim: joined on connect.
	Groups []string
	// Lifetime is how long the token is valid. Default 60 minutes, as
	// Azure's SDKs; at most MaxTokenLifetime.
	Lifetime time.Duration
}

// MaxTokenLifetime is the longest a client token may be valid: a token is
// needed only until its client connects, and a year covers one handed to a
// device for later.
const MaxTokenLifetime = 365 * 24 * time.Hour

// ErrInvalidTokenLifetime: TokenOptions.Lifetime is over MaxTokenLifetime.
var ErrInvalidTokenLifetime = errors.New("pubsub: a token lifetime is at most a year")

// ClientToken mints a client access token for hub, with the claims Azure's
// SDKs put in: aud {Endpoint}/client/hubs/{hub}, iat, exp, sub, role and
// webpubsub.group (arrays).
func (s *Service) ClientToken(hub string, opts TokenOptions) (string, error) {
	h, err := s.Hub(hub)
	if err != nil {
		return "", err
	}
	for _, g := range opts.Groups {
		if err := validGroup(g); err != nil {
			return "", err
		}
	}
	if opts.Lifetime > MaxTokenLifetime {
		return "", ErrInvalidTokenLifetime
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = time.Hour
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"aud": s.endpoint.String() + "/client/hubs/" + url.PathEscape(h.name),
		"iat": now.Unix(),
		"exp": now.Add(opts.Lifetime).Unix(),
	}
	if opts.UserID != "" {
		claims["sub"] = opts.UserID
	}
	if len(opts.Roles) > 0 {
		claims[claimRole] = opts.Roles
	}
	if len(opts.Groups) > 0 {
		claims[claimGroup] = opts.Groups
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.keys[0])
}

// ClientURL returns the WebSocket URL a client connects to:
// ws(s)://{host}/client/hubs/{hub}?access_token={token}.
func (s *Service) ClientURL(hub string, opts TokenOptions) (string, error) {
	token, err := s.ClientToken(hub, opts)
	if err != nil {
		return "", err
	}
	u := *s.endpoint
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	return u.String() + "/client/hubs/" + url.PathEscape(strings.ToLower(hub)) + "?access_token=" + url.QueryEscape(token), nil
}

var errUnauthorized = errors.New("pubsub: unauthorized")

func init() {
	restauth.ValidateToken = func(svc any, raw string, audience func(string) bool) error {
		return svc.(*Service).validateToken(raw, audience)
	}
	restauth.Endpoint = func(svc any) string { return svc.(*Service).endpoint.String() }
}

// validateToken checks a server access token, as the REST API receives it:
// HS256 signed with the primary or secondary key, exp required, nbf and iat
// checked when present (with ClockSkew), and an aud that audience accepts.
// Every failure wraps errUnauthorized.
func (s *Service) validateToken(raw string, audience func(aud string) bool) error {
	claims, err := s.parseToken(raw)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnauthorized, err)
	}
	auds, err := claims.GetAudience()
	if err != nil {
		return fmt.Errorf("%w: %v", errUnauthorized, err)
	}
	for _, a := range auds {
		if audience(a) {
			return nil
		}
	}
	return fmt.Errorf("%w: the token's audience is not this request", errUnauthorized)
}
