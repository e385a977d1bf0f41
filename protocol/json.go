package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The subprotocol names of spec §3.
const (
	JSONSubprotocol             = "json.webpubsub.azure.v1"
	JSONReliableSubprotocol     = "json.reliable.webpubsub.azure.v1"
	ProtobufSubprotocol         = "protobuf.webpubsub.azure.v1"
	ProtobufReliableSubprotocol = "protobuf.reliable.webpubsub.azure.v1"
)

// RequestType is the type of a client → service request.
type RequestType uint8

// Request types of spec §6.1.
const (
	JoinGroup RequestType = iota + 1
	LeaveGroup
	SendToGroup
	Event
	Ping
	SequenceAck
	// Invoke is an invocation of an upstream event that waits for its
	// invokeResponse (the JS SDK's invokeEvent); JSON subprotocols only.
	Invoke
	// CancelInvocation tells the service the client stopped waiting.
	CancelInvocation
	// SetGroupState, SubscribeGroupState and UnsubscribeGroupState are the
	// group state requests (groupstate.go); JSON subprotocols only.
	SetGroupState
	SubscribeGroupState
	UnsubscribeGroupState
	// Unsupported is a well-formed request of a type this service does not
	// implement (Request.Unsupported names it): protobuf stream starts,
	// group state on protobuf, or a type name it does not know. It is
	// answered with an error when the protocol has a frame for one, and the
	// connection stays.
	Unsupported
	// StreamStart, StreamData and StreamEnd are group streaming frames
	// (spec §6.1, JSON subprotocols only; stream.go).
	StreamStart
	StreamData
	StreamEnd
)

// String returns the wire name of the request type.
func (t RequestType) String() string {
	switch t {
	case JoinGroup:
		return "joinGroup"
	case LeaveGroup:
		return "leaveGroup"
	case SendToGroup:
		return "sendToGroup"
	case Event:
		return "event"
	case Ping:
		return "ping"
	case SequenceAck:
		return "sequenceAck"
	case Invoke:
		return "invoke"
	case CancelInvocation:
		return "cancelInvocation"
	case SetGroupState:
		return "setGroupState"
	case SubscribeGroupState:
		return "subscribeGroupState"
	case UnsubscribeGroupState:
		return "unsubscribeGroupState"
	case Unsupported:
		return "unsupported"
	case StreamStart:
		return "sendToGroup stream"
	case StreamData:
		return "streamData"
	case StreamEnd:
		return "streamEnd"
	}
	return "RequestType(" + strconv.Itoa(int(t)) + ")"
}

// Request is one decoded client request, whatever subprotocol carried it.
type Request struct {
	Type RequestType
	// AckID is the request's ackId; HasAckID says whether it had one.
	AckID    uint64
	HasAckID bool
	Group    string // joinGroup, leaveGroup, sendToGroup, group state
	Event    string // event, invoke
	NoEcho   bool   // sendToGroup
	DataType DataType
	// Data is the decoded payload: the UTF-8 text, the JSON text of a JSON
	// value, or the raw bytes of a binary or protobuf payload.
	Data       []byte
	SequenceID uint64 // sequenceAck
	// InvocationID is the client's id of an invoke or cancelInvocation.
	InvocationID string
	// Target is an invoke's target as sent ("event" when absent); the
	// decoder does not judge it, so that an unknown target fails that
	// invocation only.
	Target string
	// Metadata is the metadata of a sendToGroup or event (nil when none).
	Metadata map[string]string
	// TTLSeconds is a sendToGroup's ttlSeconds (0: never expires); the
	// decoder does not bound it, so that an out-of-range value fails that
	// request only.
	TTLSeconds uint64
	// State is a setGroupState's state; nil clears it.
	State map[string]string
	// Unsupported is the wire type of an Unsupported request, as sent.
	Unsupported string
	// StreamID is the stream of a group streaming frame (a stream start,
	// streamData or streamEnd), or of an Unsupported protobuf stream start.
	StreamID string
	// Stream holds the rest of a group streaming frame.
	Stream StreamRequest
}

