package protocol

import (
	"bytes"
	"errors"
	"maps"
	"math"
	"reflect"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/embedwps/pubsub/protocol/pb"
)

// testAny is a serialized google.protobuf.Any, as deterministic proto.Marshal
// writes it.
func testAny(t testing.TB) []byte {
	a, err := anypb.New(wrapperspb.String("x"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// refUpstream is req as the generated types hold it, built without judging
// it; nil when the generated types cannot hold it (a protobuf payload that is
// no Any, an unknown data type) or the protobuf subprotocols have no such
// request.
func refUpstream(req Request) *pb.UpstreamMessage {
	var ack *uint64
	if req.HasAckID {
		ack = proto.Uint64(req.AckID)
	}
	data := func() *pb.MessageData {
		switch req.DataType {
		case Text:
			return &pb.MessageData{Data: &pb.MessageData_TextData{TextData: string(req.Data)}}
		case Binary:
			return &pb.MessageData{Data: &pb.MessageData_BinaryData{BinaryData: req.Data}}
		case JSON:
			return &pb.MessageData{Data: &pb.MessageData_JsonData{JsonData: string(req.Data)}}
		case Protobuf:
			a := new(anypb.Any)
			if proto.Unmarshal(req.Data, a) != nil {
				return nil
			}
			return &pb.MessageData{Data: &pb.MessageData_ProtobufData{ProtobufData: a}}
		}
		return nil // no data type: an empty MessageData would mean metadata only
	}
	switch req.Type {
	case JoinGroup:
		return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: req.Group, AckId: ack}}}
	case LeaveGroup:
		return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_LeaveGroupMessage_{LeaveGroupMessage: &pb.UpstreamMessage_LeaveGroupMessage{Group: req.Group, AckId: ack}}}
	case SendToGroup:
		d := data()
		if d == nil {
			return nil
		}
		s := &pb.UpstreamMessage_SendToGroupMessage{Group: req.Group, AckId: ack, Data: d, Metadata: req.Metadata}
		if req.NoEcho {
			s.NoEcho = proto.Bool(true)
		}
		if req.TTLSeconds != 0 {
			if req.TTLSeconds > math.MaxUint32 {
				return nil
			}
			s.TtlSeconds = proto.Uint32(uint32(req.TTLSeconds))
		}
		return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: s}}
	case Event:
		d := data()
		if d == nil {
			return nil
		}
		return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{Event: req.Event, AckId: ack, Data: d, Metadata: req.Metadata}}}
	case SequenceAck:
		return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_SequenceAckMessage_{SequenceAckMessage: &pb.UpstreamMessage_SequenceAckMessage{SequenceId: req.SequenceID}}}
	case Ping:
		return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_PingMessage_{PingMessage: &pb.UpstreamMessage_PingMessage{}}}
	}
	return nil
}

