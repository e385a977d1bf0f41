package protocol

import (
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/embedwps/pubsub/protocol/pb"
)

// DecodeProtobufRequest decodes one binary frame of
// protobuf.webpubsub.azure.v1 (or its reliable variant): one serialized
// UpstreamMessage. Every error wraps ErrInvalidMessage.
func DecodeProtobufRequest(frame []byte) (Request, error) {
	var m pb.UpstreamMessage
	if err := proto.Unmarshal(frame, &m); err != nil {
		return Request{}, invalid("%v", err)
	}
	var req Request
	setAck := func(id *uint64) {
		if id != nil {
			req.AckID, req.HasAckID = *id, true
		}
	}
	switch msg := m.Message.(type) {
	case *pb.UpstreamMessage_JoinGroupMessage_:
		req.Type, req.Group = JoinGroup, msg.JoinGroupMessage.GetGroup()
		setAck(msg.JoinGroupMessage.AckId)
	case *pb.UpstreamMessage_LeaveGroupMessage_:
		req.Type, req.Group = LeaveGroup, msg.LeaveGroupMessage.GetGroup()
		setAck(msg.LeaveGroupMessage.AckId)
	case *pb.UpstreamMessage_SendToGroupMessage_:
		s := msg.SendToGroupMessage
		setAck(s.AckId)
		if s.GetStream() != nil {
			// Protobuf has no streamClosed frame: refused by an ack, if any.
			req.Type, req.Unsupported, req.StreamID = Unsupported, "sendToGroup stream", s.GetStream().GetStreamId()
			return req, nil
		}
		req.Type, req.Group, req.NoEcho, req.TTLSeconds = SendToGroup, s.GetGroup(), s.GetNoEcho(), uint64(s.GetTtlSeconds())
		var err error
		if req.Metadata, err = protobufMetadata(s.GetMetadata()); err != nil {
			return Request{}, err
		}
		if req.Metadata != nil && s.GetData().GetData() == nil {
			req.DataType, req.Data = Text, []byte{} // metadata only: empty text
		} else if req.DataType, req.Data, err = decodeMessageData(s.GetData()); err != nil {
			return Request{}, err
		}
	case *pb.UpstreamMessage_EventMessage_:
		e := msg.EventMessage
		setAck(e.AckId)
		if e.GetStream() != nil {
			req.Type, req.Unsupported, req.StreamID = Unsupported, "event stream", e.GetStream().GetStreamId()
			return req, nil
		}
		req.Type, req.Event = Event, e.GetEvent()
		if !ValidEventName(req.Event) {
			return Request{}, errBadEventName
		}
		var err error
		if req.Metadata, err = protobufMetadata(e.GetMetadata()); err != nil {
			return Request{}, err
		}
		if req.DataType, req.Data, err = decodeMessageData(e.GetData()); err != nil {
			return Request{}, err
		}
		return req, nil
	case *pb.UpstreamMessage_SequenceAckMessage_:
		return Request{Type: SequenceAck, SequenceID: msg.SequenceAckMessage.GetSequenceId()}, nil
	case *pb.UpstreamMessage_PingMessage_:
		return Request{Type: Ping}, nil
	default:
		return decodeUnknownUpstream(m.ProtoReflect().GetUnknown())
	}
	if !ValidGroupName(req.Group) {
		return Request{}, errBadGroupName
	}
	return req, nil
}

func protobufMetadata(md map[string]string) (map[string]string, error) {
	if len(md) == 0 {
		return nil, nil
	}
	if err := ValidateMetadata(md); err != nil {
		return nil, err
	}
	return md, nil
}

// AppendProtobufMetadata appends DataMessage's metadata map entries, keys
// sorted; like the sequence id, they may follow the other fields.
func AppendProtobufMetadata(dst []byte, md map[string]string) []byte {
	for _, k := range sortedKeys(md) {
		v := md[k]
		dst = protowire.AppendTag(dst, dataMetadata, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(protowire.SizeTag(1)+protowire.SizeBytes(len(k))+protowire.SizeTag(2)+protowire.SizeBytes(len(v))))
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendString(dst, k)
		dst = protowire.AppendTag(dst, 2, protowire.BytesType)
		dst = protowire.AppendString(dst, v)
	}
	return dst
}

// Upstream oneof fields this service knows of but does not support (spec
// Appendix A.1, from the JS SDK's test vectors): group state subscriptions,
// whose ack_id is field 2.
var unsupportedUpstream = map[protowire.Number]string{
	16: "subscribeGroupState",
	17: "unsubscribeGroupState",
}

