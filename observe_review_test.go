package pubsub_test

import (
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A client whose socket goes away without a close frame (its process was
// killed, its network dropped: the kernel sends a FIN) lost its
// connection: CloseReasonConnectionLost says "the transport failed, no
// close frame". It is not a normal close.
func TestObserverSocketClosedWithoutCloseFrameIsConnectionLost(t *testing.T) {
	o := newObserved()
	e := newEnv(t, pubsub.Config{Observers: []pubsub.Observer{o}})
	gone := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "gone"}))
	must(t, gone.Close()) // no close frame
	o.closedAs(t, "gone", pubsub.CloseReasonConnectionLost)
}