// canonicalAny is a serialized Any as the service re-serializes it.
func canonicalAny(t testing.TB, b []byte) []byte {
	t.Helper()
	a := new(anypb.Any)
	if err := proto.Unmarshal(b, a); err != nil {
		t.Fatalf("not an Any: %v", err)
	}
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// wantDecoded is what DecodeProtobufRequest gives for the frame of a valid
// req: the fields its type carries, no empty metadata, protobuf data
// re-serialized.
func wantDecoded(t testing.TB, req Request) Request {
	want := Request{Type: req.Type}
	switch req.Type {
	case SequenceAck:
		want.SequenceID = req.SequenceID
		return want
	case Ping:
		return want
	}
	want.AckID, want.HasAckID = req.AckID, req.HasAckID
	if !req.HasAckID {
		want.AckID = 0
	}
	switch req.Type {
	case JoinGroup, LeaveGroup:
		want.Group = req.Group
		return want
	case SendToGroup:
		want.Group, want.NoEcho, want.TTLSeconds = req.Group, req.NoEcho, req.TTLSeconds
	case Event:
		want.Event = req.Event
	}
	want.DataType, want.Data = req.DataType, req.Data
	if req.DataType == Protobuf {
		want.Data = canonicalAny(t, req.Data)
	}
	if len(req.Metadata) > 0 {
		want.Metadata = req.Metadata
	}
	return want
}

func sameRequest(a, b Request) bool {
	if !bytes.Equal(a.Data, b.Data) || !maps.Equal(a.Metadata, b.Metadata) {
		return false
	}
	a.Data, b.Data, a.Metadata, b.Metadata = nil, nil, nil, nil
	return reflect.DeepEqual(a, b)
}

// checkRequestRoundTrip encodes a valid req and checks the frame: the bytes
// a deterministic proto.Marshal writes (for canonical data), and what the
// service decodes from it.
func checkRequestRoundTrip(t testing.TB, req Request) {
	t.Helper()
	prefix := []byte("prefix")
	frame, err := AppendProtobufRequest(prefix[:len(prefix):len(prefix)], req)
	if err != nil {
		t.Fatalf("%+v: %v", req, err)
	}
	if !bytes.HasPrefix(frame, prefix) {
		t.Fatalf("%+v: dst not kept: %q", req, frame)
	}
	frame = frame[len(prefix):]
	if ref := refUpstream(req); ref == nil {
		t.Fatalf("%+v: encoded a request the generated types cannot hold", req)
	} else if carriesData := req.Type == SendToGroup || req.Type == Event; !carriesData || req.DataType != Protobuf || bytes.Equal(req.Data, canonicalAny(t, req.Data)) {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(ref)
		if err != nil {
			t.Fatalf("%+v: proto.Marshal: %v", req, err)
		}
		if !bytes.Equal(frame, want) {
			t.Fatalf("%+v:\nencoded   %x\nproto.Marshal %x", req, frame, want)
		}
	}
	got, err := DecodeProtobufRequest(frame)
	if err != nil {
		t.Fatalf("%+v: the service declines %x: %v", req, frame, err)
	}
	if want := wantDecoded(t, req); !sameRequest(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

func TestAppendProtobufRequest(t *testing.T) {
	anyBytes := testAny(t)
	md := map[string]string{"b": "2", "a": "1", "Trace-Id": "x y"}
	for _, req := range []Request{
		{Type: JoinGroup, Group: "g"},
		{Type: JoinGroup, Group: "g", AckID: 0, HasAckID: true},
		{Type: JoinGroup, Group: "日本", AckID: math.MaxUint64, HasAckID: true},
		{Type: LeaveGroup, Group: "g", AckID: 7, HasAckID: true},
		{Type: SendToGroup, Group: "g", DataType: Text, Data: []byte("hi")},
		{Type: SendToGroup, Group: "g", DataType: Text, Data: []byte{}},
		{Type: SendToGroup, Group: "g", DataType: Text},
		{Type: SendToGroup, Group: "g", DataType: JSON, Data: []byte(`{"a":[1,"x"]}`), AckID: 1, HasAckID: true, NoEcho: true},
		{Type: SendToGroup, Group: "g", DataType: JSON, Data: []byte(`"Hello"`)},
		{Type: SendToGroup, Group: "g", DataType: Binary, Data: []byte{0, 1, 0xff}, TTLSeconds: 30},
		{Type: SendToGroup, Group: "g", DataType: Binary, TTLSeconds: math.MaxUint32},
		{Type: SendToGroup, Group: "g", DataType: Protobuf, Data: anyBytes, Metadata: md},
		{Type: SendToGroup, Group: "g", DataType: Protobuf, Data: []byte{}},
		{Type: SendToGroup, Group: "g", DataType: Text, Data: []byte{}, Metadata: map[string]string{"k": ""}},
		{Type: SendToGroup, Group: "g", DataType: Text, Data: []byte("x"), Metadata: map[string]string{}},
		{Type: SendToGroup, Group: "g", DataType: Text, Data: []byte("x"), NoEcho: true, TTLSeconds: 1, AckID: 300, HasAckID: true, Metadata: md},
		{Type: Event, Event: "e", DataType: Text, Data: []byte("x")},
		{Type: Event, Event: "Chat.message-1", DataType: JSON, Data: []byte("[1]"), AckID: 2, HasAckID: true, Metadata: md},
		{Type: Event, Event: "e", DataType: Binary, Data: []byte{}},
		{Type: Event, Event: "e", DataType: Protobuf, Data: anyBytes},
		{Type: SequenceAck, SequenceID: 9},
		{Type: SequenceAck},
		{Type: SequenceAck, SequenceID: math.MaxUint64},
		{Type: Ping},
		// Fields a type does not use are left out.
		{Type: JoinGroup, Group: "g", Event: "e", NoEcho: true, DataType: Binary, Data: []byte{1}, Metadata: md, TTLSeconds: 5, SequenceID: 3},
		{Type: Ping, AckID: 1, HasAckID: true, Group: "g"},
		{Type: SequenceAck, SequenceID: 4, AckID: 1, HasAckID: true},
		{Type: Event, Event: "e", DataType: Text, Data: []byte("x"), Group: "g", NoEcho: true, TTLSeconds: 4},
	} {
		checkRequestRoundTrip(t, req)
	}

	// Non-canonical protobuf data (unknown field first) goes as it is; the
	// service gets the same message.
	odd := append(protowire.AppendTag(nil, 9, protowire.VarintType), 1)
	odd = append(odd, anyBytes...)
	checkRequestRoundTrip(t, Request{Type: SendToGroup, Group: "g", DataType: Protobuf, Data: odd})
}

func TestAppendProtobufRequestRefused(t *testing.T) {
	longMeta := map[string]string{}
	for i := 0; i < 10; i++ {
		longMeta[string(rune('a'+i))] = string(bytes.Repeat([]byte("v"), 1000))
	}
	for _, tc := range []struct {
		req  Request
		want error
	}{
		{Request{Type: Invoke, Event: "e", InvocationID: "1", DataType: Text}, ErrNotInProtobuf},
		{Request{Type: CancelInvocation, InvocationID: "1"}, ErrNotInProtobuf},
		{Request{Type: SetGroupState, Group: "g"}, ErrNotInProtobuf},
		{Request{Type: SubscribeGroupState, Group: "g"}, ErrNotInProtobuf},
		{Request{Type: UnsubscribeGroupState, Group: "g"}, ErrNotInProtobuf},
		{Request{Type: StreamStart, Group: "g", StreamID: "s"}, ErrNotInProtobuf},
		{Request{Type: StreamData, StreamID: "s"}, ErrNotInProtobuf},
		{Request{Type: StreamEnd, StreamID: "s"}, ErrNotInProtobuf},
		{Request{Type: Unsupported, Unsupported: "dance"}, ErrNotInProtobuf},
		{Request{}, ErrNotInProtobuf},
		{Request{Type: 200}, ErrNotInProtobuf},
		{Request{Type: SendToGroup, Group: "g", DataType: Text, TTLSeconds: math.MaxUint32 + 1}, ErrNotInProtobuf},

		{Request{Type: JoinGroup}, ErrInvalidMessage},
		{Request{Type: LeaveGroup, Group: " \t"}, ErrInvalidMessage},
		{Request{Type: JoinGroup, Group: "\xff"}, ErrInvalidMessage},
		{Request{Type: JoinGroup, Group: string(bytes.Repeat([]byte("g"), 1025))}, ErrInvalidMessage},
		{Request{Type: SendToGroup, DataType: Text}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Text, Data: []byte("\xff")}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: JSON, Data: []byte("{")}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: JSON}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: JSON, Data: []byte("\"\xff\"")}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Protobuf, Data: []byte{0xff}}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Protobuf, Data: []byte{0x0a, 0x01, 0xff}}, ErrInvalidMessage}, // type_url not UTF-8
		{Request{Type: SendToGroup, Group: "g", DataType: 9}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Text, Metadata: map[string]string{"bad key": "v"}}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Text, Metadata: map[string]string{"k": "\n"}}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Text, Metadata: map[string]string{"k": "1", "K": "2"}}, ErrInvalidMessage},
		{Request{Type: SendToGroup, Group: "g", DataType: Text, Metadata: longMeta}, ErrInvalidMessage},
		{Request{Type: Event, DataType: Text}, ErrInvalidMessage},
		{Request{Type: Event, Event: "1e", DataType: Text}, ErrInvalidMessage},
		{Request{Type: Event, Event: "e", DataType: Binary, Metadata: map[string]string{"": "v"}}, ErrInvalidMessage},
	} {
		dst := []byte("kept")
		out, err := AppendProtobufRequest(dst, tc.req)
		if !errors.Is(err, tc.want) {
			t.Errorf("%+v: err %v, want %v", tc.req, err, tc.want)
		}
		if string(out) != "kept" {
			t.Errorf("%+v: dst became %q", tc.req, out)
		}
		// The service refuses the same request (or cannot be sent it).
		if ref := refUpstream(tc.req); ref != nil {
			if b, err := proto.Marshal(ref); err == nil {
				if _, err := DecodeProtobufRequest(b); err == nil {
					t.Errorf("%+v: refused, but the service accepts it", tc.req)
				}
			}
		}
	}
}

