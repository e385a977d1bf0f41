package protocol

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// The client's side of json.webpubsub.azure.v1 and its reliable variant:
// AppendJSONRequest is the inverse of DecodeJSONRequest, and
// DecodeJSONServerMessage the inverse of AppendAck, AppendGroupMessage and
// the other service → client encoders.

// AppendJSONRequest appends req as one JSON text frame. It refuses what the
// service would refuse as an invalid message (a bad group or event name,
// metadata or JSON data), so that a client fails that request rather than
// have its connection closed with 1007. It encodes joinGroup, leaveGroup,
// sendToGroup, event, ping, sequenceAck, invoke, cancelInvocation and the
// group streaming frames; the other request types are not a client's to
// send yet.
func AppendJSONRequest(dst []byte, req Request) ([]byte, error) {
	switch req.Type {
	case JoinGroup, LeaveGroup:
		if !ValidGroupName(req.Group) {
			return dst, errBadGroupName
		}
		dst = append(dst, `{"type":"`...)
		dst = append(dst, req.Type.String()...)
		dst = append(dst, `","group":`...)
		dst = AppendString(dst, req.Group)
		dst = appendAckID(dst, req)
		return append(dst, '}'), nil
	case SendToGroup:
		if !ValidGroupName(req.Group) {
			return dst, errBadGroupName
		}
		dst = append(dst, `{"type":"sendToGroup","group":`...)
		dst = AppendString(dst, req.Group)
		dst = appendAckID(dst, req)
		if req.NoEcho {
			dst = append(dst, `,"noEcho":true`...)
		}
		if req.TTLSeconds != 0 {
			dst = append(dst, `,"ttlSeconds":`...)
			dst = strconv.AppendUint(dst, req.TTLSeconds, 10)
		}
		return appendRequestBody(dst, req)
	case Event:
		if !ValidEventName(req.Event) {
			return dst, errBadEventName
		}
		dst = append(dst, `{"type":"event","event":`...)
		dst = AppendString(dst, req.Event)
		dst = appendAckID(dst, req)
		return appendRequestBody(dst, req)
	case Invoke:
		if req.InvocationID == "" {
			return dst, invalid("invoke needs an invocationId")
		}
		if !ValidEventName(req.Event) {
			return dst, errBadEventName
		}
		target := req.Target
		if target == "" {
			target = "event"
		}
		dst = append(dst, `{"type":"invoke","invocationId":`...)
		dst = AppendString(dst, req.InvocationID)
		dst = append(dst, `,"target":`...)
		dst = AppendString(dst, target)
		dst = append(dst, `,"event":`...)
		dst = AppendString(dst, req.Event)
		// An invoke carries no ackId and no metadata: its invokeResponse is
		// the answer, and the decoder ignores both.
		return appendRequestPayload(dst, req.DataType, req.Data)
	case CancelInvocation:
		if req.InvocationID == "" {
			return dst, invalid("cancelInvocation needs an invocationId")
		}
		dst = append(dst, `{"type":"cancelInvocation","invocationId":`...)
		dst = AppendString(dst, req.InvocationID)
		return append(dst, '}'), nil
	case Ping:
		return append(dst, `{"type":"ping"}`...), nil
	case SequenceAck:
		dst = append(dst, `{"type":"sequenceAck","sequenceId":`...)
		dst = strconv.AppendUint(dst, req.SequenceID, 10)
		return append(dst, '}'), nil
	case StreamStart, StreamData, StreamEnd:
		return appendStreamRequest(dst, req)
	}
	return dst, fmt.Errorf("protocol: the JSON client encoder does not send %v requests", req.Type)
}

func appendAckID(dst []byte, req Request) []byte {
	if !req.HasAckID {
		return dst
	}
	dst = append(dst, `,"ackId":`...)
	return strconv.AppendUint(dst, req.AckID, 10)
}

// appendRequestBody appends a sendToGroup's or event's metadata and payload,
// and closes the object.
func appendRequestBody(dst []byte, req Request) ([]byte, error) {
	if len(req.Metadata) > 0 {
		if err := ValidateMetadata(req.Metadata); err != nil {
			return dst, err
		}
		dst = append(dst, `,"metadata":{`...)
		for i, k := range sortedKeys(req.Metadata) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, k)
			dst = append(dst, ':')
			dst = AppendString(dst, req.Metadata[k])
		}
		dst = append(dst, '}')
	}
	return appendRequestPayload(dst, req.DataType, req.Data)
}