// jsonRequest mirrors the JSON request schema. RawMessage fields are checked
// by hand so that a wrongly typed value is an invalid message, not a zero.
type jsonRequest struct {
	Type       string          `json:"type"`
	AckID      json.RawMessage `json:"ackId"`
	Group      *string         `json:"group"`
	Event      *string         `json:"event"`
	NoEcho     json.RawMessage `json:"noEcho"`
	DataType   *string         `json:"dataType"`
	Data       json.RawMessage `json:"data"`
	SequenceID json.RawMessage `json:"sequenceId"`
	// invoke, cancelInvocation
	InvocationID *string         `json:"invocationId"`
	Target       *string         `json:"target"`
	Metadata     json.RawMessage `json:"metadata"`
	TTLSeconds   json.RawMessage `json:"ttlSeconds"`
	State        json.RawMessage `json:"state"` // setGroupState
	// group streaming
	Stream           json.RawMessage `json:"stream"`
	StreamID         json.RawMessage `json:"streamId"`
	StreamSequenceID json.RawMessage `json:"streamSequenceId"`
	Error            json.RawMessage `json:"error"`
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidMessage}, args...)...)
}

// The refusals of a bad group or event name, which every codec checks.
var (
	errBadGroupName = invalid("group name must be 1 to 1024 characters and not all whitespace")
	errBadEventName = invalid("event name must match ^[a-z][a-z0-9_.-]{0,127}$")
)

// DecodeJSONRequest decodes one text frame of json.webpubsub.azure.v1 (or its
// reliable variant). Every error wraps ErrInvalidMessage.
func DecodeJSONRequest(frame []byte) (Request, error) {
	var raw jsonRequest
	if err := json.Unmarshal(frame, &raw); err != nil {
		return Request{}, invalid("%v", err)
	}
	var req Request
	var err error
	if req.AckID, req.HasAckID, err = decodeUint(raw.AckID, "ackId"); err != nil {
		return Request{}, err
	}
	switch {
	case strings.EqualFold(raw.Type, "joinGroup"):
		req.Type = JoinGroup
	case strings.EqualFold(raw.Type, "leaveGroup"):
		req.Type = LeaveGroup
	case strings.EqualFold(raw.Type, "sendToGroup"):
		if len(raw.Stream) > 0 && string(raw.Stream) != "null" {
			return decodeStreamStart(req, &raw)
		}
		req.Type = SendToGroup
	case strings.EqualFold(raw.Type, "event"):
		req.Type = Event
	case strings.EqualFold(raw.Type, "ping"):
		return Request{Type: Ping}, nil
	case strings.EqualFold(raw.Type, "sequenceAck"):
		id, ok, err := decodeUint(raw.SequenceID, "sequenceId")
		if err != nil {
			return Request{}, err
		}
		if !ok {
			return Request{}, invalid("sequenceAck needs a sequenceId")
		}
		return Request{Type: SequenceAck, SequenceID: id}, nil
	case strings.EqualFold(raw.Type, "invoke"):
		return decodeInvoke(&raw)
	case strings.EqualFold(raw.Type, "cancelInvocation"):
		if raw.InvocationID == nil || *raw.InvocationID == "" {
			return Request{}, invalid("cancelInvocation needs an invocationId")
		}
		return Request{Type: CancelInvocation, InvocationID: *raw.InvocationID}, nil
	case strings.EqualFold(raw.Type, "setGroupState"):
		req.Type = SetGroupState
		return decodeGroupStateRequest(req, &raw)
	case strings.EqualFold(raw.Type, "subscribeGroupState"):
		req.Type = SubscribeGroupState
		return decodeGroupStateRequest(req, &raw)
	case strings.EqualFold(raw.Type, "unsubscribeGroupState"):
		req.Type = UnsubscribeGroupState
		return decodeGroupStateRequest(req, &raw)
	case strings.EqualFold(raw.Type, "streamData"):
		return decodeStreamData(req, &raw)
	case strings.EqualFold(raw.Type, "streamEnd"):
		return decodeStreamEnd(req, &raw)
	case raw.Type == "":
		return Request{}, invalid("missing type")
	default:
		// A well-formed request of a type this service does not know (one
		// newer than this service) keeps its ackId, so that it can be
		// refused without closing the connection.
		req.Type, req.Unsupported = Unsupported, raw.Type
		return req, nil
	}

	if req.Type == Event {
		if raw.Event == nil || !ValidEventName(*raw.Event) {
			return Request{}, errBadEventName
		}
		req.Event = *raw.Event
	} else {
		if raw.Group == nil || !ValidGroupName(*raw.Group) {
			return Request{}, errBadGroupName
		}
		req.Group = *raw.Group
	}
	if req.Type == JoinGroup || req.Type == LeaveGroup {
		return req, nil
	}

	if req.Metadata, err = decodeMetadata(raw.Metadata); err != nil {
		return Request{}, err
	}
	if req.Type == SendToGroup {
		if req.TTLSeconds, _, err = decodeUint(raw.TTLSeconds, "ttlSeconds"); err != nil {
			return Request{}, err
		}
		// A sendToGroup with metadata and no data is empty text (spec §6.1).
		if req.Metadata != nil && raw.DataType == nil && (len(raw.Data) == 0 || string(raw.Data) == "null") {
			raw.Data = json.RawMessage(`""`)
			t := "text"
			raw.DataType = &t
		}
	}
	if req.Type == SendToGroup && len(raw.NoEcho) > 0 {
		switch string(raw.NoEcho) {
		case "true":
			req.NoEcho = true
		case "false", "null":
		default:
			return Request{}, invalid("noEcho must be a boolean")
		}
	}
	if raw.DataType != nil {
		if req.DataType, err = ParseDataType(*raw.DataType); err != nil {
			return Request{}, err
		}
	}
	if req.Data, err = decodeData(req.DataType, raw.Data); err != nil {
		return Request{}, err
	}
	return req, nil
}

