package protocol

import (
	"errors"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/embedwps/pubsub/protocol/pb"
)

func TestDecodeUnsupported(t *testing.T) {
	for frame, want := range map[string]Request{
		`{"type":"getGroupState","group":"g","ackId":9}`: {Type: Unsupported, Unsupported: "getGroupState", AckID: 9, HasAckID: true},
		`{"type":"dance"}`: {Type: Unsupported, Unsupported: "dance"},
	} {
		got, err := DecodeJSONRequest([]byte(frame))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v, %v; want %+v", frame, got, err, want)
		}
	}
	for _, frame := range []string{
		`{"type":"dance","ackId":-1}`, `{"type":"streamData"}`, `{"type":"streamEnd","streamId":1}`,
		`{"type":"sendToGroup","group":"g","stream":[1]}`, `{"type":"sendToGroup","group":"g","stream":{"streamId":""}}`,
	} {
		if _, err := DecodeJSONRequest([]byte(frame)); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: err %v, want an invalid message", frame, err)
		}
	}

	b, _ := proto.Marshal(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{
		Event: "e", AckId: u64(3), Stream: &pb.UpstreamMessage_StreamStartInfo{StreamId: "s"}}}})
	for name, tc := range map[string]struct {
		frame []byte
		want  Request
	}{
		"event stream":        {b, Request{Type: Unsupported, Unsupported: "event stream", StreamID: "s", AckID: 3, HasAckID: true}},
		"subscribeGroupState": {[]byte{0x82, 0x01, 0x05, 0x0a, 0x01, 'g', 0x10, 0x07}, Request{Type: Unsupported, Unsupported: "subscribeGroupState", AckID: 7, HasAckID: true}},
		"newer oneof member":  {[]byte{0xa2, 0x01, 0x02, 0x10, 0x07}, Request{Type: Unsupported, Unsupported: "field 20"}},
	} {
		got, err := DecodeProtobufRequest(tc.frame)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v", name, got, err, tc.want)
		}
	}
	for name, frame := range map[string][]byte{
		"empty":          {},
		"scalar field":   {0xa0, 0x01, 0x01},
		"two fields":     {0xa2, 0x01, 0x00, 0xaa, 0x01, 0x00},
		"bad group body": {0x82, 0x01, 0x01, 0x10},
	} {
		if _, err := DecodeProtobufRequest(frame); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: err %v, want an invalid message", name, err)
		}
	}
}
