package pubsub_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// invokeHandler answers invocations by their data: "fail" fails, "silent"
// replies nothing, "big" replies more than MaxMessageSize, anything else is
// echoed as JSON with the event name.
func invokeHandler(_ context.Context, req *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
	switch string(req.Data) {
	case "fail":
		return nil, errors.New("upstream failed")
	case "silent":
		return nil, nil
	case "big":
		return &pubsub.UserEventResponse{DataType: pubsub.DataTypeText, Data: []byte(strings.Repeat("x", 2048))}, nil
	}
	return &pubsub.UserEventResponse{DataType: pubsub.DataTypeJSON, Data: []byte(`{"event":` + quote(req.EventName) + `,"dataType":` + quote(req.DataType.String()) + `,"data":` + quote(string(req.Data)) + `}`)}, nil
}

func TestInvoke(t *testing.T) {
	for _, sub := range []string{"json.webpubsub.azure.v1", "json.reliable.webpubsub.azure.v1"} {
		t.Run(sub, func(t *testing.T) {
			e := newEnv(t, pubsub.Config{MaxMessageSize: 1024, EventHandler: pubsub.EventHandlerFuncs{OnUserEvent: invokeHandler}})
			c := wstest.Dial(t, e.url(pubsub.TokenOptions{UserID: "u", Roles: allRoles}), nil, sub)
			connected := c.NextJSON()
			id, _ := connected["connectionId"].(string)
			expect := func(want string) {
				t.Helper()
				if f := c.Next(); string(f.Data) != want {
					t.Fatalf("got  %s\nwant %s", f.Data, want)
				}
			}

			c.Send(`{"type":"invoke","invocationId":"1","target":"event","event":"add","dataType":"text","data":"hi"}`)
			expect(`{"type":"invokeResponse","invocationId":"1","success":true,"dataType":"json","data":{"event":"add","dataType":"text","data":"hi"}}`)
			c.Send(`{"type":"invoke","invocationId":"2","target":"event","event":"add","dataType":"json","data":{"a" : [1]}}`)
			expect(`{"type":"invokeResponse","invocationId":"2","success":true,"dataType":"json","data":{"event":"add","dataType":"json","data":"{\"a\":[1]}"}}`)
			c.Send(`{"type":"invoke","invocationId":"3","target":"event","event":"add"}`)
			expect(`{"type":"invokeResponse","invocationId":"3","success":true,"dataType":"json","data":{"event":"add","dataType":"text","data":""}}`)
			c.Send(`{"type":"invoke","invocationId":"4","target":"event","event":"add","dataType":"text","data":"silent"}`)
			expect(`{"type":"invokeResponse","invocationId":"4","success":true}`)

			// Failures fail that invocation only.
			c.Send(`{"type":"invoke","invocationId":"5","target":"event","event":"add","dataType":"text","data":"fail"}`)
			expect(`{"type":"invokeResponse","invocationId":"5","success":false,"error":{"name":"InternalServerError","message":"upstream failed"}}`)
			c.Send(`{"type":"invoke","invocationId":"6","target":"event","event":"add","dataType":"text","data":"big"}`)
			f := c.NextJSON()
			if f["invocationId"] != "6" || f["success"] != false || f["error"].(map[string]any)["name"] != "InternalServerError" ||
				!strings.Contains(f["error"].(map[string]any)["message"].(string), "larger than the 1024 bytes") {
				t.Fatalf("oversize reply: %v", f)
			}
			c.Send(`{"type":"invoke","invocationId":"7","target":"stream","event":"add"}`)
			expect(`{"type":"invokeResponse","invocationId":"7","success":false,"error":{"name":"BadRequest","message":"Unsupported invocation target 'stream'."}}`)
			// cancelInvocation is accepted, for an answered or an unknown id.
			c.Send(`{"type":"cancelInvocation","invocationId":"1"}`)
			c.Send(`{"type":"cancelInvocation","invocationId":"nope"}`)

			c.Send(`{"type":"joinGroup","group":"g","ackId":1}`)
			c.ExpectAck(1, "")
			e.barrier(c, id)
		})
	}
}

func TestInvokeWithoutHandler(t *testing.T) {
	for name, h := range map[string]pubsub.EventHandler{
		"no EventHandler": nil,
		"no OnUserEvent":  pubsub.EventHandlerFuncs{},
		"ErrNoEventHandler": pubsub.EventHandlerFuncs{OnUserEvent: func(context.Context, *pubsub.UserEventRequest) (*pubsub.UserEventResponse, error) {
			return nil, pubsub.ErrNoEventHandler
		}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, pubsub.Config{EventHandler: h})
			c, id := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
			c.Send(`{"type":"invoke","invocationId":"a\"b","target":"event","event":"calc","dataType":"json","data":1}`)
			if f := c.Next(); string(f.Data) != `{"type":"invokeResponse","invocationId":"a\"b","success":false,"error":{"name":"InternalServerError","message":"No event handler for event 'calc'."}}` {
				t.Fatalf("got %s", f.Data)
			}
			c.Send(`{"type":"ping"}`)
			if f := c.Next(); string(f.Data) != `{"type":"pong"}` {
				t.Fatalf("got %s", f.Data)
			}
			e.barrier(c, id)
		})
	}
}

// A malformed invoke is an invalid message, as any malformed request.
func TestInvokeMalformedCloses(t *testing.T) {
	e := newEnv(t, pubsub.Config{})
	c, _ := wstest.DialJSON(t, e.url(pubsub.TokenOptions{}))
	c.Send(`{"type":"invoke","event":"calc"}`)
	if info, _ := c.ExpectClose(); info.Code != 1007 {
		t.Fatalf("close %d, want 1007", info.Code)
	}
}
