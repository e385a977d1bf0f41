package upstream_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/upstream"
)

// A caller that gives up (a client that leaves during its handshake) while
// the abuse-protection check is in flight does not make the check fail for
// every later connect.
func TestCancelledCallerDoesNotFailValidation(t *testing.T) {
	arrived, release := make(chan struct{}, 4), make(chan struct{})
	up := newUpstream(t, func(r recorded, w http.ResponseWriter) {
		if r.method == http.MethodOptions {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-r.ctx.Done():
			}
		}
	})
	h := newHandler(t, all(up.srv.URL), upstream.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		_, err := h.Connect(ctx, &pubsub.ConnectRequest{ConnectionContext: pubsub.ConnectionContext{Hub: "chat", ConnectionID: "gone"}})
		errs <- err
	}()
	select {
	case <-arrived:
	case <-time.After(wstest.WaitFor):
		t.Fatal("no validation reached the upstream")
	}
	cancel()
	if err := <-errs; err == nil {
		t.Fatal("a cancelled connect succeeded")
	}
	close(release)
	if _, err := h.Connect(context.Background(), &pubsub.ConnectRequest{ConnectionContext: pubsub.ConnectionContext{Hub: "chat", ConnectionID: "next"}}); err != nil {
		t.Fatalf("the next connect: %v", err)
	}
}
