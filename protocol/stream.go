package protocol

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Group streaming (spec §6.1, JSON subprotocols only: the protobuf
// subprotocols have no frames for stream data, acks or ends).

// StreamRequest is the part of a group streaming request beyond its type,
// group and streamId.
type StreamRequest struct {
	// IdleTimeoutMs is a stream start's idleTimeoutMs (0: absent).
	IdleTimeoutMs uint64
	// SequenceID is a streamData's streamSequenceId (at least 1), unless
	// the frame is a keepalive.
	SequenceID uint64
	// KeepAlive marks a streamData with neither a sequence id nor data: it
	// keeps the stream from idling and is not delivered.
	KeepAlive bool
	// Error is the error a streamEnd aborts the stream with (nil: a
	// normal end).
	Error *StreamError
	// Problem, when not empty, is why a frame that names its stream is
	// refused: it is answered with streamClosed BadRequest, and the
	// connection stays.
	Problem string
}

// StreamError is the error of a stream that ended abnormally, as a client
// sends it in streamEnd (Message, UserErrorCode) and as receivers see it in
// the terminal fragment (Name added by the service).
type StreamError struct {
	Name          string
	Message       string
	UserErrorCode string
}

// Stream error names of spec §6.2: in streamClosed, streamNack and the
// terminal fragment receivers get.
const (
	StreamNotFound            = "StreamNotFound"
	StreamInvalidSequenceID   = "InvalidSequenceId"
	StreamIdleTimeout         = "IdleTimeout"
	StreamCancelled           = "Cancelled"
	StreamUserError           = "UserError"
	maxStreamIDLength         = 256
	maxStreamErrorMessage     = 4096
	maxStreamUserErrorCodeLen = 256
)

// decodeStreamID reads a streamId, which must be a non-empty string of at
// most 256 bytes: without one the frame cannot be answered.
func decodeStreamID(raw json.RawMessage) (string, error) {
	var id string
	if err := json.Unmarshal(raw, &id); err != nil || id == "" {
		return "", invalid("streamId must be a non-empty string")
	}
	if len(id) > maxStreamIDLength {
		return "", invalid("streamId is longer than %d bytes", maxStreamIDLength)
	}
	return id, nil
}

// decodeStreamStart decodes a sendToGroup that opens a stream:
// {"type":"sendToGroup","group","noEcho","stream":{"streamId","idleTimeoutMs"}}.
// It has no ackId, data or dataType (spec §6.1).
func decodeStreamStart(req Request, raw *jsonRequest) (Request, error) {
	var start struct {
		StreamID      json.RawMessage `json:"streamId"`
		IdleTimeoutMs json.RawMessage `json:"idleTimeoutMs"`
	}
	if err := json.Unmarshal(raw.Stream, &start); err != nil {
		return Request{}, invalid("stream must be an object")
	}
	id, err := decodeStreamID(start.StreamID)
	if err != nil {
		return Request{}, err
	}
	hadAckID := req.HasAckID
	req = Request{Type: StreamStart, StreamID: id}
	problem := func(msg string) (Request, error) {
		req.Stream.Problem = msg
		return req, nil
	}
	if raw.Group == nil || !ValidGroupName(*raw.Group) {
		return problem("The group name must be 1 to 1024 characters and not all whitespace.")
	}
	req.Group = *raw.Group
	switch string(raw.NoEcho) {
	case "true":
		req.NoEcho = true
	case "", "false", "null":
	default:
		return problem("noEcho must be a boolean.")
	}
	if hadAckID || raw.DataType != nil || len(raw.Data) > 0 || len(raw.Metadata) > 0 || len(raw.TTLSeconds) > 0 {
		return problem("A stream start carries no ackId, data, dataType, metadata or ttlSeconds.")
	}
	idle, has, err := decodeUint(start.IdleTimeoutMs, "idleTimeoutMs")
	if err != nil || has && idle == 0 {
		return problem("idleTimeoutMs must be an integer greater than 0.")
	}
	req.Stream.IdleTimeoutMs = idle
	return req, nil
}

// decodeStreamData decodes {"type":"streamData","streamId","streamSequenceId",
// "dataType","data"}; with only a streamId it is a keepalive.
func decodeStreamData(req Request, raw *jsonRequest) (Request, error) {
	id, err := decodeStreamID(raw.StreamID)
	if err != nil {
		return Request{}, err
	}
	req = Request{Type: StreamData, StreamID: id}
	problem := func(msg string) (Request, error) {
		req.Stream.Problem = msg
		return req, nil
	}
	seq, hasSeq, err := decodeUint(raw.StreamSequenceID, "streamSequenceId")
	if err != nil || hasSeq && seq == 0 {
		return problem("streamSequenceId must be an integer of at least 1.")
	}
	hasData := len(raw.Data) > 0 && string(raw.Data) != "null"
	if !hasSeq {
		if hasData || raw.DataType != nil {
			return problem("A streamData with data needs a streamSequenceId.")
		}
		req.Stream.KeepAlive = true
		return req, nil
	}
	if !hasData {
		return problem("A streamData with a streamSequenceId needs data.")
	}
	req.Stream.SequenceID = seq
	if raw.DataType != nil {
		if req.DataType, err = ParseDataType(*raw.DataType); err != nil {
			return problem("Unknown dataType.")
		}
	}
	if req.Data, err = decodeData(req.DataType, raw.Data); err != nil {
		return problem("The data does not match its dataType.")
	}
	return req, nil
}

// decodeStreamEnd decodes {"type":"streamEnd","streamId","error":{"message",
// "userErrorCode"}}. A client's error carries no name: receivers see it as
// UserError.
func decodeStreamEnd(req Request, raw *jsonRequest) (Request, error) {
	id, err := decodeStreamID(raw.StreamID)
	if err != nil {
		return Request{}, err
	}
	req = Request{Type: StreamEnd, StreamID: id}
	if len(raw.Error) == 0 || string(raw.Error) == "null" {
		return req, nil
	}
	var e struct {
		Name          json.RawMessage `json:"name"`
		Message       *string         `json:"message"`
		UserErrorCode *string         `json:"userErrorCode"`
	}
	switch {
	case json.Unmarshal(raw.Error, &e) != nil:
		req.Stream.Problem = "The error must be an object with a string message and userErrorCode."
	case len(e.Name) > 0:
		req.Stream.Problem = "A client's stream error must not carry a name."
	case e.Message != nil && len(*e.Message) > maxStreamErrorMessage:
		req.Stream.Problem = "The error message is longer than " + strconv.Itoa(maxStreamErrorMessage) + " bytes."
	case e.UserErrorCode != nil && len(*e.UserErrorCode) > maxStreamUserErrorCodeLen:
		req.Stream.Problem = "The userErrorCode is longer than " + strconv.Itoa(maxStreamUserErrorCodeLen) + " bytes."
	default:
		req.Stream.Error = &StreamError{Name: StreamUserError}
		if e.Message != nil {
			req.Stream.Error.Message = *e.Message
		}
		if e.UserErrorCode != nil {
			req.Stream.Error.UserErrorCode = *e.UserErrorCode
		}
	}
	return req, nil
}

// appendStreamRequest appends a stream start (a sendToGroup with stream and
// no ackId or payload), a streamData (a keepalive when KeepAlive) or a
// streamEnd, refusing what the service would answer with BadRequest.
func appendStreamRequest(dst []byte, req Request) ([]byte, error) {
	if req.StreamID == "" || len(req.StreamID) > maxStreamIDLength {
		return dst, invalid("streamId must be 1 to %d bytes", maxStreamIDLength)
	}
	switch req.Type {
	case StreamStart:
		if !ValidGroupName(req.Group) {
			return dst, errBadGroupName
		}
		dst = append(dst, `{"type":"sendToGroup","group":`...)
		dst = AppendString(dst, req.Group)
		if req.NoEcho {
			dst = append(dst, `,"noEcho":true`...)
		}
		dst = append(dst, `,"stream":{"streamId":`...)
		dst = AppendString(dst, req.StreamID)
		if ms := req.Stream.IdleTimeoutMs; ms > 0 {
			dst = append(dst, `,"idleTimeoutMs":`...)
			dst = strconv.AppendUint(dst, ms, 10)
		}
		return append(dst, "}}"...), nil
	case StreamData:
		dst = append(dst, `{"type":"streamData","streamId":`...)
		dst = AppendString(dst, req.StreamID)
		if req.Stream.KeepAlive {
			return append(dst, '}'), nil
		}
		if req.Stream.SequenceID == 0 {
			return dst, invalid("streamSequenceId must be at least 1")
		}
		dst = append(dst, `,"streamSequenceId":`...)
		dst = strconv.AppendUint(dst, req.Stream.SequenceID, 10)
		return appendRequestPayload(dst, req.DataType, req.Data)
	default: // StreamEnd
		dst = append(dst, `{"type":"streamEnd","streamId":`...)
		dst = AppendString(dst, req.StreamID)
		if e := req.Stream.Error; e != nil {
			// Measured as the service will: invalid UTF-8 becomes U+FFFD.
			switch {
			case e.Name != "" && e.Name != StreamUserError:
				return dst, invalid("a client's stream error carries no name")
			case len(strings.ToValidUTF8(e.Message, "\uFFFD")) > maxStreamErrorMessage:
				return dst, invalid("the error message is longer than %d bytes", maxStreamErrorMessage)
			case len(strings.ToValidUTF8(e.UserErrorCode, "\uFFFD")) > maxStreamUserErrorCodeLen:
				return dst, invalid("the userErrorCode is longer than %d bytes", maxStreamUserErrorCodeLen)
			}
			dst = append(dst, `,"error":{"message":`...)
			dst = AppendString(dst, e.Message)
			if e.UserErrorCode != "" {
				dst = append(dst, `,"userErrorCode":`...)
				dst = AppendString(dst, e.UserErrorCode)
			}
			dst = append(dst, '}')
		}
		return append(dst, '}'), nil
	}
}

// AppendStreamAck appends a streamAck: every fragment below expected was
// accepted.
func AppendStreamAck(dst []byte, streamID string, expected uint64) []byte {
	dst = append(dst, `{"type":"streamAck","streamId":`...)
	dst = AppendString(dst, streamID)
	dst = append(dst, `,"expectedSequenceId":`...)
	dst = strconv.AppendUint(dst, expected, 10)
	return append(dst, '}')
}

// AppendStreamNack appends a streamNack: the fragment was refused, and the
// service still expects expected.
func AppendStreamNack(dst []byte, streamID string, expected uint64, errName, errMessage string) []byte {
	dst = append(dst, `{"type":"streamNack","streamId":`...)
	dst = AppendString(dst, streamID)
	dst = append(dst, `,"expectedSequenceId":`...)
	dst = strconv.AppendUint(dst, expected, 10)
	dst = append(dst, `,"name":`...)
	dst = AppendString(dst, errName)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, errMessage)
	return append(dst, '}')
}

