package protocol

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/embedwps/pubsub/protocol/pb"
)

func u64(v uint64) *uint64 { return &v }
func u32(v uint32) *uint32 { return &v }

// The hand-written data message encoding, patched with a sequence id, must
// read back with the generated types as the message it means.
func TestProtobufDataMessageEncoding(t *testing.T) {
	any, _ := anypb.New(wrapperspb.String("x"))
	anyBytes, _ := proto.Marshal(any)
	for _, tc := range []struct {
		t    DataType
		data []byte
		want *pb.MessageData
	}{
		{Text, []byte("hi"), &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "hi"}}},
		{Binary, []byte{0, 1}, &pb.MessageData{Data: &pb.MessageData_BinaryData{BinaryData: []byte{0, 1}}}},
		{JSON, []byte(`{"a":1}`), &pb.MessageData{Data: &pb.MessageData_JsonData{JsonData: `{"a":1}`}}},
		{Protobuf, anyBytes, &pb.MessageData{Data: &pb.MessageData_ProtobufData{ProtobufData: any}}},
	} {
		data := AppendProtobufDataMessage(nil, "group", "g", tc.t, tc.data)
		seq := AppendProtobufSequenceID(nil, 300)
		frame := AppendProtobufDataEnvelope(nil, len(data)+len(seq))
		frame = append(append(frame, data...), seq...)
		var m pb.DownstreamMessage
		if err := proto.Unmarshal(frame, &m); err != nil {
			t.Fatal(err)
		}
		d := m.GetDataMessage()
		if d.From != "group" || d.GetGroup() != "g" || d.GetSequenceId() != 300 || !proto.Equal(d.Data, tc.want) {
			t.Fatalf("%v: decoded %v", tc.t, d)
		}
	}
}

func TestDecodeProtobufRequest(t *testing.T) {
	b, _ := proto.Marshal(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{
		Group: "g", AckId: u64(7), NoEcho: proto.Bool(true), Data: &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "hi"}},
	}}})
	req, err := DecodeProtobufRequest(b)
	if err != nil || req.Type != SendToGroup || req.Group != "g" || req.AckID != 7 || !req.HasAckID || !req.NoEcho || req.DataType != Text || string(req.Data) != "hi" {
		t.Fatalf("%+v %v", req, err)
	}
	b, _ = proto.Marshal(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SequenceAckMessage_{SequenceAckMessage: &pb.UpstreamMessage_SequenceAckMessage{SequenceId: 9}}})
	if req, err := DecodeProtobufRequest(b); err != nil || req.Type != SequenceAck || req.SequenceID != 9 {
		t.Fatalf("%+v %v", req, err)
	}
	for _, bad := range []*pb.UpstreamMessage{
		{},
		{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: " "}}},
		{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{Group: "g"}}},
		{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{Event: "9", Data: &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "x"}}}}},
		{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{Group: "g", Data: &pb.MessageData{Data: &pb.MessageData_JsonData{JsonData: "{"}}}}},
	} {
		b, _ := proto.Marshal(bad)
		if _, err := DecodeProtobufRequest(b); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

// FuzzDecodeProtobufRequest: no input panics the decoder, and what it
// accepts follows the protocol's rules.
func FuzzDecodeProtobufRequest(f *testing.F) {
	for _, m := range []*pb.UpstreamMessage{
		{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: "g", AckId: u64(1)}}},
		{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{Group: "g", Data: &pb.MessageData{Data: &pb.MessageData_BinaryData{BinaryData: []byte{1}}}}}},
		{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{Event: "e", Data: &pb.MessageData{Data: &pb.MessageData_JsonData{JsonData: "[1]"}}}}},
		{Message: &pb.UpstreamMessage_SequenceAckMessage_{SequenceAckMessage: &pb.UpstreamMessage_SequenceAckMessage{SequenceId: 3}}},
		{Message: &pb.UpstreamMessage_PingMessage_{PingMessage: &pb.UpstreamMessage_PingMessage{}}},
		{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{Group: "g", AckId: u64(1), Stream: &pb.UpstreamMessage_StreamStartInfo{StreamId: "s"}}}},
		{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{Group: "g", TtlSeconds: u32(30), Metadata: map[string]string{"k": "v"}}}},
		{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{Event: "e", Metadata: map[string]string{"k": "v"}, Data: &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "x"}}}}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte{0x82, 0x01, 0x05, 0x0a, 0x01, 'g', 0x10, 0x07}) // subscribeGroupState{group:"g", ack_id:7}
	f.Add([]byte{0x8a, 0x01, 0x03, 0x0a, 0x01, 'g'})             // unsubscribeGroupState{group:"g"}
	f.Fuzz(func(t *testing.T, frame []byte) {
		req, err := DecodeProtobufRequest(frame)
		checkDecoded(t, req, err)
	})
}
