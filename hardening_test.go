package pubsub_test

import (
	"encoding/binary"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// A frame header whose 64-bit payload length has its top bit set (RFC 6455
// forbids it) is a protocol error for that client alone: gws v1.10.1 turned
// it into -1 and panicked in the read goroutine, which ended the process.
func TestNegativeFrameLengthClosesOnlyThatClient(t *testing.T) {
	e := newEnv(t, pubsub.Config{AllowAnonymous: true})
	other, otherID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "other"}))

	bad := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "bad"}))
	hdr := []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := bad.Write(hdr); err != nil {
		t.Fatal(err)
	}
	for {
		op, p, err := bad.ReadFrame()
		if err != nil {
			t.Fatalf("want a close frame, got %v", err)
		}
		if op == 0x8 {
			if code := binary.BigEndian.Uint16(p); code != 1002 {
				t.Fatalf("close %d %q, want 1002", code, p[2:])
			}
			break
		}
	}
	e.barrier(other, otherID)
}
