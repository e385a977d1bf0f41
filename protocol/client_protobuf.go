package protocol

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The client's side of protobuf.webpubsub.azure.v1 and
// protobuf.reliable.webpubsub.azure.v1 (spec §9, appendix A.1): a client
// encodes its Requests as UpstreamMessages and decodes the service's
// DownstreamMessages into ServerMessages. Both are written by hand with
// protowire, the encoder so that it writes no more than a request needs, the
// decoder so that it can be lenient where the service is (see
// DecodeProtobufServerMessage).

// ErrNotInProtobuf is returned by AppendProtobufRequest for a request the
// protobuf subprotocols have no frame for: invoke and cancelInvocation, group
// streams, group state, Unsupported, an unknown type, or a value a protobuf
// field cannot hold (a ttlSeconds above 2³²−1). Such a request can be sent
// on the JSON subprotocols only.
var ErrNotInProtobuf = errors.New("the protobuf subprotocols cannot carry this request")

// UpstreamMessage oneof fields, and the fields of its messages.
const (
	upstreamSendToGroup = 1
	upstreamEvent       = 5
	upstreamJoinGroup   = 6
	upstreamLeaveGroup  = 7
	upstreamSequenceAck = 8
	upstreamPing        = 9

	// SendToGroupMessage
	sendGroup    = 1
	sendAckID    = 2
	sendData     = 3
	sendNoEcho   = 4
	sendTTL      = 5
	sendMetadata = 6

	// EventMessage
	eventName     = 1
	eventData     = 2
	eventAckID    = 3
	eventMetadata = 4

	// JoinGroupMessage, LeaveGroupMessage
	groupName  = 1
	groupAckID = 2

	// MessageData oneof
	messageText     = 1
	messageBinary   = 2
	messageProtobuf = 3
	messageJSON     = 4
)

