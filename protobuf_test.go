package pubsub_test

import (
	"context"
	"encoding/base64"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol/pb"
)

// pbClient speaks protobuf.webpubsub.azure.v1 with the types generated from
// the spec's .proto.
type pbClient struct {
	t  *testing.T
	c  *wstest.Client
	id string
}

func dialProtobuf(t *testing.T, u, subprotocol string) (*pbClient, *pb.DownstreamMessage_SystemMessage_ConnectedMessage) {
	t.Helper()
	c := wstest.Dial(t, u, nil, subprotocol)
	p := &pbClient{t: t, c: c}
	m := p.next()
	conn := m.GetSystemMessage().GetConnectedMessage()
	if conn == nil {
		t.Fatalf("first message %v", m)
	}
	p.id = conn.ConnectionId
	return p, conn
}

func (p *pbClient) next() *pb.DownstreamMessage {
	p.t.Helper()
	f := p.c.Next()
	if !f.Binary {
		p.t.Fatalf("text frame on a protobuf client: %q", f.Data)
	}
	var m pb.DownstreamMessage
	if err := proto.Unmarshal(f.Data, &m); err != nil {
		p.t.Fatalf("not a DownstreamMessage: %v", err)
	}
	return &m
}

func (p *pbClient) send(m *pb.UpstreamMessage) {
	p.t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		p.t.Fatal(err)
	}
	p.c.SendBinary(b)
}

func (p *pbClient) expectAck(id uint64, errName string) {
	p.t.Helper()
	a := p.next().GetAckMessage()
	if a == nil || a.AckId != id || a.Success != (errName == "") || a.GetError().GetName() != errName {
		p.t.Fatalf("ack %v, want %d %q", a, id, errName)
	}
}

func u64(v uint64) *uint64 { return &v }

func sendToGroup(group string, ack uint64, data *pb.MessageData, noEcho bool) *pb.UpstreamMessage {
	return &pb.UpstreamMessage{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{
		Group: group, AckId: u64(ack), Data: data, NoEcho: &noEcho,
	}}}
}

func TestProtobufClientsWithJSONAndSimpleClients(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	ctx := context.Background()
	p, conn := dialProtobuf(t, e.url(pubsub.TokenOptions{UserID: "p", Roles: allRoles}), "protobuf.webpubsub.azure.v1")
	if conn.UserId != "p" || conn.ReconnectionToken != nil {
		t.Fatalf("connected %v", conn)
	}
	j, jID := wstest.DialJSON(t, e.url(pubsub.TokenOptions{UserID: "j", Roles: allRoles, Groups: []string{"room"}}))
	s := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "s", Groups: []string{"room"}}), nil)

	p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: "room", AckId: u64(1)}}})
	p.expectAck(1, "")
	p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_PingMessage_{PingMessage: &pb.UpstreamMessage_PingMessage{}}})
	if p.next().GetPongMessage() == nil {
		t.Fatal("no pong")
	}

	any, _ := anypb.New(wrapperspb.Int32(1))
	anyBytes, _ := proto.MarshalOptions{Deterministic: true}.Marshal(any)
	// Protobuf producer → JSON and simple receivers (spec §6.3).
	for i, tc := range []struct {
		data     *pb.MessageData
		jsonWant string
		binary   bool
		raw      string
	}{
		{&pb.MessageData{Data: &pb.MessageData_TextData{TextData: "hi"}}, `"dataType":"text","data":"hi"`, false, "hi"},
		{&pb.MessageData{Data: &pb.MessageData_BinaryData{BinaryData: []byte{0, 255}}}, `"dataType":"binary","data":"AP8="`, true, "\x00\xff"},
		{&pb.MessageData{Data: &pb.MessageData_JsonData{JsonData: `{"a":1}`}}, `"dataType":"json","data":{"a":1}`, false, `{"a":1}`},
		{&pb.MessageData{Data: &pb.MessageData_ProtobufData{ProtobufData: any}}, `"dataType":"protobuf","data":"` + base64.StdEncoding.EncodeToString(anyBytes) + `"`, true, string(anyBytes)},
	} {
		ack := uint64(10 + i)
		p.send(sendToGroup("room", ack, tc.data, true))
		p.expectAck(ack, "")
		want := `{"type":"message","from":"group","group":"room","fromUserId":"p",` + tc.jsonWant + `}`
		if f := j.Next(); string(f.Data) != want {
			t.Fatalf("JSON receiver got %s\nwant %s", f.Data, want)
		}
		if f := s.Next(); f.Binary != tc.binary || string(f.Data) != tc.raw {
			t.Fatalf("simple receiver got %v %q", f.Binary, f.Data)
		}
	}

	// JSON producer and the Go API → protobuf receiver.
	for _, tc := range []struct {
		send func()
		want *pb.MessageData
		from string
	}{
		{func() { j.Send(`{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"text","data":"t"}`) }, &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "t"}}, "group"},
		{func() { j.Send(`{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"json","data":[1]}`) }, &pb.MessageData{Data: &pb.MessageData_JsonData{JsonData: "[1]"}}, "group"},
		{func() {
			j.Send(`{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"binary","data":"AQI="}`)
		}, &pb.MessageData{Data: &pb.MessageData_BinaryData{BinaryData: []byte{1, 2}}}, "group"},
		{func() { e.hub.SendToConnection(ctx, p.id, pubsub.TextMessage("direct")) }, &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "direct"}}, "server"},
		{func() {
			e.hub.SendToGroup(ctx, "room", pubsub.Message{DataType: pubsub.DataTypeProtobuf, Data: anyBytes}, pubsub.Excluding(jID))
		}, &pb.MessageData{Data: &pb.MessageData_ProtobufData{ProtobufData: any}}, "group"},
	} {
		tc.send()
		m := p.next().GetDataMessage()
		if m == nil || m.From != tc.from || !proto.Equal(m.Data, tc.want) || m.SequenceId != nil {
			t.Fatalf("protobuf receiver got %v, want %v from %s", m, tc.want, tc.from)
		}
		if tc.from == "group" && m.GetGroup() != "room" {
			t.Fatalf("group %q", m.GetGroup())
		}
		if tc.from == "group" {
			s.Next() // the simple member of room gets each group message
		}
	}
}