// AppendStreamClosed appends a streamClosed frame; an empty errName means
// the stream ended normally.
func AppendStreamClosed(dst []byte, streamID, errName, errMessage string) []byte {
	dst = append(dst, `{"type":"streamClosed","streamId":`...)
	dst = AppendString(dst, streamID)
	if errName == "" {
		return append(dst, '}')
	}
	dst = append(dst, `,"error":{"name":`...)
	dst = AppendString(dst, errName)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, errMessage)
	return append(dst, "}}"...)
}

// StreamInfo is the stream part of a group message that is a stream's
// fragment.
type StreamInfo struct {
	ID       string
	Sequence uint64
	// End marks the terminal fragment, which carries no data (empty text,
	// as the JS SDK drops a message without a dataType) and, when the
	// stream did not end normally, its Error.
	End   bool
	Error *StreamError
}

// AppendGroupStreamMessage appends a message from a group that is a
// stream's fragment.
func AppendGroupStreamMessage(dst []byte, group, fromUserID string, s *StreamInfo, t DataType, data []byte) []byte {
	dst = append(dst, `{"type":"message","from":"group","group":`...)
	dst = AppendString(dst, group)
	if fromUserID != "" {
		dst = append(dst, `,"fromUserId":`...)
		dst = AppendString(dst, fromUserID)
	}
	dst = append(dst, `,"stream":{"streamId":`...)
	dst = AppendString(dst, s.ID)
	dst = append(dst, `,"streamSequenceId":`...)
	dst = strconv.AppendUint(dst, s.Sequence, 10)
	if s.End {
		dst = append(dst, `,"endOfStream":true`...)
	}
	if s.Error != nil {
		dst = append(dst, `,"error":{"name":`...)
		dst = AppendString(dst, s.Error.Name)
		dst = append(dst, `,"message":`...)
		dst = AppendString(dst, s.Error.Message)
		if s.Error.UserErrorCode != "" {
			dst = append(dst, `,"userErrorCode":`...)
			dst = AppendString(dst, s.Error.UserErrorCode)
		}
		dst = append(dst, '}')
	}
	dst = append(dst, '}')
	return appendPayload(dst, t, data)
}
