// Package protocol encodes and decodes the frames of Azure Web PubSub's client
// subprotocols (json.webpubsub.azure.v1 and its family). It owns the wire
// format only: no sockets, no registry, no goroutines. Every decoder is fuzzed.
package protocol

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// DataType is the kind of payload a message carries, in Azure Web PubSub's own
// words: "json", "text", "binary" or "protobuf".
type DataType uint8

const (
	// JSON is a JSON value, embedded as-is in JSON frames.
	JSON DataType = iota
	// Text is a UTF-8 string.
	Text
	// Binary is raw bytes, base64 in JSON frames.
	Binary
	// Protobuf is a serialized google.protobuf.Any, base64 in JSON frames.
	Protobuf
)

// String returns the dataType value used on the wire.
func (t DataType) String() string {
	switch t {
	case JSON:
		return "json"
	case Text:
		return "text"
	case Binary:
		return "binary"
	case Protobuf:
		return "protobuf"
	}
	return fmt.Sprintf("DataType(%d)", uint8(t))
}

// IsBinary reports whether a simple (raw) WebSocket client receives this
// payload as a binary frame rather than a text frame (spec §6.3).
func (t DataType) IsBinary() bool { return t == Binary || t == Protobuf }

// ParseDataType maps a wire dataType to a DataType. The empty string is JSON,
// the protocol's default. Matching is case-insensitive like the type field.
func ParseDataType(s string) (DataType, error) {
	switch {
	case s == "" || strings.EqualFold(s, "json"):
		return JSON, nil
	case strings.EqualFold(s, "text"):
		return Text, nil
	case strings.EqualFold(s, "binary"):
		return Binary, nil
	case strings.EqualFold(s, "protobuf"):
		return Protobuf, nil
	}
	return 0, fmt.Errorf("%w: unknown dataType %q", ErrInvalidMessage, s)
}

// ErrInvalidMessage is wrapped by every decode error: the frame does not match
// the subprotocol, and the service declines the client (close 1007).
var ErrInvalidMessage = errors.New("invalid message")

// MaxGroupNameLength is the longest group name the service accepts.
const MaxGroupNameLength = 1024

// ValidGroupName reports whether g is a valid group name: 1 to 1024
// characters of valid UTF-8, not all whitespace (the REST swagger's rule,
// used by the client protocol too).
func ValidGroupName(g string) bool {
	if g == "" || len(g) > MaxGroupNameLength || !utf8.ValidString(g) {
		return false
	}
	return strings.TrimSpace(g) != ""
}

// ValidEventName reports whether e matches ^[a-z][a-z0-9_.-]{0,127}$
// case-insensitively, the rule for user event names.
func ValidEventName(e string) bool {
	if e == "" || len(e) > 128 {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i] | 0x20 // fold ASCII letters to lower case
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (e[i] >= '0' && e[i] <= '9' || e[i] == '_' || e[i] == '.' || e[i] == '-'):
		default:
			return false
		}
	}
	return true
}