// appendRequestPayload is appendPayload refusing JSON data that is not one
// JSON value (or null, which the service refuses as missing data).
func appendRequestPayload(dst []byte, t DataType, data []byte) ([]byte, error) {
	if t > Protobuf {
		return dst, invalid("unknown dataType %v", t)
	}
	if t == JSON {
		if !json.Valid(data) {
			return dst, invalid("json data is not one JSON value")
		}
		if strings.TrimSpace(string(data)) == "null" {
			return dst, invalid("json data must not be null")
		}
	}
	return appendPayload(dst, t, data), nil
}

// jsonServerMessage mirrors every service → client frame.
type jsonServerMessage struct {
	Type              string            `json:"type"`
	From              string            `json:"from"`
	Event             string            `json:"event"`
	Group             string            `json:"group"`
	FromUserID        *string           `json:"fromUserId"`
	UserID            *string           `json:"userId"`
	ConnectionID      string            `json:"connectionId"`
	ReconnectionToken string            `json:"reconnectionToken"`
	Message           string            `json:"message"`
	AckID             uint64            `json:"ackId"`
	Success           bool              `json:"success"`
	Error             *jsonError        `json:"error"`
	DataType          *string           `json:"dataType"`
	Data              json.RawMessage   `json:"data"`
	Metadata          map[string]string `json:"metadata"`
	SequenceID        uint64            `json:"sequenceId"`
	Stream            *struct {
		StreamID         string     `json:"streamId"`
		StreamSequenceID uint64     `json:"streamSequenceId"`
		EndOfStream      bool       `json:"endOfStream"`
		Error            *jsonError `json:"error"`
	} `json:"stream"`
	InvocationID       string `json:"invocationId"`
	StreamID           string `json:"streamId"`
	ExpectedSequenceID uint64 `json:"expectedSequenceId"`
	Name               string `json:"name"` // streamNack
	Items              []struct {
		ConnectionID string            `json:"connectionId"`
		UserID       string            `json:"userId"`
		State        map[string]string `json:"state"`
		UpdatedAt    int64             `json:"updatedAt"`
	} `json:"items"`
}

type jsonError struct {
	Name          string `json:"name"`
	Message       string `json:"message"`
	UserErrorCode string `json:"userErrorCode"`
}

// DecodeJSONServerMessage decodes one text frame the service sent a
// json.webpubsub.azure.v1 (or reliable) client. Every error wraps
// ErrInvalidMessage; a frame of a type this decoder does not know is one
// too, which a client should skip rather than end its connection over
// (clients must tolerate new frames).
func DecodeJSONServerMessage(frame []byte) (ServerMessage, error) {
	if m, ok := decodeDataMessageFast(frame); ok {
		return m, nil
	}
	return decodeJSONServerMessage(frame)
}

