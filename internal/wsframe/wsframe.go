// Package wsframe builds server-to-client WebSocket frames (RFC 6455 §5.2,
// unmasked, unfragmented) so that a message is framed once and the same bytes
// are written to every recipient.
package wsframe

import "encoding/binary"

// Opcodes of the frames the service sends.
const (
	OpText   byte = 0x1
	OpBinary byte = 0x2
	OpClose  byte = 0x8
	OpPing   byte = 0x9
	OpPong   byte = 0xA
)

// Reserve is the room to leave in front of a payload for Finish to write the
// largest header.
const Reserve = 10

// Begin returns an empty buffer with Reserve bytes of room for the header and
// capacity for sizeHint bytes of payload. Append the payload, then call Finish.
func Begin(sizeHint int) []byte {
	return make([]byte, Reserve, Reserve+sizeHint)
}

// Finish writes the header for the payload buf[Reserve:] into the reserved
// room and returns the complete frame, a sub-slice of buf.
func Finish(buf []byte, opcode byte) []byte {
	n := len(buf) - Reserve
	var h [Reserve]byte
	hl := putHeader(&h, opcode, n)
	start := Reserve - hl
	copy(buf[start:], h[:hl])
	return buf[start:]
}

// Frame returns a new frame holding a copy of payload.
func Frame(opcode byte, payload []byte) []byte {
	return Finish(append(Begin(len(payload)), payload...), opcode)
}

func putHeader(h *[Reserve]byte, opcode byte, n int) int {
	h[0] = 0x80 | opcode // FIN
	switch {
	case n < 126:
		h[1] = byte(n)
		return 2
	case n <= 0xFFFF:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
		return 4
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
		return 10
	}
}

// AppendHeader appends the header of a frame whose payload of n bytes will
// follow, for frames written as several slices.
func AppendHeader(dst []byte, opcode byte, n int) []byte {
	var h [Reserve]byte
	hl := putHeader(&h, opcode, n)
	return append(dst, h[:hl]...)
}
