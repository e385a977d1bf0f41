package pubsub_test

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol/pb"
)

// TestUnsupportedRequestsKeepTheConnection: well-formed requests of a type
// the service does not implement are answered where the protocol has a
// frame for it (an ack), dropped otherwise, and the connection stays up.
// (Group streaming: stream_test.go.)
func TestUnsupportedRequestsKeepTheConnection(t *testing.T) {
	for _, sub := range []string{"json.webpubsub.azure.v1", "json.reliable.webpubsub.azure.v1"} {
		t.Run(sub, func(t *testing.T) {
			e := newEnv(t, pubsub.Config{})
			c := wstest.Dial(t, e.url(pubsub.TokenOptions{Roles: allRoles}), nil, sub)
			id, _ := c.NextJSON()["connectionId"].(string)
			expect := func(want string) {
				t.Helper()
				if f := c.Next(); string(f.Data) != want {
					t.Fatalf("got  %s\nwant %s", f.Data, want)
				}
			}

			// Unknown types, with an ackId: an ack error, not remembered (a
			// retry is refused again, not a Duplicate).
			c.Send(`{"type":"getGroupState","group":"room","ackId":3}`)
			expect(`{"type":"ack","ackId":3,"success":false,"error":{"name":"BadRequest","message":"The request type 'getGroupState' is not supported."}}`)
			c.Send(`{"type":"getGroupState","group":"room","ackId":3}`)
			expect(`{"type":"ack","ackId":3,"success":false,"error":{"name":"BadRequest","message":"The request type 'getGroupState' is not supported."}}`)
			c.Send(`{"type":"dance","ackId":4,"moves":[1,2]}`)
			expect(`{"type":"ack","ackId":4,"success":false,"error":{"name":"BadRequest","message":"The request type 'dance' is not supported."}}`)
			// Without an ackId there is nothing to answer with: dropped.
			c.Send(`{"type":"getGroupState","group":"room"}`)
			c.Send(`{"type":"dance"}`)

			// The connection still works, and the ackIds refused are free.
			c.Send(`{"type":"joinGroup","group":"room","ackId":4}`)
			c.ExpectAck(4, "")
			e.barrier(c, id)
		})
	}
}

// TestUnsupportedRequestsThatStillClose: a frame that is not a well-formed
// request still closes with 1007.
func TestUnsupportedRequestsThatStillClose(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	for name, frame := range map[string]string{
		"unknown type with a string ackId": `{"type":"dance","ackId":"1"}`,
		"type not a string":                `{"type":5,"ackId":1}`,
		"streamData without streamId":      `{"type":"streamData","streamSequenceId":1}`,
		"streamEnd with empty streamId":    `{"type":"streamEnd","streamId":""}`,
		"stream start without streamId":    `{"type":"sendToGroup","group":"g","stream":{}}`,
		"stream not an object":             `{"type":"sendToGroup","group":"g","stream":"s"}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
			c.Send(frame)
			if info, _ := c.ExpectClose(); info.Code != 1007 {
				t.Fatalf("close code %d (%q), want 1007", info.Code, info.Reason)
			}
		})
	}
}

func TestProtobufUnsupportedRequestsKeepTheConnection(t *testing.T) {
	for _, sub := range []string{"protobuf.webpubsub.azure.v1", "protobuf.reliable.webpubsub.azure.v1"} {
		t.Run(sub, func(t *testing.T) {
			e := newEnv(t, pubsub.Config{})
			p, _ := dialProtobuf(t, e.url(pubsub.TokenOptions{Roles: allRoles}), sub)
			expectRefused := func(ack uint64, msg string) {
				t.Helper()
				a := p.next().GetAckMessage()
				if a == nil || a.AckId != ack || a.Success || a.GetError().GetName() != "BadRequest" || a.GetError().GetMessage() != msg {
					t.Fatalf("ack %v, want %d BadRequest %q", a, ack, msg)
				}
			}
			// Stream starts: refused by their ack, dropped without one.
			p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{
				Group: "room", AckId: u64(1), Stream: &pb.UpstreamMessage_StreamStartInfo{StreamId: "s"}}}})
			expectRefused(1, "The request type 'sendToGroup stream' is not supported.")
			p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_EventMessage_{EventMessage: &pb.UpstreamMessage_EventMessage{
				Event: "e", AckId: u64(2), Stream: &pb.UpstreamMessage_StreamStartInfo{StreamId: "s"}}}})
			expectRefused(2, "The request type 'event stream' is not supported.")
			p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{
				Group: "room", Stream: &pb.UpstreamMessage_StreamStartInfo{StreamId: "s"}}}})

			// Group state subscriptions (UpstreamMessage fields 16 and 17,
			// group = 1, ack_id = 2), as the JS SDK encodes them: refused,
			// group state updates having no known protobuf message.
			stateMsg := func(field protowire.Number, group string, ack uint64) []byte {
				var body []byte
				body = protowire.AppendTag(body, 1, protowire.BytesType)
				body = protowire.AppendString(body, group)
				if ack != 0 {
					body = protowire.AppendTag(body, 2, protowire.VarintType)
					body = protowire.AppendVarint(body, ack)
				}
				b := protowire.AppendTag(nil, field, protowire.BytesType)
				return protowire.AppendBytes(b, body)
			}
			p.c.SendBinary(stateMsg(16, "room", 3))
			expectRefused(3, "The request type 'subscribeGroupState' is not supported.")
			p.c.SendBinary(stateMsg(17, "room", 4))
			expectRefused(4, "The request type 'unsubscribeGroupState' is not supported.")
			p.c.SendBinary(stateMsg(17, "room", 0))
			// A oneof member of a newer proto: its ack_id is unknown, dropped.
			p.c.SendBinary(stateMsg(20, "room", 5))

			p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_JoinGroupMessage_{JoinGroupMessage: &pb.UpstreamMessage_JoinGroupMessage{Group: "room", AckId: u64(6)}}})
			p.expectAck(6, "")
		})
	}
}
