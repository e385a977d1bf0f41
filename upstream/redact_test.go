package upstream

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://app.azurewebsites.net/runtime/webhooks/webpubsub?code=KEY==": "https://app.azurewebsites.net/runtime/webhooks/webpubsub?code=***",
		"http://user:pass@h:1/{hub}/{event}?a=1&b&=c#frag":                    "http://***@h:1/{hub}/{event}?a=***&b=***",
		"http://h/api/{event}#frag":                                           "http://h/api/{event}",
		"http://h/mail@box/{event}":                                           "http://h/mail@box/{event}",
		"not a url ?code=KEY":                                                 "not a url ?code=***",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
	// Configuration errors quote the template without its secrets.
	for _, tmpl := range []string{"ftp://h/{event}?code=KEY", "http://{hub}.h/x?code=KEY"} {
		err := Config{Hubs: map[string]HubSettings{"chat": {EventHandlers: []EventHandlerSettings{{URLTemplate: tmpl}}}}}.validate()
		if err == nil || strings.Contains(err.Error(), "KEY") || !strings.Contains(err.Error(), "code=***") {
			t.Errorf("%s: %v", tmpl, err)
		}
	}
}
