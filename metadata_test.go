package pubsub_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
	"github.com/embedwps/pubsub/protocol/pb"
)

// TestClientMetadata: a client's sendToGroup metadata reaches JSON and
// protobuf receivers, an event's reaches the event handler; invalid
// metadata is an invalid message.
func TestClientMetadata(t *testing.T) {
	var mu sync.Mutex
	var got map[string]string
	e := newEnv(t, pubsub.Config{EventHandler: pubsub.EventHandlerFuncs{OnUserEvent: func(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
		mu.Lock()
		got = req.Metadata
		mu.Unlock()
		return nil, nil
	}}})
	recv := wstest.Dial(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}}), nil, "json.reliable.webpubsub.azure.v1")
	recv.NextJSON()
	p, _ := dialProtobuf(t, e.url(pubsub.TokenOptions{Groups: []string{"room"}, Roles: allRoles}), "protobuf.webpubsub.azure.v1")
	c := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "u", Roles: allRoles}), nil, "json.webpubsub.azure.v1")
	c.NextJSON()

	c.Send(`{"type":"sendToGroup","group":"room","ackId":1,"dataType":"text","data":"hi","metadata":{"b":"2","A-Key":"v 1"}}`)
	c.ExpectAck(1, "")
	if f := recv.Next(); string(f.Data) != `{"sequenceId":1,"type":"message","from":"group","group":"room","fromUserId":"u","metadata":{"A-Key":"v 1","b":"2"},"dataType":"text","data":"hi"}` {
		t.Fatalf("JSON receiver got %s", f.Data)
	}
	if m := p.next().GetDataMessage(); m.GetData().GetTextData() != "hi" || len(m.GetMetadata()) != 2 || m.GetMetadata()["A-Key"] != "v 1" || m.GetMetadata()["b"] != "2" {
		t.Fatalf("protobuf receiver got %v", m)
	}
	// Metadata without data: empty text.
	c.Send(`{"type":"sendToGroup","group":"room","ackId":2,"metadata":{"k":"v"}}`)
	c.ExpectAck(2, "")
	if f := recv.Next(); string(f.Data) != `{"sequenceId":2,"type":"message","from":"group","group":"room","fromUserId":"u","metadata":{"k":"v"},"dataType":"text","data":""}` {
		t.Fatalf("JSON receiver got %s", f.Data)
	}
	if m := p.next().GetDataMessage(); m.GetData().GetTextData() != "" || m.GetMetadata()["k"] != "v" {
		t.Fatalf("protobuf receiver got %v", m)
	}
	// A protobuf publisher's metadata.
	p.send(&pb.UpstreamMessage{Message: &pb.UpstreamMessage_SendToGroupMessage_{SendToGroupMessage: &pb.UpstreamMessage_SendToGroupMessage{
		Group: "room", AckId: u64(3), Metadata: map[string]string{"x": "y"}, Data: &pb.MessageData{Data: &pb.MessageData_TextData{TextData: "pb"}}}}})
	if f := recv.Next(); string(f.Data) != `{"sequenceId":3,"type":"message","from":"group","group":"room","metadata":{"x":"y"},"dataType":"text","data":"pb"}` {
		t.Fatalf("JSON receiver got %s", f.Data)
	}
	// protobuf receivers: the publisher's own copy, then its ack
	if m := p.next().GetDataMessage(); m.GetMetadata()["x"] != "y" {
		t.Fatalf("protobuf receiver got %v", m)
	}
	p.expectAck(3, "")

	c.Send(`{"type":"event","event":"e","ackId":4,"dataType":"text","data":"x","metadata":{"trace":"abc"}}`)
	c.ExpectAck(4, "")
	mu.Lock()
	if len(got) != 1 || got["trace"] != "abc" {
		t.Fatalf("handler got metadata %v", got)
	}
	mu.Unlock()

	for name, frame := range map[string]string{
		"not an object":   `{"type":"sendToGroup","group":"room","data":1,"metadata":[1]}`,
		"number value":    `{"type":"sendToGroup","group":"room","data":1,"metadata":{"a":1}}`,
		"bad key":         `{"type":"sendToGroup","group":"room","data":1,"metadata":{"a b":"1"}}`,
		"duplicate key":   `{"type":"event","event":"e","data":1,"metadata":{"a":"1","a":"2"}}`,
		"long value":      `{"type":"event","event":"e","data":1,"metadata":{"a":"` + strings.Repeat("v", 1025) + `"}}`,
		"non-ASCII value": `{"type":"event","event":"e","data":1,"metadata":{"a":"é"}}`,
		"ttl not a uint":  `{"type":"sendToGroup","group":"room","data":1,"ttlSeconds":-1}`,
	} {
		t.Run(name, func(t *testing.T) {
			q, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{Roles: allRoles}))
			q.Send(frame)
			if info, _ := q.ExpectClose(); info.Code != 1007 {
				t.Fatalf("close code %d (%q), want 1007", info.Code, info.Reason)
			}
		})
	}
}

// TestClientTTLSeconds: a sendToGroup's ttlSeconds drops it for a receiver
// that has not been written it in time, as REST messageTtlSeconds does;
// out of range is refused by its ack.
func TestClientTTLSeconds(t *testing.T) {
	e := newEnv(t, pubsub.Config{OutboundBufferSize: 256 << 20, WriteTimeout: time.Minute})
	ctx := t.Context()
	c := wstest.Dial(t, e.url(pubsub.TokenOptions{Roles: allRoles}), nil, "json.webpubsub.azure.v1")
	c.NextJSON()
	c.Send(`{"type":"sendToGroup","group":"room","ackId":1,"ttlSeconds":301,"dataType":"text","data":"x"}`)
	c.ExpectAck(1, "BadRequest")
	c.Send(`{"type":"sendToGroup","group":"room","ackId":1,"ttlSeconds":300,"dataType":"text","data":"x"}`)
	c.ExpectAck(1, "") // the refused ackId was free

	reader := wstest.RawDial(t, e.url(pubsub.TokenOptions{UserID: "late", Groups: []string{"room"}}))
	if ok, _ := e.hub.UserExists(ctx, "late"); !ok {
		t.Fatal("not connected")
	}
	big := make([]byte, 1<<20)
	for i := 0; i < 40; i++ {
		must(t, e.hub.SendToUser(ctx, "late", pubsub.BinaryMessage(big)))
	}
	c.Send(`{"type":"sendToGroup","group":"room","ackId":2,"ttlSeconds":1,"dataType":"text","data":"expiring"}`)
	c.ExpectAck(2, "")
	c.Send(`{"type":"sendToGroup","group":"room","ackId":3,"ttlSeconds":300,"dataType":"text","data":"kept"}`)
	c.ExpectAck(3, "")
	c.Send(`{"type":"sendToGroup","group":"room","ackId":4,"ttlSeconds":0,"dataType":"text","data":"no ttl"}`)
	c.ExpectAck(4, "")
	time.Sleep(1200 * time.Millisecond) // the TTL passing is what is tested

	var texts []string
	for len(texts) < 2 {
		op, p, err := reader.ReadFrame()
		if err != nil {
			t.Fatalf("after %q: %v", texts, err)
		}
		if op == 0x1 {
			texts = append(texts, string(p))
		}
	}
	if strings.Join(texts, ",") != "kept,no ttl" {
		t.Fatalf("text frames %q, want the expired one dropped", texts)
	}
}