// decodeJSONServerMessage decodes any frame, with encoding/json.
func decodeJSONServerMessage(frame []byte) (ServerMessage, error) {
	var raw jsonServerMessage
	if err := json.Unmarshal(frame, &raw); err != nil {
		return ServerMessage{}, invalid("%v", err)
	}
	m := ServerMessage{SequenceID: raw.SequenceID}
	switch {
	case strings.EqualFold(raw.Type, "ack"):
		m.Type, m.AckID, m.Success = Ack, raw.AckID, raw.Success
		if !raw.Success && raw.Error != nil {
			m.ErrorName, m.ErrorMessage = raw.Error.Name, raw.Error.Message
		}
	case strings.EqualFold(raw.Type, "message"):
		switch {
		case strings.EqualFold(raw.From, "group"):
			m.Type, m.Group = GroupMessage, raw.Group
			if raw.FromUserID != nil {
				m.FromUserID = *raw.FromUserID
			}
			if len(raw.Metadata) > 0 {
				m.Metadata = raw.Metadata
			}
			if s := raw.Stream; s != nil {
				m.Stream = &StreamInfo{ID: s.StreamID, Sequence: s.StreamSequenceID, End: s.EndOfStream}
				if s.Error != nil {
					m.Stream.Error = &StreamError{Name: s.Error.Name, Message: s.Error.Message, UserErrorCode: s.Error.UserErrorCode}
				}
			}
		case strings.EqualFold(raw.From, "server"):
			m.Type = ServerDataMessage
		default:
			return ServerMessage{}, invalid("message from %q", raw.From)
		}
		var err error
		if m.DataType, m.Data, err = decodeServerPayload(raw.DataType, raw.Data, m.Stream != nil); err != nil {
			return ServerMessage{}, err
		}
	case strings.EqualFold(raw.Type, "system"):
		switch {
		case strings.EqualFold(raw.Event, "connected"):
			m.Type, m.ConnectionID, m.ReconnectionToken = Connected, raw.ConnectionID, raw.ReconnectionToken
			if raw.UserID != nil {
				m.UserID = *raw.UserID
			}
			if m.ConnectionID == "" {
				return ServerMessage{}, invalid("connected without a connectionId")
			}
		case strings.EqualFold(raw.Event, "disconnected"):
			m.Type, m.Message = Disconnected, raw.Message
		default:
			return ServerMessage{}, invalid("unknown system event %q", raw.Event)
		}
	case strings.EqualFold(raw.Type, "pong"):
		m.Type = Pong
	case strings.EqualFold(raw.Type, "invokeResponse"):
		m.Type, m.InvocationID, m.Success = InvokeResponse, raw.InvocationID, raw.Success
		if !raw.Success {
			if raw.Error != nil {
				m.ErrorName, m.ErrorMessage = raw.Error.Name, raw.Error.Message
			}
			break
		}
		if len(raw.Data) > 0 && string(raw.Data) != "null" {
			var err error
			if m.DataType, m.Data, err = decodeServerPayload(raw.DataType, raw.Data, false); err != nil {
				return ServerMessage{}, err
			}
		}
	case strings.EqualFold(raw.Type, "streamAck"):
		m.Type, m.StreamID, m.ExpectedSequenceID = StreamAck, raw.StreamID, raw.ExpectedSequenceID
	case strings.EqualFold(raw.Type, "streamNack"):
		m.Type, m.StreamID, m.ExpectedSequenceID = StreamNack, raw.StreamID, raw.ExpectedSequenceID
		m.ErrorName, m.ErrorMessage = raw.Name, raw.Message
	case strings.EqualFold(raw.Type, "streamClosed"):
		m.Type, m.StreamID = StreamClosed, raw.StreamID
		if raw.Error != nil {
			m.ErrorName, m.ErrorMessage = raw.Error.Name, raw.Error.Message
		}
	case strings.EqualFold(raw.Type, "groupStateSnapshot"), strings.EqualFold(raw.Type, "groupStateUpdate"):
		m.Type, m.Group = GroupStateSnapshot, raw.Group
		if strings.EqualFold(raw.Type, "groupStateUpdate") {
			m.Type = GroupStateUpdate
		}
		m.Items = make([]GroupStateItem, len(raw.Items))
		for i, it := range raw.Items {
			m.Items[i] = GroupStateItem{ConnectionID: it.ConnectionID, UserID: it.UserID, State: it.State, UpdatedAt: it.UpdatedAt}
		}
	case raw.Type == "":
		return ServerMessage{}, invalid("missing type")
	default:
		return ServerMessage{}, invalid("unknown type %q", raw.Type)
	}
	return m, nil
}

// decodeServerPayload decodes a dataType and data the service sent. A
// stream's terminal fragment may have neither: empty text.
func decodeServerPayload(dataType *string, raw json.RawMessage, stream bool) (DataType, []byte, error) {
	t := JSON
	if dataType != nil {
		var err error
		if t, err = ParseDataType(*dataType); err != nil {
			return 0, nil, err
		}
	}
	if len(raw) == 0 || string(raw) == "null" {
		if stream && dataType == nil {
			return Text, []byte{}, nil
		}
		return 0, nil, invalid("data is required")
	}
	switch t {
	case JSON:
		// As sent: the service forwards the publisher's value compacted.
		return t, []byte(raw), nil
	case Text:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, nil, invalid("text data must be a string")
		}
		return t, []byte(s), nil
	default:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, nil, invalid("%s data must be a base64 string", t)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return 0, nil, invalid("%s data is not valid base64", t)
		}
		return t, b, nil
	}
}