func TestProtobufErrorsAndPermissions(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	p, _ := dialProtobuf(t, e.url(pubsub.TokenOptions{}), "protobuf.webpubsub.azure.v1")
	p.send(sendToGroup("room", 1, &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "x"}}, false))
	p.expectAck(1, "Forbidden")
	p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{
		Event: "e", AckId: u64(2), Data: &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "x"}}}}})
	p.expectAck(2, "InternalServerError") // no event handler

	for name, tc := range map[string]struct {
		send func(*wstest.Client)
		code uint16
	}{
		"text frame":   {func(c *wstest.Client) { c.Send("hello") }, 1003},
		"not protobuf": {func(c *wstest.Client) { c.SendBinary([]byte{0xff, 0xff, 0xff}) }, 1007},
		"empty":        {func(c *wstest.Client) { c.SendBinary([]byte{}) }, 1007},
		"no group": {func(c *wstest.Client) {
			b, _ := proto.Marshal(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{}}})
			c.SendBinary(b)
		}, 1007},
	} {
		t.Run(name, func(t *testing.T) {
			q, _ := dialProtobuf(t, e.url(pubsub.TokenOptions{}), "protobuf.webpubsub.azure.v1")
			tc.send(q.c)
			info, frames := q.c.ExpectClose()
			if info.Code != tc.code || len(frames) != 1 {
				t.Fatalf("close %+v after %d frames, want %d after the disconnected message", info, len(frames), tc.code)
			}
			var m pb.DownstreamMessage
			if err := proto.Unmarshal(frames[0].Data, &m); err != nil || m.GetSystemMessage().GetDisconnectedMessage() == nil {
				t.Fatalf("not a disconnected message: %v", err)
			}
		})
	}
}

func TestProtobufReliableSequenceIDs(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	p, conn := dialProtobuf(t, e.url(pubsub.TokenOptions{UserID: "p", Groups: []string{"g"}}), "protobuf.reliable.webpubsub.azure.v1")
	if conn.GetReconnectionToken() == "" {
		t.Fatal("no reconnection token")
	}
	j := dialReliable(t, e.url(pubsub.TokenOptions{UserID: "j", Groups: []string{"g"}}))
	for i := 1; i <= 3; i++ {
		must(t, e.hub.SendToGroup(t.Context(), "g", pubsub.TextMessage("x")))
	}
	for want := uint64(1); want <= 3; want++ {
		m := p.next().GetDataMessage()
		if m.GetSequenceId() != want || m.GetData().GetTextData() != "x" || m.GetGroup() != "g" {
			t.Fatalf("message %v, want sequence id %d", m, want)
		}
	}
	j.readUntil(3) // the JSON reliable receiver of the same messages has its own ids
}