// decodeInvoke decodes an invoke request: a non-empty invocationId, an
// event name as for event requests, and an optional payload (the JS SDK
// sends dataType and data only when it has data; without data the payload is
// empty text, whatever the dataType). An ackId, if any, is ignored: the invokeResponse is the answer.
func decodeInvoke(raw *jsonRequest) (Request, error) {
	if raw.InvocationID == nil || *raw.InvocationID == "" {
		return Request{}, invalid("invoke needs an invocationId")
	}
	req := Request{Type: Invoke, InvocationID: *raw.InvocationID, Target: "event"}
	if raw.Target != nil {
		req.Target = *raw.Target
	}
	if raw.Event == nil || !ValidEventName(*raw.Event) {
		return Request{}, errBadEventName
	}
	req.Event = *raw.Event
	var err error
	if raw.DataType != nil {
		if req.DataType, err = ParseDataType(*raw.DataType); err != nil {
			return Request{}, err
		}
	}
	if len(raw.Data) == 0 || string(raw.Data) == "null" {
		req.DataType, req.Data = Text, []byte{}
		return req, nil
	}
	if req.Data, err = decodeData(req.DataType, raw.Data); err != nil {
		return Request{}, err
	}
	return req, nil
}

// Metadata limits of spec §6.1.
const (
	maxMetadataKey   = 256
	maxMetadataValue = 1024
	maxMetadataTotal = 8 << 10
)

// ValidMetadataKey reports whether k is a metadata key of spec §6.1: an
// HTTP token (^[!#$%&'*+\-.^_`|~0-9a-z]+$, case-insensitive) of at most 256
// characters.
func ValidMetadataKey(k string) bool {
	if k == "" || len(k) > maxMetadataKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// ValidateMetadata checks metadata against spec §6.1: valid keys (no two
// equal case-insensitively, as they would be one header upstream), printable
// ASCII values of at most 1024 characters, at most 8 KiB in all.
func ValidateMetadata(md map[string]string) error {
	total := 0
	seen := make(map[string]bool, len(md))
	for k, v := range md {
		if !ValidMetadataKey(k) {
			return invalid("metadata key %q must match ^[!#$%%&'*+\\-.^_`|~0-9a-z]+$ and have at most 256 characters", k)
		}
		lk := strings.ToLower(k)
		if seen[lk] {
			return invalid("duplicate metadata key %q", k)
		}
		seen[lk] = true
		if len(v) > maxMetadataValue {
			return invalid("metadata value of %q is longer than 1024 characters", k)
		}
		for i := 0; i < len(v); i++ {
			if v[i] < 0x20 || v[i] > 0x7e {
				return invalid("metadata value of %q must be printable ASCII", k)
			}
		}
		total += len(k) + len(v)
	}
	if total > maxMetadataTotal {
		return invalid("metadata is larger than 8 KiB")
	}
	return nil
}

// decodeMetadata reads an optional metadata object of strings, refusing
// duplicate keys, which a map would silently merge.
func decodeMetadata(raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, invalid("metadata must be an object of strings")
	}
	md := map[string]string{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid("metadata: %v", err)
		}
		k, _ := tok.(string)
		tok, err = dec.Token()
		v, ok := tok.(string)
		if err != nil || !ok {
			return nil, invalid("metadata values must be strings")
		}
		if _, dup := md[k]; dup {
			return nil, invalid("duplicate metadata key %q", k)
		}
		md[k] = v
	}
	if err := ValidateMetadata(md); err != nil {
		return nil, err
	}
	if len(md) == 0 {
		return nil, nil
	}
	return md, nil
}