// decodeUnknownUpstream decodes an UpstreamMessage that set none of the
// fields this service reads. One length-delimited field (a oneof member of
// a newer proto) is a well-formed request of an unsupported type; its ack_id
// is known only for the fields of unsupportedUpstream. Anything else (no
// field, a scalar, several fields) is not a request: an invalid message.
func decodeUnknownUpstream(b []byte) (Request, error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || typ != protowire.BytesType {
		return Request{}, invalid("unknown or empty upstream message")
	}
	body, m := protowire.ConsumeBytes(b[n:])
	if m < 0 || n+m != len(b) {
		return Request{}, invalid("unknown or empty upstream message")
	}
	req := Request{Type: Unsupported, Unsupported: "field " + strconv.Itoa(int(num))}
	name, known := unsupportedUpstream[num]
	if !known {
		return req, nil
	}
	req.Unsupported = name
	for len(body) > 0 {
		f, t, n := protowire.ConsumeTag(body)
		if n < 0 {
			return Request{}, invalid("%s: %v", name, protowire.ParseError(n))
		}
		body = body[n:]
		if f == 2 && t == protowire.VarintType {
			v, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return Request{}, invalid("%s: %v", name, protowire.ParseError(n))
			}
			req.AckID, req.HasAckID = v, true
			body = body[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(f, t, body)
		if n < 0 {
			return Request{}, invalid("%s: %v", name, protowire.ParseError(n))
		}
		body = body[n:]
	}
	return req, nil
}

// decodeMessageData maps MessageData's oneof to a payload; protobuf_data
// keeps the serialized Any, which is what JSON and simple receivers get.
func decodeMessageData(d *pb.MessageData) (DataType, []byte, error) {
	switch v := d.GetData().(type) {
	case *pb.MessageData_TextData:
		return Text, []byte(v.TextData), nil
	case *pb.MessageData_BinaryData:
		return Binary, v.BinaryData, nil
	case *pb.MessageData_JsonData:
		if !jsonValid([]byte(v.JsonData)) {
			return 0, nil, invalid("json_data is not valid JSON")
		}
		return JSON, []byte(v.JsonData), nil
	case *pb.MessageData_ProtobufData:
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(v.ProtobufData)
		if err != nil {
			return 0, nil, invalid("%v", err)
		}
		return Protobuf, b, nil
	}
	return 0, nil, invalid("data is required")
}

// Field numbers of the downstream messages.
const (
	downstreamAck    = 1
	downstreamData   = 2
	downstreamSystem = 3
	downstreamPong   = 4

	dataFrom     = 1
	dataGroup    = 2
	dataData     = 3
	dataSequence = 4
	dataMetadata = 5
)

// AppendProtobufDataMessage appends a DataMessage without its sequence id:
// the part of a data message that is the same for every protobuf receiver.
// JSON payloads go in json_data (field 4 of the newest MessageData).
// Protobuf data messages carry no fromUserId.
func AppendProtobufDataMessage(dst []byte, from, group string, t DataType, data []byte) []byte {
	dst = protowire.AppendTag(dst, dataFrom, protowire.BytesType)
	dst = protowire.AppendString(dst, from)
	if group != "" {
		dst = protowire.AppendTag(dst, dataGroup, protowire.BytesType)
		dst = protowire.AppendString(dst, group)
	}
	field := map[DataType]protowire.Number{Text: 1, Binary: 2, Protobuf: 3, JSON: 4}[t]
	dst = protowire.AppendTag(dst, dataData, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(protowire.SizeTag(field)+protowire.SizeBytes(len(data))))
	dst = protowire.AppendTag(dst, field, protowire.BytesType)
	return protowire.AppendBytes(dst, data)
}

// AppendProtobufSequenceID appends DataMessage's sequence_id field. Fields
// may come in any order, so a reliable receiver's copy of a data message is
// the shared DataMessage followed by this.
func AppendProtobufSequenceID(dst []byte, seq uint64) []byte {
	dst = protowire.AppendTag(dst, dataSequence, protowire.VarintType)
	return protowire.AppendVarint(dst, seq)
}

// AppendProtobufDataEnvelope appends the DownstreamMessage header of a
// data_message of n bytes, which follow it.
func AppendProtobufDataEnvelope(dst []byte, n int) []byte {
	dst = protowire.AppendTag(dst, downstreamData, protowire.BytesType)
	return protowire.AppendVarint(dst, uint64(n))
}

func appendDownstream(dst []byte, m *pb.DownstreamMessage) []byte {
	out, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(dst, m)
	if err != nil {
		panic(err) // only valid UTF-8 strings reach here: a bug
	}
	return out
}

// AppendProtobufAck appends an ack; an empty errName means success.
func AppendProtobufAck(dst []byte, ackID uint64, errName, errMessage string) []byte {
	ack := &pb.DownstreamMessage_AckMessage{AckId: ackID, Success: errName == ""}
	if errName != "" {
		ack.Error = &pb.DownstreamMessage_AckMessage_ErrorMessage{Name: errName, Message: toValidUTF8(errMessage)}
	}
	return appendDownstream(dst, &pb.DownstreamMessage{Message: &pb.DownstreamMessage_AckMessage_{AckMessage: ack}})
}

// AppendProtobufConnected appends the connected system message.
func AppendProtobufConnected(dst []byte, userID, connectionID, reconnectionToken string) []byte {
	c := &pb.DownstreamMessage_SystemMessage_ConnectedMessage{ConnectionId: connectionID, UserId: toValidUTF8(userID)}
	if reconnectionToken != "" {
		c.ReconnectionToken = &reconnectionToken
	}
	return appendDownstream(dst, &pb.DownstreamMessage{Message: &pb.DownstreamMessage_SystemMessage_{
		SystemMessage: &pb.DownstreamMessage_SystemMessage{Message: &pb.DownstreamMessage_SystemMessage_ConnectedMessage_{ConnectedMessage: c}},
	}})
}

// AppendProtobufDisconnected appends the disconnected system message.
func AppendProtobufDisconnected(dst []byte, reason string) []byte {
	d := &pb.DownstreamMessage_SystemMessage_DisconnectedMessage{Reason: toValidUTF8(reason)}
	return appendDownstream(dst, &pb.DownstreamMessage{Message: &pb.DownstreamMessage_SystemMessage_{
		SystemMessage: &pb.DownstreamMessage_SystemMessage{Message: &pb.DownstreamMessage_SystemMessage_DisconnectedMessage_{DisconnectedMessage: d}},
	}})
}

// AppendProtobufPong appends the reply to a ping.
func AppendProtobufPong(dst []byte) []byte {
	return appendDownstream(dst, &pb.DownstreamMessage{Message: &pb.DownstreamMessage_PongMessage_{PongMessage: &pb.DownstreamMessage_PongMessage{}}})
}
