package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeStreamFrames(t *testing.T) {
	for frame, want := range map[string]Request{
		`{"type":"sendToGroup","group":"g","noEcho":true,"stream":{"streamId":"s","idleTimeoutMs":1000}}`: {Type: StreamStart, Group: "g", NoEcho: true, StreamID: "s", Stream: StreamRequest{IdleTimeoutMs: 1000}},
		`{"type":"sendToGroup","group":"g","stream":{"streamId":"s"}}`:                                    {Type: StreamStart, Group: "g", StreamID: "s"},
		`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":"x"}`:          {Type: StreamData, StreamID: "s", DataType: Text, Data: []byte("x"), Stream: StreamRequest{SequenceID: 1}},
		`{"type":"streamData","streamId":"s","streamSequenceId":2,"data":{"a":1}}`:                        {Type: StreamData, StreamID: "s", DataType: JSON, Data: []byte(`{"a":1}`), Stream: StreamRequest{SequenceID: 2}},
		`{"type":"streamData","streamId":"s"}`:                                                            {Type: StreamData, StreamID: "s", Stream: StreamRequest{KeepAlive: true}},
		`{"type":"STREAMEND","streamId":"s"}`:                                                             {Type: StreamEnd, StreamID: "s"},
		`{"type":"streamEnd","streamId":"s","error":{"message":"m","userErrorCode":"E1"}}`:                {Type: StreamEnd, StreamID: "s", Stream: StreamRequest{Error: &StreamError{Name: StreamUserError, Message: "m", UserErrorCode: "E1"}}},

		// Refused with streamClosed BadRequest, the connection kept.
		`{"type":"sendToGroup","group":"g","ackId":1,"stream":{"streamId":"s"}}`:               {Type: StreamStart, StreamID: "s", Group: "g", Stream: StreamRequest{Problem: "A stream start carries no ackId, data, dataType, metadata or ttlSeconds."}},
		`{"type":"sendToGroup","group":"g","data":"x","stream":{"streamId":"s"}}`:              {Type: StreamStart, StreamID: "s", Group: "g", Stream: StreamRequest{Problem: "A stream start carries no ackId, data, dataType, metadata or ttlSeconds."}},
		`{"type":"sendToGroup","group":" ","stream":{"streamId":"s"}}`:                         {Type: StreamStart, StreamID: "s", Stream: StreamRequest{Problem: "The group name must be 1 to 1024 characters and not all whitespace."}},
		`{"type":"sendToGroup","group":"g","stream":{"streamId":"s","idleTimeoutMs":0}}`:       {Type: StreamStart, StreamID: "s", Group: "g", Stream: StreamRequest{Problem: "idleTimeoutMs must be an integer greater than 0."}},
		`{"type":"sendToGroup","group":"g","noEcho":1,"stream":{"streamId":"s"}}`:              {Type: StreamStart, StreamID: "s", Group: "g", Stream: StreamRequest{Problem: "noEcho must be a boolean."}},
		`{"type":"streamData","streamId":"s","streamSequenceId":0,"data":"x"}`:                 {Type: StreamData, StreamID: "s", Stream: StreamRequest{Problem: "streamSequenceId must be an integer of at least 1."}},
		`{"type":"streamData","streamId":"s","dataType":"text","data":"x"}`:                    {Type: StreamData, StreamID: "s", Stream: StreamRequest{Problem: "A streamData with data needs a streamSequenceId."}},
		`{"type":"streamData","streamId":"s","streamSequenceId":1}`:                            {Type: StreamData, StreamID: "s", Stream: StreamRequest{Problem: "A streamData with a streamSequenceId needs data."}},
		`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":1}`: {Type: StreamData, StreamID: "s", DataType: Text, Stream: StreamRequest{SequenceID: 1, Problem: "The data does not match its dataType."}},
		`{"type":"streamEnd","streamId":"s","error":{"name":"X","message":"m"}}`:               {Type: StreamEnd, StreamID: "s", Stream: StreamRequest{Problem: "A client's stream error must not carry a name."}},
		`{"type":"streamEnd","streamId":"s","error":"m"}`:                                      {Type: StreamEnd, StreamID: "s", Stream: StreamRequest{Problem: "The error must be an object with a string message and userErrorCode."}},
	} {
		got, err := DecodeJSONRequest([]byte(frame))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v, %v\nwant %+v", frame, got, err, want)
		}
	}
	// Without a streamId there is nothing to answer: an invalid message.
	for _, frame := range []string{
		`{"type":"streamData"}`, `{"type":"streamEnd","streamId":1}`,
		`{"type":"sendToGroup","group":"g","stream":[1]}`, `{"type":"sendToGroup","group":"g","stream":{"streamId":""}}`,
		`{"type":"streamData","streamId":"` + strings.Repeat("s", 257) + `"}`,
	} {
		if _, err := DecodeJSONRequest([]byte(frame)); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: err %v, want an invalid message", frame, err)
		}
	}
}

func TestAppendStreamFrames(t *testing.T) {
	for got, want := range map[string]string{
		string(AppendStreamAck(nil, "s", 2)):                                                                  `{"type":"streamAck","streamId":"s","expectedSequenceId":2}`,
		string(AppendStreamNack(nil, "s", 2, StreamInvalidSequenceID, "m")):                                   `{"type":"streamNack","streamId":"s","expectedSequenceId":2,"name":"InvalidSequenceId","message":"m"}`,
		string(AppendStreamClosed(nil, "s", "", "")):                                                          `{"type":"streamClosed","streamId":"s"}`,
		string(AppendStreamClosed(nil, "s", StreamNotFound, "m")):                                             `{"type":"streamClosed","streamId":"s","error":{"name":"StreamNotFound","message":"m"}}`,
		string(AppendGroupStreamMessage(nil, "g", "u", &StreamInfo{ID: "s", Sequence: 1}, Text, []byte("x"))): `{"type":"message","from":"group","group":"g","fromUserId":"u","stream":{"streamId":"s","streamSequenceId":1},"dataType":"text","data":"x"}`,
		string(AppendGroupStreamMessage(nil, "g", "", &StreamInfo{ID: "s", Sequence: 3, End: true, Error: &StreamError{Name: StreamUserError, Message: "m", UserErrorCode: "E"}}, Text, nil)): `{"type":"message","from":"group","group":"g","stream":{"streamId":"s","streamSequenceId":3,"endOfStream":true,"error":{"name":"UserError","message":"m","userErrorCode":"E"}},"dataType":"text","data":""}`,
	} {
		if got != want || !json.Valid([]byte(got)) {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
}
