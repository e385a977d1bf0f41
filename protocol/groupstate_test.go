package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeGroupStateRequests(t *testing.T) {
	for frame, want := range map[string]Request{
		`{"type":"setGroupState","group":"room","state":{"activity":"typing","b":""},"ackId":1}`: {Type: SetGroupState, Group: "room", State: map[string]string{"activity": "typing", "b": ""}, AckID: 1, HasAckID: true},
		`{"type":"setGroupState","group":"room","state":null}`:                                   {Type: SetGroupState, Group: "room"},
		`{"type":"setGroupState","group":"room","ackId":2}`:                                      {Type: SetGroupState, Group: "room", AckID: 2, HasAckID: true}, // the JS SDK clears so
		`{"type":"SETGROUPSTATE","group":"room","state":{}}`:                                     {Type: SetGroupState, Group: "room"},
		`{"type":"subscribeGroupState","group":"room","ackId":3}`:                                {Type: SubscribeGroupState, Group: "room", AckID: 3, HasAckID: true},
		`{"type":"unsubscribeGroupState","group":"room","state":[1]}`:                            {Type: UnsubscribeGroupState, Group: "room"},
	} {
		got, err := DecodeJSONRequest([]byte(frame))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v, %v\nwant %+v", frame, got, err, want)
		}
	}
	for _, frame := range []string{
		`{"type":"setGroupState","state":{"a":"b"}}`, `{"type":"setGroupState","group":"","state":null}`,
		`{"type":"subscribeGroupState","group":" "}`, `{"type":"unsubscribeGroupState"}`,
		`{"type":"subscribeGroupState","group":"g","ackId":"1"}`,
		`{"type":"setGroupState","group":"g","state":"typing"}`, `{"type":"setGroupState","group":"g","state":[]}`,
		`{"type":"setGroupState","group":"g","state":{"a":1}}`, `{"type":"setGroupState","group":"g","state":{"a":null}}`,
		`{"type":"setGroupState","group":"g","state":{"a":{"b":"c"}}}`, `{"type":"setGroupState","group":"g","state":{"a":"b","a":"c"}}`,
		`{"type":"setGroupState","group":"g","state":{"a":"b"`,
	} {
		if _, err := DecodeJSONRequest([]byte(frame)); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: err %v, want an invalid message", frame, err)
		}
	}
}

func TestValidateGroupState(t *testing.T) {
	for _, ok := range []map[string]string{
		nil, {"a": ""}, {strings.Repeat("k", MaxGroupStateKey): strings.Repeat("v", MaxGroupStateValue)},
		{"a": strings.Repeat("v", 1023), "b": strings.Repeat("v", 1023), "c": strings.Repeat("v", 1023), "d": strings.Repeat("v", 1023)}, // 4,096 bytes
	} {
		if err := ValidateGroupState(ok); err != nil {
			t.Errorf("%.40v: %v", ok, err)
		}
	}
	for _, bad := range []map[string]string{
		{"": "v"}, {strings.Repeat("k", MaxGroupStateKey+1): ""}, {"k": strings.Repeat("v", MaxGroupStateValue+1)},
		{"a": strings.Repeat("v", 1023), "b": strings.Repeat("v", 1023), "c": strings.Repeat("v", 1023), "d": strings.Repeat("v", 1024)},
	} {
		if err := ValidateGroupState(bad); err == nil {
			t.Errorf("%.40v: accepted", bad)
		}
	}
}

func TestAppendGroupStateFrames(t *testing.T) {
	items := []GroupStateItem{
		{ConnectionID: "c1", UserID: "alice", State: map[string]string{"z": "1", "a": "\"q\""}, UpdatedAt: 1741652400000},
		{ConnectionID: "c2", UpdatedAt: 7}, // anonymous, its state gone
	}
	for _, tc := range []struct{ got, want string }{
		{string(AppendGroupStateSnapshot(nil, "room", nil)), `{"type":"groupStateSnapshot","group":"room","items":[]}`},
		{string(AppendGroupStateSnapshot(nil, "room", items)), `{"type":"groupStateSnapshot","group":"room","items":[{"connectionId":"c1","userId":"alice","state":{"a":"\"q\"","z":"1"},"updatedAt":1741652400000},{"connectionId":"c2","updatedAt":7}]}`},
		{string(AppendGroupStateUpdate(nil, "r\x01", items[1:])), `{"type":"groupStateUpdate","group":"r\u0001","items":[{"connectionId":"c2","updatedAt":7}]}`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
		if !json.Valid([]byte(tc.got)) {
			t.Errorf("not valid JSON: %s", tc.got)
		}
	}
}