// AppendProtobufRequest appends req as one binary frame of the protobuf
// subprotocols: a serialized UpstreamMessage, which DecodeProtobufRequest
// decodes back into req. It carries joinGroup, leaveGroup, sendToGroup (with
// noEcho, ttlSeconds and metadata), event (with metadata), sequenceAck and
// ping; the ackId of the first four when HasAckID (ping and sequenceAck have
// none). Fields a request type does not use are ignored.
//
// A request the service would decline is refused with an error wrapping
// ErrInvalidMessage, as DecodeProtobufRequest would (an invalid group or
// event name or metadata, text or JSON data that is not valid UTF-8, JSON
// data that is no JSON value, protobuf data that is no serialized
// google.protobuf.Any, an unknown DataType); one the protocol cannot carry
// with an error wrapping ErrNotInProtobuf. On error dst is returned as it
// was.
//
// Protobuf data is written as it is; the service re-serializes the Any
// (deterministically), so what it decodes is equal as a message, and equal
// as bytes when Data was serialized deterministically too.
func AppendProtobufRequest(dst []byte, req Request) ([]byte, error) {
	switch req.Type {
	case JoinGroup, LeaveGroup:
		if !ValidGroupName(req.Group) {
			return dst, invalid("group name must be 1 to 1024 characters of UTF-8 and not all whitespace")
		}
		field := protowire.Number(upstreamJoinGroup)
		if req.Type == LeaveGroup {
			field = upstreamLeaveGroup
		}
		n := pbcSizeBytes(groupName, len(req.Group)) + pbcSizeAckID(groupAckID, req)
		dst = protowire.AppendTag(dst, field, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = pbcAppendString(dst, groupName, req.Group)
		return pbcAppendAckID(dst, groupAckID, req), nil

	case SendToGroup:
		if !ValidGroupName(req.Group) {
			return dst, invalid("group name must be 1 to 1024 characters of UTF-8 and not all whitespace")
		}
		if req.TTLSeconds > math.MaxUint32 {
			return dst, fmt.Errorf("%w: ttlSeconds %d is more than a uint32", ErrNotInProtobuf, req.TTLSeconds)
		}
		if err := pbcValidatePayload(req); err != nil {
			return dst, err
		}
		n := pbcSizeBytes(sendGroup, len(req.Group)) +
			pbcSizeAckID(sendAckID, req) +
			pbcSizeBytes(sendData, pbcSizeMessageData(req.DataType, req.Data)) +
			pbcSizeMetadata(sendMetadata, req.Metadata)
		if req.NoEcho {
			n += protowire.SizeTag(sendNoEcho) + 1
		}
		if req.TTLSeconds != 0 {
			n += protowire.SizeTag(sendTTL) + protowire.SizeVarint(req.TTLSeconds)
		}
		dst = protowire.AppendTag(dst, upstreamSendToGroup, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = pbcAppendString(dst, sendGroup, req.Group)
		dst = pbcAppendAckID(dst, sendAckID, req)
		dst = pbcAppendMessageData(dst, sendData, req.DataType, req.Data)
		if req.NoEcho {
			dst = protowire.AppendTag(dst, sendNoEcho, protowire.VarintType)
			dst = protowire.AppendVarint(dst, 1)
		}
		if req.TTLSeconds != 0 {
			dst = protowire.AppendTag(dst, sendTTL, protowire.VarintType)
			dst = protowire.AppendVarint(dst, req.TTLSeconds)
		}
		return pbcAppendMetadata(dst, sendMetadata, req.Metadata), nil

	case Event:
		if !ValidEventName(req.Event) {
			return dst, errBadEventName
		}
		if err := pbcValidatePayload(req); err != nil {
			return dst, err
		}
		n := pbcSizeBytes(eventName, len(req.Event)) +
			pbcSizeBytes(eventData, pbcSizeMessageData(req.DataType, req.Data)) +
			pbcSizeAckID(eventAckID, req) +
			pbcSizeMetadata(eventMetadata, req.Metadata)
		dst = protowire.AppendTag(dst, upstreamEvent, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = pbcAppendString(dst, eventName, req.Event)
		dst = pbcAppendMessageData(dst, eventData, req.DataType, req.Data)
		dst = pbcAppendAckID(dst, eventAckID, req)
		return pbcAppendMetadata(dst, eventMetadata, req.Metadata), nil

	case SequenceAck:
		n := 0
		if req.SequenceID != 0 { // proto3: a zero is not written
			n = protowire.SizeTag(1) + protowire.SizeVarint(req.SequenceID)
		}
		dst = protowire.AppendTag(dst, upstreamSequenceAck, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		if req.SequenceID != 0 {
			dst = protowire.AppendTag(dst, 1, protowire.VarintType)
			dst = protowire.AppendVarint(dst, req.SequenceID)
		}
		return dst, nil

	case Ping:
		dst = protowire.AppendTag(dst, upstreamPing, protowire.BytesType)
		return protowire.AppendVarint(dst, 0), nil
	}
	return dst, fmt.Errorf("%w: %v", ErrNotInProtobuf, req.Type)
}

// pbcValidatePayload checks a sendToGroup's or event's data and metadata as
// DecodeProtobufRequest will.
func pbcValidatePayload(req Request) error {
	switch req.DataType {
	case Text:
		if !utf8.Valid(req.Data) {
			return invalid("text data is not valid UTF-8")
		}
	case JSON:
		if !utf8.Valid(req.Data) || !jsonValid(req.Data) {
			return invalid("json data is not a JSON value in valid UTF-8")
		}
	case Binary:
	case Protobuf:
		if err := proto.Unmarshal(req.Data, new(anypb.Any)); err != nil {
			return invalid("protobuf data is not a serialized google.protobuf.Any: %v", err)
		}
	default:
		return invalid("unknown data type %v", req.DataType)
	}
	if len(req.Metadata) > 0 {
		return ValidateMetadata(req.Metadata)
	}
	return nil
}

func pbcSizeBytes(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func pbcAppendString(dst []byte, num protowire.Number, s string) []byte {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendString(dst, s)
}

func pbcSizeAckID(num protowire.Number, req Request) int {
	if !req.HasAckID {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(req.AckID)
}

func pbcAppendAckID(dst []byte, num protowire.Number, req Request) []byte {
	if !req.HasAckID {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, req.AckID)
}

// pbcMessageDataField is the MessageData oneof field of a data type (json
// in json_data, field 4 of the newest proto, as the service writes it).
func pbcMessageDataField(t DataType) protowire.Number {
	switch t {
	case Text:
		return messageText
	case Binary:
		return messageBinary
	case Protobuf:
		return messageProtobuf
	}
	return messageJSON
}

// pbcSizeMessageData is the size of a MessageData's body.
func pbcSizeMessageData(t DataType, data []byte) int {
	return pbcSizeBytes(pbcMessageDataField(t), len(data))
}

// pbcAppendMessageData appends field num, a MessageData holding data.
func pbcAppendMessageData(dst []byte, num protowire.Number, t DataType, data []byte) []byte {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(pbcSizeMessageData(t, data)))
	dst = protowire.AppendTag(dst, pbcMessageDataField(t), protowire.BytesType)
	return protowire.AppendBytes(dst, data)
}

func pbcSizeMapEntry(k, v string) int {
	return pbcSizeBytes(1, len(k)) + pbcSizeBytes(2, len(v))
}

func pbcSizeMetadata(num protowire.Number, md map[string]string) int {
	n := 0
	for k, v := range md {
		n += pbcSizeBytes(num, pbcSizeMapEntry(k, v))
	}
	return n
}

// pbcAppendMetadata appends md as the entries of map field num, keys sorted
// (as a deterministic proto.Marshal would).
func pbcAppendMetadata(dst []byte, num protowire.Number, md map[string]string) []byte {
	if len(md) == 0 {
		return dst
	}
	for _, k := range sortedKeys(md) {
		v := md[k]
		dst = protowire.AppendTag(dst, num, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(pbcSizeMapEntry(k, v)))
		dst = pbcAppendString(dst, 1, k)
		dst = pbcAppendString(dst, 2, v)
	}
	return dst
}

// DecodeProtobufServerMessage decodes one binary frame of the protobuf
// subprotocols: a serialized DownstreamMessage, into an Ack, a GroupMessage
// (from "group"), a ServerDataMessage (from "server"), Connected,
// Disconnected (Message is the reason) or Pong. A data message's SequenceID
// is its sequence_id (0 when absent, as on protobuf.webpubsub.azure.v1);
// protobuf data messages carry no fromUserId.
//
// Data holds what a JSON client gets for the same message: the text of
// text_data, the JSON text of json_data, and the bytes of binary_data and of
// protobuf_data (the serialized google.protobuf.Any, as the service sent
// it), in a slice of its own (not the frame's). Strings are taken as they
// are, valid UTF-8 or not: the service passes a JSON value's strings (whose
// UTF-8 nobody checks) and a JSON client's protobuf payload (which nobody
// parses) on as they came, and a client should not lose such a message where
// a JSON client would not. (proto.Unmarshal would refuse both frames.)
//
// The wire rules are proto3's: fields in any order, unknown fields skipped, a
// known field of another wire type skipped as unknown, the last of a oneof's
// members wins, and a message field that appears twice is merged. A frame
// that is no DownstreamMessage, sets none of the four messages (or one this
// package does not know), or has a data message without data, with JSON data
// that is no JSON value, or from neither "group" (with a group) nor "server",
// is an error wrapping ErrInvalidMessage. No input panics it.
func DecodeProtobufServerMessage(frame []byte) (ServerMessage, error) {
	num, body, err := pbcOneof(frame, func(n protowire.Number) (bool, bool) {
		known := n >= downstreamAck && n <= downstreamPong
		return known, known
	})
	if err != nil {
		return ServerMessage{}, err
	}
	switch num {
	case downstreamAck:
		return pbcDecodeAck(body)
	case downstreamData:
		return pbcDecodeData(body)
	case downstreamSystem:
		return pbcDecodeSystem(body)
	case downstreamPong:
		if err := pbcFields(body, func(pbcField) error { return nil }); err != nil {
			return ServerMessage{}, err
		}
		return ServerMessage{Type: Pong}, nil
	}
	return ServerMessage{}, invalid("downstream message without a message")
}

// pbcField is one field of a serialized message: its number and wire type,
// and its value when a varint (v) or length-delimited (b, which aliases the
// input).
type pbcField struct {
	num protowire.Number
	typ protowire.Type
	v   uint64
	b   []byte
}

// pbcFields calls fn with each field of the serialized message b, in order.
// Groups (deprecated) are skipped whole, as unknown fields. Like
// proto.Unmarshal it refuses a malformed field, a field number out of range
// and a stray end of group.
func pbcFields(b []byte, fn func(pbcField) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return invalid("%v", protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber {
			return invalid("field number %d out of range", num)
		}
		b = b[n:]
		f := pbcField{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		case protowire.EndGroupType:
			return invalid("unexpected end of group")
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return invalid("%v", protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// pbcOneof reads a message made of one oneof: member reports whether a
// field number is a member, and whether it is a message (whose repeated
// occurrences merge, which for serialized messages is concatenation) rather
// than a scalar (the last occurrence wins). It returns the member that is
// set and its value (0 and nil when none is); a length-delimited field that
// is no member is unknown, and named in the error when no member is set.
func pbcOneof(b []byte, member func(protowire.Number) (ok, merge bool)) (protowire.Number, []byte, error) {
	var (
		set     protowire.Number
		body    pbcBody
		unknown protowire.Number
	)
	err := pbcFields(b, func(f pbcField) error {
		ok, merge := member(f.num)
		switch {
		case f.typ != protowire.BytesType:
		case !ok:
			unknown = f.num
		case f.num == set && merge:
			body.merge(f.b)
		default:
			set, body = f.num, pbcBody{}
			body.merge(f.b)
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	if set == 0 && unknown != 0 {
		return 0, nil, invalid("unknown message (field %d)", unknown)
	}
	return set, body.b, nil
}

// pbcBody is the serialized value of a message field that may appear more
// than once: the occurrences concatenated, which is their merge. The first
// aliases the frame; a second is appended to a copy, so that the frame is
// never written and the appends are amortized (no quadratic copying of a
// frame of many small occurrences).
type pbcBody struct {
	b     []byte
	set   bool
	owned bool
}

func (m *pbcBody) merge(b []byte) {
	switch {
	case !m.set:
		m.b, m.set = b, true
		if m.b == nil {
			m.b = []byte{}
		}
	case !m.owned:
		m.b, m.owned = append(append(make([]byte, 0, 2*(len(m.b)+len(b))), m.b...), b...), true
	default:
		m.b = append(m.b, b...)
	}
}

func pbcDecodeAck(b []byte) (ServerMessage, error) {
	m := ServerMessage{Type: Ack}
	var errBody pbcBody
	err := pbcFields(b, func(f pbcField) error {
		switch {
		case f.num == 1 && f.typ == protowire.VarintType:
			m.AckID = f.v
		case f.num == 2 && f.typ == protowire.VarintType:
			m.Success = f.v != 0
		case f.num == 3 && f.typ == protowire.BytesType:
			errBody.merge(f.b)
		}
		return nil
	})
	if err != nil {
		return ServerMessage{}, err
	}
	if errBody.set {
		err = pbcFields(errBody.b, func(f pbcField) error {
			switch {
			case f.num == 1 && f.typ == protowire.BytesType:
				m.ErrorName = string(f.b)
			case f.num == 2 && f.typ == protowire.BytesType:
				m.ErrorMessage = string(f.b)
			}
			return nil
		})
		if err != nil {
			return ServerMessage{}, err
		}
	}
	return m, nil
}

func pbcDecodeData(b []byte) (ServerMessage, error) {
	var (
		m        ServerMessage
		from     string
		hasGroup bool
		data     pbcBody
	)
	err := pbcFields(b, func(f pbcField) error {
		switch {
		case f.num == dataFrom && f.typ == protowire.BytesType:
			from = string(f.b)
		case f.num == dataGroup && f.typ == protowire.BytesType:
			m.Group, hasGroup = string(f.b), true
		case f.num == dataData && f.typ == protowire.BytesType:
			data.merge(f.b)
		case f.num == dataSequence && f.typ == protowire.VarintType:
			m.SequenceID = f.v
		case f.num == dataMetadata && f.typ == protowire.BytesType:
			k, v, err := pbcMapEntry(f.b)
			if err != nil {
				return err
			}
			if m.Metadata == nil {
				m.Metadata = make(map[string]string)
			}
			m.Metadata[k] = v
		}
		return nil
	})
	if err != nil {
		return ServerMessage{}, err
	}
	switch {
	case from == "group" && hasGroup && m.Group != "":
		m.Type = GroupMessage
	case from == "server":
		m.Type, m.Group = ServerDataMessage, ""
	default:
		return ServerMessage{}, invalid("data message from %q (group %q): want from \"group\" with a group, or \"server\"", from, m.Group)
	}
	if !data.set {
		return ServerMessage{}, invalid("data message without data")
	}
	num, body, err := pbcOneof(data.b, func(n protowire.Number) (bool, bool) {
		return n >= messageText && n <= messageJSON, n == messageProtobuf
	})
	if err != nil {
		return ServerMessage{}, err
	}
	switch num {
	case messageText:
		m.DataType = Text
	case messageBinary:
		m.DataType = Binary
	case messageProtobuf:
		m.DataType = Protobuf
	case messageJSON:
		if !jsonValid(body) {
			return ServerMessage{}, invalid("json_data is not valid JSON")
		}
		m.DataType = JSON
	default:
		return ServerMessage{}, invalid("data message without data")
	}
	m.Data = append([]byte{}, body...) // never the caller's frame
	return m, nil
}

// pbcMapEntry decodes a map<string, string> entry; a missing key or value is
// empty.
func pbcMapEntry(b []byte) (k, v string, err error) {
	err = pbcFields(b, func(f pbcField) error {
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			k = string(f.b)
		case f.num == 2 && f.typ == protowire.BytesType:
			v = string(f.b)
		}
		return nil
	})
	return k, v, err
}

func pbcDecodeSystem(b []byte) (ServerMessage, error) {
	num, body, err := pbcOneof(b, func(n protowire.Number) (bool, bool) {
		known := n == 1 || n == 2
		return known, known
	})
	if err != nil {
		return ServerMessage{}, err
	}
	var m ServerMessage
	switch num {
	case 1:
		m.Type = Connected
		err = pbcFields(body, func(f pbcField) error {
			if f.typ != protowire.BytesType {
				return nil
			}
			switch f.num {
			case 1:
				m.ConnectionID = string(f.b)
			case 2:
				m.UserID = string(f.b)
			case 3:
				m.ReconnectionToken = string(f.b)
			}
			return nil
		})
	case 2:
		m.Type = Disconnected
		err = pbcFields(body, func(f pbcField) error {
			if f.num == 2 && f.typ == protowire.BytesType {
				m.Message = string(f.b)
			}
			return nil
		})
	default:
		return ServerMessage{}, invalid("system message without a message")
	}
	if err != nil {
		return ServerMessage{}, err
	}
	return m, nil
}