// decodeUint reads an optional JSON unsigned integer (ackId, sequenceId).
// null counts as absent; strings, negatives, fractions and exponents do not
// count as integers.
func decodeUint(raw json.RawMessage, field string) (uint64, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false, nil
	}
	v, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		return 0, false, invalid("%s must be an unsigned 64-bit integer", field)
	}
	return v, true, nil
}

func decodeData(t DataType, raw json.RawMessage) ([]byte, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, invalid("data is required")
	}
	switch t {
	case JSON:
		// Compact so that the forwarded value carries no stray whitespace; the
		// decoder already proved it valid.
		var buf bytes.Buffer
		buf.Grow(len(raw))
		if err := json.Compact(&buf, raw); err != nil {
			return nil, invalid("%v", err)
		}
		return buf.Bytes(), nil
	case Text:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, invalid("text data must be a string")
		}
		return []byte(s), nil
	default: // Binary, Protobuf
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, invalid("%s data must be a base64 string", t)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, invalid("%s data is not valid base64", t)
		}
		return b, nil
	}
}

// The service → client frames of spec §6.2. Each Append function appends one
// complete JSON frame to dst and returns the extended slice, so that callers
// can reserve room for a WebSocket header in front and encode in place.

// AckError names of spec §6.2, and TooManyRequests, this service's answer
// to a client over its message rate (clients must tolerate new names).
const (
	AckForbidden           = "Forbidden"
	AckDuplicate           = "Duplicate"
	AckInternalServerError = "InternalServerError"
	AckBadRequest          = "BadRequest"
	AckTooManyRequests     = "TooManyRequests"
)

// AppendAck appends an ack frame. An empty errName means success.
func AppendAck(dst []byte, ackID uint64, errName, errMessage string) []byte {
	dst = append(dst, `{"type":"ack","ackId":`...)
	dst = strconv.AppendUint(dst, ackID, 10)
	if errName == "" {
		return append(dst, `,"success":true}`...)
	}
	dst = append(dst, `,"success":false,"error":{"name":`...)
	dst = AppendString(dst, errName)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, errMessage)
	return append(dst, "}}"...)
}

// AppendInvokeResponse appends a successful invokeResponse; dataType and
// data are omitted when data is nil (the handler replied nothing).
func AppendInvokeResponse(dst []byte, invocationID string, t DataType, data []byte) []byte {
	dst = append(dst, `{"type":"invokeResponse","invocationId":`...)
	dst = AppendString(dst, invocationID)
	dst = append(dst, `,"success":true`...)
	if data == nil {
		return append(dst, '}')
	}
	return appendPayload(dst, t, data)
}

// AppendInvokeError appends a failed invokeResponse.
func AppendInvokeError(dst []byte, invocationID, errName, errMessage string) []byte {
	dst = append(dst, `{"type":"invokeResponse","invocationId":`...)
	dst = AppendString(dst, invocationID)
	dst = append(dst, `,"success":false,"error":{"name":`...)
	dst = AppendString(dst, errName)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, errMessage)
	return append(dst, "}}"...)
}

// AppendGroupMessage appends a message from a group. fromUserID is omitted
// when empty (published by the server or by an anonymous connection).
func AppendGroupMessage(dst []byte, group, fromUserID string, t DataType, data []byte) []byte {
	return AppendGroupMessageWithMetadata(dst, group, fromUserID, nil, t, data)
}

