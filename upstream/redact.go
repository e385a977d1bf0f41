package upstream

import (
	"errors"
	"net/url"
	"strings"
)

// redactURL hides what a URL (or urlTemplate) may carry that is secret,
// for logs and errors: its user info and every query value (Azure Functions
// take their key in ?code=). The rest stays as written, placeholders too.
func redactURL(s string) string {
	s, query, hasQuery := strings.Cut(s, "?")
	s, _, _ = strings.Cut(s, "#")
	if i := strings.Index(s, "://"); i >= 0 {
		authority := s[i+3:]
		if j := strings.IndexByte(authority, '/'); j >= 0 {
			authority = authority[:j]
		}
		if at := strings.LastIndexByte(authority, '@'); at >= 0 {
			s = s[:i+3] + "***" + s[i+3+at:]
		}
	}
	if hasQuery {
		var keys []string
		for _, kv := range strings.Split(query, "&") {
			if k, _, _ := strings.Cut(kv, "="); k != "" {
				keys = append(keys, k+"=***")
			}
		}
		s += "?" + strings.Join(keys, "&")
	}
	return s
}

// redactErr hides the secrets of the URL an error quotes: net/http's client
// and url.Parse return a *url.Error with the whole URL.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	return err
}
