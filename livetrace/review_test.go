package livetrace

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestRESTHubOfHostilePathIsBounded: a REST request needs no token to be
// traced, so its hub segment is anyone's: one that is no hub name (too
// long, or markup) must not become the event's hub, which every page
// shows, filters on and keeps in its list of hubs; and the event stays
// small whatever the path.
func TestRESTHubOfHostilePathIsBounded(t *testing.T) {
	e := newEnv(t, Options{})
	s := e.open("")
	long := strings.Repeat("a", 40<<10) // under the test reader's line limit
	for _, hub := range []string{long, "%3Cimg%20src=x%20onerror=alert(1)%3E", "%FF%FEchat"} {
		u := e.srv.URL + "/api/hubs/" + hub + "/:send?api-version=2024-12-01"
		if st := e.restWith(http.MethodPost, u, "x", ""); st < 400 {
			t.Fatalf("unauthenticated send: %d", st)
		}
		ev := s.expect(kindREST)
		if ev.Hub != "" {
			t.Errorf("hub of %.40q…: %d bytes %.60q, want none (no hub has that name)", hub, len(ev.Hub), ev.Hub)
		}
		if len(ev.Path) > maxPath+len("…") || !utf8.ValidString(ev.Path) {
			t.Errorf("path of %d bytes", len(ev.Path))
		}
	}
	if raw := s.rawText(); len(raw) > 8<<10 {
		t.Errorf("the stream carried %d bytes for three small events", len(raw))
	}
}