// protobufFrame makes a DownstreamMessage data_message frame of a shared
// DataMessage, with the sequence id after it when seq > 0, as the service's
// reliableProtobufFrame does.
func protobufDataFrame(data []byte, seq uint64) []byte {
	var seqField []byte
	if seq > 0 {
		seqField = AppendProtobufSequenceID(nil, seq)
	}
	frame := AppendProtobufDataEnvelope(nil, len(data)+len(seqField))
	return append(append(frame, data...), seqField...)
}

func TestDecodeProtobufServerMessage(t *testing.T) {
	anyBytes := testAny(t)
	md := map[string]string{"a": "1", "trace-id": "x y"}
	withMeta := func(b []byte) []byte { return AppendProtobufMetadata(b, md) }
	for name, tc := range map[string]struct {
		frame []byte
		want  ServerMessage
	}{
		"ack":               {AppendProtobufAck(nil, 7, "", ""), ServerMessage{Type: Ack, AckID: 7, Success: true}},
		"ack 0":             {AppendProtobufAck(nil, 0, "", ""), ServerMessage{Type: Ack, Success: true}},
		"ack max":           {AppendProtobufAck(nil, math.MaxUint64, "", ""), ServerMessage{Type: Ack, AckID: math.MaxUint64, Success: true}},
		"ack error":         {AppendProtobufAck(nil, 8, "Duplicate", "Message with ack-id: 8 has been processed."), ServerMessage{Type: Ack, AckID: 8, ErrorName: "Duplicate", ErrorMessage: "Message with ack-id: 8 has been processed."}},
		"ack error no text": {AppendProtobufAck(nil, 8, "Forbidden", ""), ServerMessage{Type: Ack, AckID: 8, ErrorName: "Forbidden"}},
		"group text": {protobufDataFrame(AppendProtobufDataMessage(nil, "group", "g", Text, []byte("hi")), 0),
			ServerMessage{Type: GroupMessage, Group: "g", DataType: Text, Data: []byte("hi")}},
		"group json reliable": {protobufDataFrame(AppendProtobufDataMessage(nil, "group", "g", JSON, []byte(`{"a":1}`)), 300),
			ServerMessage{Type: GroupMessage, Group: "g", DataType: JSON, Data: []byte(`{"a":1}`), SequenceID: 300}},
		"group binary metadata": {protobufDataFrame(withMeta(AppendProtobufDataMessage(nil, "group", "g", Binary, []byte{0, 0xff})), 1),
			ServerMessage{Type: GroupMessage, Group: "g", DataType: Binary, Data: []byte{0, 0xff}, Metadata: md, SequenceID: 1}},
		"group protobuf": {protobufDataFrame(AppendProtobufDataMessage(nil, "group", "日本", Protobuf, anyBytes), 0),
			ServerMessage{Type: GroupMessage, Group: "日本", DataType: Protobuf, Data: anyBytes}},
		"group empty text": {protobufDataFrame(withMeta(AppendProtobufDataMessage(nil, "group", "g", Text, nil)), 0),
			ServerMessage{Type: GroupMessage, Group: "g", DataType: Text, Data: []byte{}, Metadata: md}},
		"server text": {protobufDataFrame(AppendProtobufDataMessage(nil, "server", "", Text, []byte("hi")), 0),
			ServerMessage{Type: ServerDataMessage, DataType: Text, Data: []byte("hi")}},
		"server json reliable": {protobufDataFrame(AppendProtobufDataMessage(nil, "server", "", JSON, []byte(`"Hello"`)), math.MaxUint64),
			ServerMessage{Type: ServerDataMessage, DataType: JSON, Data: []byte(`"Hello"`), SequenceID: math.MaxUint64}},
		"server binary": {protobufDataFrame(AppendProtobufDataMessage(nil, "server", "", Binary, []byte{}), 2),
			ServerMessage{Type: ServerDataMessage, DataType: Binary, Data: []byte{}, SequenceID: 2}},
		// A JSON client's protobuf payload is passed on unparsed, and a JSON
		// value's strings unchecked: both arrive as a JSON client gets them.
		"server protobuf not an Any": {protobufDataFrame(AppendProtobufDataMessage(nil, "server", "", Protobuf, []byte{0xff, 0xff}), 0),
			ServerMessage{Type: ServerDataMessage, DataType: Protobuf, Data: []byte{0xff, 0xff}}},
		"json not UTF-8": {protobufDataFrame(AppendProtobufDataMessage(nil, "group", "g", JSON, []byte("[\"\xff\"]")), 0),
			ServerMessage{Type: GroupMessage, Group: "g", DataType: JSON, Data: []byte("[\"\xff\"]")}},
		"connected": {AppendProtobufConnected(nil, "user", "conn", ""), ServerMessage{Type: Connected, UserID: "user", ConnectionID: "conn"}},
		"connected anonymous reliable": {AppendProtobufConnected(nil, "", "conn", "tok"),
			ServerMessage{Type: Connected, ConnectionID: "conn", ReconnectionToken: "tok"}},
		"disconnected":       {AppendProtobufDisconnected(nil, "Idle timeout."), ServerMessage{Type: Disconnected, Message: "Idle timeout."}},
		"disconnected empty": {AppendProtobufDisconnected(nil, ""), ServerMessage{Type: Disconnected}},
		"pong":               {AppendProtobufPong(nil), ServerMessage{Type: Pong}},

		// proto3's rules: a repeated message field merges, the last oneof
		// member wins, unknown fields and known ones of another wire type
		// are skipped.
		"data message split": {append(protobufDataFrame(AppendProtobufDataMessage(nil, "group", "g", Text, []byte("x")), 0), 0x12, 0x02, 0x20, 0x05),
			ServerMessage{Type: GroupMessage, Group: "g", DataType: Text, Data: []byte("x"), SequenceID: 5}},
		"last member wins": {append(AppendProtobufAck(nil, 1, "", ""), AppendProtobufPong(nil)...), ServerMessage{Type: Pong}},
		"unknown fields": {append(append([]byte{0x50, 0x01, 0x5a, 0x00, 0x0d, 1, 2, 3, 4}, AppendProtobufAck(nil, 3, "", "")...), 0x08, 0x01),
			ServerMessage{Type: Ack, AckID: 3, Success: true}},
		"text then binary": {[]byte{0x12, 0x11, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r', 0x1a, 0x03, 0x0a, 0x01, 'a', 0x1a, 0x02, 0x12, 0x00},
			ServerMessage{Type: ServerDataMessage, DataType: Binary, Data: []byte{}}},
		"protobuf data merged": {[]byte{0x12, 0x16, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r', 0x1a, 0x05, 0x1a, 0x03, 0x0a, 0x01, 'a', 0x1a, 0x05, 0x1a, 0x03, 0x12, 0x01, 'b'},
			ServerMessage{Type: ServerDataMessage, DataType: Protobuf, Data: []byte{0x0a, 0x01, 'a', 0x12, 0x01, 'b'}}},
	} {
		// The frame may sit in a larger buffer that the caller reuses.
		buf := append([]byte(nil), tc.frame...)
		got, err := DecodeProtobufServerMessage(buf)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		clear(buf)
		if !sameServerMessage(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, tc.want)
		}
	}
}

// A frame of many small occurrences of one message field (each merged
// into the last) decodes in linear time: 1 MiB of them is no denial of
// service.
func TestDecodeProtobufServerMessageManyFields(t *testing.T) {
	frame := protobufDataFrame(AppendProtobufDataMessage(nil, "group", "g", Protobuf, nil), 0)
	piece := protobufDataFrame([]byte{0x1a, 0x04, 0x1a, 0x02, 0x10, 0x01}, 0) // data { protobuf_data { 2: 1 } }
	n := 0
	for ; len(frame) < 1<<20; n++ {
		frame = append(frame, piece...)
	}
	m, err := DecodeProtobufServerMessage(frame)
	if err != nil || m.Type != GroupMessage || m.DataType != Protobuf || len(m.Data) != 2*n {
		t.Fatalf("%v: %v, %v, %d bytes of data", err, m.Type, m.DataType, len(m.Data))
	}
}

func TestDecodeProtobufServerMessageInvalid(t *testing.T) {
	data := func(from, group string, t DataType, d []byte) []byte {
		return protobufDataFrame(AppendProtobufDataMessage(nil, from, group, t, d), 0)
	}
	for name, frame := range map[string][]byte{
		"empty":                  {},
		"no message":             {0x08, 0x01},
		"unknown message":        {0x52, 0x00},
		"truncated":              AppendProtobufAck(nil, 300, "", "")[:3],
		"truncated varint":       {0x0a, 0x01, 0x80},
		"field 0":                {0x00},
		"end group":              {0x0c},
		"bad wire type":          {0x0f},
		"bad inner field":        {0x0a, 0x01, 0xff},
		"bad ack error":          {0x0a, 0x02, 0x1a, 0x01},
		"from nobody":            data("user", "", Text, []byte("x")),
		"from group no group":    data("group", "", Text, []byte("x")),
		"from empty":             data("", "g", Text, []byte("x")),
		"bad json":               data("server", "", JSON, []byte("{")),
		"empty json":             data("server", "", JSON, nil),
		"no data":                {0x12, 0x08, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r'},
		"empty data":             {0x12, 0x0a, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r', 0x1a, 0x00},
		"unknown data":           {0x12, 0x0c, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r', 0x1a, 0x02, 0x2a, 0x00},
		"bad metadata entry":     {0x12, 0x0f, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r', 0x1a, 0x02, 0x0a, 0x00, 0x2a, 0x01, 0x0a},
		"empty system":           {0x1a, 0x00},
		"unknown system":         {0x1a, 0x02, 0x1a, 0x00},
		"bad connected":          {0x1a, 0x03, 0x0a, 0x01, 0x0a},
		"bad pong":               {0x22, 0x01, 0x08},
		"field number too large": {0xf8, 0xff, 0xff, 0xff, 0x7f, 0x00},
	} {
		got, err := DecodeProtobufServerMessage(frame)
		if !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: got %+v, %v; want an invalid message", name, got, err)
		}
	}
}

func sameServerMessage(a, b ServerMessage) bool {
	if !bytes.Equal(a.Data, b.Data) || !maps.Equal(a.Metadata, b.Metadata) {
		return false
	}
	a.Data, b.Data, a.Metadata, b.Metadata = nil, nil, nil, nil
	return reflect.DeepEqual(a, b)
}

// refServerMessage is what DecodeProtobufServerMessage should give for a
// frame the generated types decode; ok is false where it should refuse it.
func refServerMessage(t testing.TB, m *pb.DownstreamMessage) (ServerMessage, bool) {
	switch msg := m.Message.(type) {
	case *pb.DownstreamMessage_AckMessage_:
		a := msg.AckMessage
		return ServerMessage{Type: Ack, AckID: a.AckId, Success: a.Success, ErrorName: a.GetError().GetName(), ErrorMessage: a.GetError().GetMessage()}, true
	case *pb.DownstreamMessage_DataMessage_:
		d := msg.DataMessage
		var s ServerMessage
		switch {
		case d.From == "group" && d.GetGroup() != "":
			s.Type, s.Group = GroupMessage, d.GetGroup()
		case d.From == "server":
			s.Type = ServerDataMessage
		default:
			return s, false
		}
		s.SequenceID = d.GetSequenceId()
		if len(d.Metadata) > 0 {
			s.Metadata = d.Metadata
		}
		var err error
		if s.DataType, s.Data, err = decodeMessageData(d.Data); err != nil {
			return s, false
		}
		return s, true
	case *pb.DownstreamMessage_SystemMessage_:
		switch sys := msg.SystemMessage.Message.(type) {
		case *pb.DownstreamMessage_SystemMessage_ConnectedMessage_:
			c := sys.ConnectedMessage
			return ServerMessage{Type: Connected, ConnectionID: c.ConnectionId, UserID: c.UserId, ReconnectionToken: c.GetReconnectionToken()}, true
		case *pb.DownstreamMessage_SystemMessage_DisconnectedMessage_:
			return ServerMessage{Type: Disconnected, Message: sys.DisconnectedMessage.Reason}, true
		}
	case *pb.DownstreamMessage_PongMessage_:
		return ServerMessage{Type: Pong}, true
	}
	return ServerMessage{}, false
}

// reencodeServerMessage encodes m with the service's own encoders, if they
// can write it: ok is false for what the service never sends (an ack whose
// success and error disagree, strings that are not UTF-8).
func reencodeServerMessage(m ServerMessage) (frame []byte, ok bool) {
	switch m.Type {
	case Ack:
		if m.Success != (m.ErrorName == "") || m.Success && m.ErrorMessage != "" || !utf8.ValidString(m.ErrorName) || !utf8.ValidString(m.ErrorMessage) {
			return nil, false
		}
		return AppendProtobufAck(nil, m.AckID, m.ErrorName, m.ErrorMessage), true
	case GroupMessage, ServerDataMessage:
		from := "server"
		if m.Type == GroupMessage {
			from = "group"
		}
		data := AppendProtobufDataMessage(nil, from, m.Group, m.DataType, m.Data)
		data = AppendProtobufMetadata(data, m.Metadata)
		return protobufDataFrame(data, m.SequenceID), true
	case Connected:
		if !utf8.ValidString(m.UserID) || !utf8.ValidString(m.ConnectionID) || !utf8.ValidString(m.ReconnectionToken) {
			return nil, false
		}
		return AppendProtobufConnected(nil, m.UserID, m.ConnectionID, m.ReconnectionToken), true
	case Disconnected:
		if !utf8.ValidString(m.Message) {
			return nil, false
		}
		return AppendProtobufDisconnected(nil, m.Message), true
	case Pong:
		return AppendProtobufPong(nil), true
	}
	return nil, false
}

// FuzzDecodeProtobufServerMessage: no input panics the decoder; its errors
// wrap ErrInvalidMessage; where the generated types decode a frame, it
// decodes the same message; and what it decodes, re-encoded by the
// service's encoders, decodes the same again.
func FuzzDecodeProtobufServerMessage(f *testing.F) {
	anyBytes := testAny(f)
	for _, frame := range [][]byte{
		AppendProtobufAck(nil, 1, "", ""),
		AppendProtobufAck(nil, 2, "Forbidden", "no"),
		protobufDataFrame(AppendProtobufDataMessage(nil, "group", "g", Text, []byte("hi")), 0),
		protobufDataFrame(AppendProtobufMetadata(AppendProtobufDataMessage(nil, "group", "g", JSON, []byte(`{"a":1}`)), map[string]string{"k": "v"}), 3),
		protobufDataFrame(AppendProtobufDataMessage(nil, "server", "", Binary, []byte{0, 1}), 4),
		protobufDataFrame(AppendProtobufDataMessage(nil, "server", "", Protobuf, anyBytes), 0),
		AppendProtobufConnected(nil, "u", "c", "t"),
		AppendProtobufDisconnected(nil, "bye"),
		AppendProtobufPong(nil),
		{0x12, 0x16, 0x0a, 0x06, 's', 'e', 'r', 'v', 'e', 'r', 0x1a, 0x05, 0x1a, 0x03, 0x0a, 0x01, 'a', 0x1a, 0x05, 0x1a, 0x03, 0x12, 0x01, 'b'},
	} {
		f.Add(frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		got, err := DecodeProtobufServerMessage(frame)
		if err != nil && !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("error does not wrap ErrInvalidMessage: %v", err)
		}
		var m pb.DownstreamMessage
		if proto.Unmarshal(frame, &m) == nil {
			want, ok := refServerMessage(t, &m)
			if ok != (err == nil) {
				t.Fatalf("generated types decode %v (accepted: %v); DecodeProtobufServerMessage: %+v, %v", &m, ok, got, err)
			}
			if ok {
				if got.DataType == Protobuf {
					got.Data = canonicalAny(t, got.Data)
				}
				if !sameServerMessage(got, want) {
					t.Fatalf("decoded\n %+v\nthe generated types\n %+v", got, want)
				}
			}
		}
		if err != nil {
			return
		}
		if got.Type == Pong && len(got.Data) > 0 {
			t.Fatalf("a pong with data: %+v", got)
		}
		re, ok := reencodeServerMessage(got)
		if !ok {
			return
		}
		again, err := DecodeProtobufServerMessage(re)
		if err != nil {
			t.Fatalf("%+v re-encoded as %x: %v", got, re, err)
		}
		if !sameServerMessage(again, got) {
			t.Fatalf("re-encoded\n %+v\ndecodes as\n %+v", got, again)
		}
	})
}

// FuzzProtobufRequestRoundTrip: whatever request AppendProtobufRequest
// encodes, the service decodes as that request (and as deterministic
// proto.Marshal would write it); whatever it refuses as invalid, the
// service would refuse too.
func FuzzProtobufRequestRoundTrip(f *testing.F) {
	anyBytes := testAny(f)
	f.Add(uint8(JoinGroup), uint64(1), true, "g", "", false, uint8(Text), []byte(nil), uint64(0), "", "", uint64(0))
	f.Add(uint8(LeaveGroup), uint64(0), false, "g", "", false, uint8(Text), []byte(nil), uint64(0), "", "", uint64(0))
	f.Add(uint8(SendToGroup), uint64(3), true, "g", "", true, uint8(JSON), []byte(`{"a":1}`), uint64(30), "k", "v", uint64(0))
	f.Add(uint8(SendToGroup), uint64(0), false, "g", "", false, uint8(Protobuf), anyBytes, uint64(0), "", "", uint64(0))
	f.Add(uint8(SendToGroup), uint64(0), false, "g", "", false, uint8(Binary), []byte{0, 0xff}, uint64(1)<<32, "", "", uint64(0))
	f.Add(uint8(Event), uint64(9), true, "", "e", false, uint8(Text), []byte("hi"), uint64(0), "k", "", uint64(0))
	f.Add(uint8(Event), uint64(0), false, "", "1", false, uint8(JSON), []byte("\"\xff\""), uint64(0), "", "", uint64(0))
	f.Add(uint8(SequenceAck), uint64(0), false, "", "", false, uint8(0), []byte(nil), uint64(0), "", "", uint64(7))
	f.Add(uint8(Ping), uint64(0), false, "", "", false, uint8(0), []byte(nil), uint64(0), "", "", uint64(0))
	f.Add(uint8(Invoke), uint64(0), false, "", "e", false, uint8(Text), []byte("x"), uint64(0), "", "", uint64(0))
	f.Fuzz(func(t *testing.T, typ uint8, ackID uint64, hasAck bool, group, event string, noEcho bool, dt uint8, data []byte, ttl uint64, mdKey, mdValue string, seq uint64) {
		req := Request{Type: RequestType(typ), AckID: ackID, HasAckID: hasAck, Group: group, Event: event, NoEcho: noEcho,
			DataType: DataType(dt), Data: data, TTLSeconds: ttl, SequenceID: seq}
		if mdKey != "" || mdValue != "" {
			req.Metadata = map[string]string{mdKey: mdValue}
		}
		frame, err := AppendProtobufRequest(nil, req)
		if err == nil {
			checkRequestRoundTrip(t, req)
			return
		}
		if frame != nil {
			t.Fatalf("dst grew on error: %x", frame)
		}
		switch {
		case errors.Is(err, ErrNotInProtobuf):
			if ref := refUpstream(req); ref != nil {
				t.Fatalf("%+v: %v, but the generated types hold it", req, err)
			}
		case errors.Is(err, ErrInvalidMessage):
			if ref := refUpstream(req); ref != nil {
				if b, err := proto.Marshal(ref); err == nil {
					if got, err := DecodeProtobufRequest(b); err == nil {
						t.Fatalf("%+v refused, but the service accepts it as %+v", req, got)
					}
				}
			}
		default:
			t.Fatalf("%+v: error wraps neither sentinel: %v", req, err)
		}
	})
}
