package wsframe

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestFrameHeaders(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 1 << 20} {
		payload := bytes.Repeat([]byte{'x'}, n)
		f := Frame(OpText, payload)
		if f[0] != 0x81 {
			t.Fatalf("n=%d: first byte %#x, want FIN|text", n, f[0])
		}
		var got, hl int
		switch l := int(f[1]); {
		case l < 126:
			got, hl = l, 2
		case l == 126:
			got, hl = int(binary.BigEndian.Uint16(f[2:])), 4
		default:
			got, hl = int(binary.BigEndian.Uint64(f[2:])), 10
		}
		if f[1]&0x80 != 0 {
			t.Fatalf("n=%d: server frames must not be masked", n)
		}
		if got != n || len(f) != hl+n || !bytes.Equal(f[hl:], payload) {
			t.Fatalf("n=%d: header says %d, frame %d bytes", n, got, len(f))
		}
		// The minimal length encoding, as RFC 6455 requires.
		if (n < 126 && hl != 2) || (n >= 126 && n <= 0xFFFF && hl != 4) || (n > 0xFFFF && hl != 10) {
			t.Fatalf("n=%d: header length %d", n, hl)
		}
	}
}
