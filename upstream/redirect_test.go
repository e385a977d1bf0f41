package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// A redirect would carry ce-signature, the user id and the connection id to
// another host: it is a failed call, never followed, with the default
// client or the application's.
func TestRedirectsAreNotFollowed(t *testing.T) {
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"default client", nil}, {"application's client", &http.Client{}}} {
		t.Run(c.name, func(t *testing.T) {
			elsewhere := newUpstream(t, nil)
			redirect := func(w http.ResponseWriter) {
				w.Header().Set("Location", elsewhere.srv.URL+"/stolen")
				w.WriteHeader(http.StatusTemporaryRedirect)
			}
			up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
				switch {
				case r.header.Get("ce-eventName") == "connect" && r.header.Get("ce-userId") == "redirected",
					r.header.Get("ce-eventName") == "hop":
					redirect(w)
				}
			})
			e := newEnv(t, all(up.srv.URL), upstream.Options{Client: c.client})

			if got := wstest.HandshakeStatus(t, e.url(t, "chat", pubsub.TokenOptions{UserID: "redirected"}), nil); got != http.StatusInternalServerError {
				t.Errorf("redirected connect: status %d, want 500", got)
			}
			pc, _ := wstest.DialJSON(t, e.url(t, "chat", pubsub.TokenOptions{UserID: "u"}))
			pc.Send(`{"type":"event","event":"hop","ackId":1,"dataType":"text","data":"x"}`)
			pc.ExpectAck(1, "InternalServerError")

			if n := elsewhere.count(http.MethodPost) + elsewhere.count(http.MethodOptions); n != 0 {
				t.Errorf("the redirect was followed: %d requests reached the other host", n)
			}
			if c.client != nil && c.client.CheckRedirect != nil {
				t.Error("the application's client was changed")
			}
		})
	}

	t.Run("abuse protection", func(t *testing.T) {
		elsewhere := newUpstream(t, nil)
		up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
			if r.method == http.MethodOptions {
				w.Header().Set("Location", elsewhere.srv.URL+"/validate")
				w.WriteHeader(http.StatusTemporaryRedirect)
			}
		})
		up.allowOrigin = ""
		h := newHandler(t, all(up.srv.URL), upstream.Options{})
		_, err := h.Connect(context.Background(), &pubsub.ConnectRequest{ConnectionContext: pubsub.ConnectionContext{Hub: "chat", ConnectionID: "c1"}})
		if !isRefusal(err, http.StatusInternalServerError) {
			t.Errorf("connect after a redirected validation: %v, want a 500 refusal", err)
		}
		if n := elsewhere.count(http.MethodOptions) + elsewhere.count(http.MethodGet); n != 0 {
			t.Errorf("the validation's redirect was followed: %d requests reached the other host", n)
		}
		if n := up.count(http.MethodPost); n != 0 {
			t.Errorf("%d events sent to a handler whose validation was redirected", n)
		}
	})
}

func isRefusal(err error, status int) bool {
	var ce *pubsub.ConnectError
	return errors.As(err, &ce) && ce.Status == status
}
