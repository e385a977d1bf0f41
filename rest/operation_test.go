package rest_test

import (
	"errors"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/rest"
)

// Operation names a request's operation, and gives its hub only when the
// service would take it as one: middlewares call it before the token is
// checked, so the path's hub is anyone's.
func TestOperationHubIsAHubName(t *testing.T) {
	svc, err := pubsub.New(pubsub.Config{AccessKey: "operation-test-key-0123456789abcdef"})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Shutdown(t.Context())
	for _, hub := range []string{"chat", "Chat", "a", "h_1`,.[]", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"1chat", "_chat", "<img src=x onerror=alert(1)>", "\xff\xfechat", "ch at", "chat%2Fx", "é"} {
		r := httptest.NewRequest("POST", "/api/hubs/"+url.PathEscape(hub)+"/:send?api-version=2024-12-01", nil)
		op, got := rest.Operation(r)
		if op != "sendToAll" {
			t.Fatalf("%q: operation %q", hub, op)
		}
		_, err := svc.Hub(hub)
		want := ""
		if err == nil {
			want = strings.ToLower(hub)
		} else if !errors.Is(err, pubsub.ErrInvalidHub) {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%q: hub %q, want %q (as Service.Hub has it)", hub, got, want)
		}
	}
	if op, hub := rest.Operation(httptest.NewRequest("GET", "/api/hubs/chat/:send", nil)); op != "" || hub != "" {
		t.Errorf("a method the route does not have: %q %q", op, hub)
	}
	if op, _ := rest.Operation(httptest.NewRequest("HEAD", "/api/health", nil)); op != "health" {
		t.Errorf("health: %q", op)
	}
}