// AppendGroupMessageWithMetadata appends a message from a group with the
// publisher's metadata (omitted when empty), keys in sorted order.
func AppendGroupMessageWithMetadata(dst []byte, group, fromUserID string, metadata map[string]string, t DataType, data []byte) []byte {
	dst = append(dst, `{"type":"message","from":"group","group":`...)
	dst = AppendString(dst, group)
	if fromUserID != "" {
		dst = append(dst, `,"fromUserId":`...)
		dst = AppendString(dst, fromUserID)
	}
	if len(metadata) > 0 {
		dst = append(dst, `,"metadata":{`...)
		for i, k := range sortedKeys(metadata) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, k)
			dst = append(dst, ':')
			dst = AppendString(dst, metadata[k])
		}
		dst = append(dst, '}')
	}
	return appendPayload(dst, t, data)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// AppendServerMessage appends a message from the server.
func AppendServerMessage(dst []byte, t DataType, data []byte) []byte {
	dst = append(dst, `{"type":"message","from":"server"`...)
	return appendPayload(dst, t, data)
}

// appendPayload appends `,"dataType":…,"data":…}`.
func appendPayload(dst []byte, t DataType, data []byte) []byte {
	dst = append(dst, `,"dataType":"`...)
	dst = append(dst, t.String()...)
	dst = append(dst, `","data":`...)
	switch t {
	case JSON:
		if len(data) == 0 {
			dst = append(dst, `""`...)
		} else {
			dst = append(dst, data...)
		}
	case Text:
		dst = AppendString(dst, data)
	default:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, data)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// AppendConnected appends the "connected" system message. An empty userID is
// sent as null (anonymous); reconnectionToken is omitted when empty.
func AppendConnected(dst []byte, userID, connectionID, reconnectionToken string) []byte {
	dst = append(dst, `{"type":"system","event":"connected","userId":`...)
	if userID == "" {
		dst = append(dst, "null"...)
	} else {
		dst = AppendString(dst, userID)
	}
	dst = append(dst, `,"connectionId":`...)
	dst = AppendString(dst, connectionID)
	if reconnectionToken != "" {
		dst = append(dst, `,"reconnectionToken":`...)
		dst = AppendString(dst, reconnectionToken)
	}
	return append(dst, '}')
}

// AppendDisconnected appends the "disconnected" system message.
func AppendDisconnected(dst []byte, reason string) []byte {
	dst = append(dst, `{"type":"system","event":"disconnected","message":`...)
	dst = AppendString(dst, reason)
	return append(dst, '}')
}

// AppendPong appends the reply to a ping request.
func AppendPong(dst []byte) []byte { return append(dst, `{"type":"pong"}`...) }

const hexDigits = "0123456789abcdef"

// AppendString appends s (a string or bytes, without copying them first) as
// a JSON string. Invalid UTF-8 becomes U+FFFD, as encoding/json does, so the
// frame is always valid JSON in a valid text frame.
func AppendString[T ~string | ~[]byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if i += plainPrefix(s[i:]); i >= len(s) {
			break
		}
		c := s[i]
		if c < 0x80 {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		// At most 4 bytes: the conversion stays on the stack.
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func jsonValid(b []byte) bool { return json.Valid(b) }

func toValidUTF8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// plainPrefix is how many bytes at the start of s a JSON string holds as
// they are: ASCII from 0x20 up, but for '"' and '\\'. It reads 32 bytes at
// a time, as 4 words (the usual word tricks: a byte below 0x20, a byte
// equal to '"' or '\\', a byte with its high bit set), as payloads are
// mostly such bytes.
func plainPrefix[T ~string | ~[]byte](s T) int {
	i := 0
	for ; i+32 <= len(s); i += 32 {
		w := s[i : i+32]
		if (notPlain(word(w[0:8]))|notPlain(word(w[8:16]))|notPlain(word(w[16:24]))|notPlain(word(w[24:32])))&highBits != 0 {
			break
		}
	}
	for ; i+8 <= len(s); i += 8 {
		if notPlain(word(s[i:i+8]))&highBits != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			break
		}
	}
	return i
}

const lowBits, highBits = 0x0101010101010101, 0x8080808080808080

// word is the first 8 bytes of w, little-endian (one load, once inlined).
func word[T ~string | ~[]byte](w T) uint64 {
	_ = w[7]
	return uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
		uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
}

// notPlain has the high bit of each byte of x set, at least, that is not
// plain; a zero result under highBits means all 8 are.
func notPlain(x uint64) uint64 {
	quote, backslash := x^(lowBits*'"'), x^(lowBits*'\\')
	return (x-lowBits*0x20)&^x | (quote-lowBits)&^quote | (backslash-lowBits)&^backslash | x
}
