package livetrace

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/golang-jwt/jwt/v5"
)

// audience is the aud of a live trace token. It is no URL, so that neither
// the client endpoint (aud …/client/hubs/{hub}) nor the REST API (aud: the
// request's URL) accepts a live trace token, and a token of theirs is not
// one of these.
const audience = "urn:embedwps:livetrace"

// The reasons a stream is refused, shown by the page.
var (
	errNoToken  = errors.New("live trace needs an access token: open the live trace URL the server printed (it ends with #access_token=…)")
	errBadToken = errors.New("invalid live trace token")
	errAudience = errors.New("this token is not a live trace token")
)

// Token mints a live trace token valid for ttl: HS256 with the primary
// key, aud specific to live trace. URL puts it in a link.
func (t *Trace) Token(ttl time.Duration) (string, error) {
	if ttl <= 0 || ttl > pubsub.MaxTokenLifetime {
		return "", ErrTokenLifetime
	}
	now := time.Now()
	claims := jwt.MapClaims{"aud": audience, "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.keys[0])
}

// authenticate checks r's bearer token as the service checks its own:
// HS256 with either key, exp required, iat and nbf within ClockSkew; and
// the live trace audience. It returns when the token expires.
func (t *Trace) authenticate(r *http.Request) (time.Time, error) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") || strings.TrimSpace(h[7:]) == "" {
		return time.Time{}, errNoToken
	}
	claims := jwt.MapClaims{}
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithLeeway(t.opts.ClockSkew),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithAudience(audience),
	)
	_, err := parser.ParseWithClaims(strings.TrimSpace(h[7:]), claims, func(*jwt.Token) (any, error) {
		set := jwt.VerificationKeySet{}
		for _, k := range t.keys {
			set.Keys = append(set.Keys, k)
		}
		return set, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return time.Time{}, errAudience
	case errors.Is(err, jwt.ErrTokenExpired):
		return time.Time{}, fmt.Errorf("%w: it expired; open a new live trace URL", errBadToken)
	case err != nil:
		return time.Time{}, fmt.Errorf("%w: %v", errBadToken, err)
	}
	exp, _ := claims.GetExpirationTime()
	return exp.Add(t.opts.ClockSkew), nil
}
