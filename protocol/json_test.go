package protocol

import (
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecodeJSONRequest(t *testing.T) {
	cases := []struct {
		frame string
		want  Request
	}{
		{`{"type":"joinGroup","group":"g","ackId":1}`, Request{Type: JoinGroup, Group: "g", AckID: 1, HasAckID: true}},
		{`{"type":"JOINGROUP","group":"g"}`, Request{Type: JoinGroup, Group: "g"}},
		{`{"type":"leaveGroup","group":"a.b","ackId":18446744073709551615}`, Request{Type: LeaveGroup, Group: "a.b", AckID: 1<<64 - 1, HasAckID: true}},
		{`{"type":"sendToGroup","group":"g","data":{"a" : 1}}`, Request{Type: SendToGroup, Group: "g", DataType: JSON, Data: []byte(`{"a":1}`)}},
		{`{"type":"sendToGroup","group":"g","noEcho":true,"dataType":"text","data":"hi\n"}`, Request{Type: SendToGroup, Group: "g", NoEcho: true, DataType: Text, Data: []byte("hi\n")}},
		{`{"type":"sendToGroup","group":"g","dataType":"Binary","data":"AAE="}`, Request{Type: SendToGroup, Group: "g", DataType: Binary, Data: []byte{0, 1}}},
		{`{"type":"sendToGroup","group":"g","dataType":"protobuf","data":"AAE="}`, Request{Type: SendToGroup, Group: "g", DataType: Protobuf, Data: []byte{0, 1}}},
		{`{"type":"event","event":"my.event-1","ackId":3,"dataType":"text","data":""}`, Request{Type: Event, Event: "my.event-1", AckID: 3, HasAckID: true, DataType: Text, Data: []byte{}}},
		{`{"type":"ping"}`, Request{Type: Ping}},
		{`{"type":"sequenceAck","sequenceId":5}`, Request{Type: SequenceAck, SequenceID: 5}},
		{`{"type":"joinGroup","group":"g","ackId":null,"extra":[1]}`, Request{Type: JoinGroup, Group: "g"}},
		{`{"type":"invoke","invocationId":"1","target":"event","event":"add","dataType":"json","data":{"a" : 1}}`, Request{Type: Invoke, InvocationID: "1", Target: "event", Event: "add", DataType: JSON, Data: []byte(`{"a":1}`)}},
		{`{"type":"invoke","invocationId":"x","target":"event","event":"e","dataType":"binary","data":"AAE="}`, Request{Type: Invoke, InvocationID: "x", Target: "event", Event: "e", DataType: Binary, Data: []byte{0, 1}}},
		{`{"type":"invoke","invocationId":"2","event":"e"}`, Request{Type: Invoke, InvocationID: "2", Target: "event", Event: "e", DataType: Text, Data: []byte{}}},
		{`{"type":"Invoke","invocationId":"3","target":"group","event":"e","dataType":"text","data":null,"ackId":9}`, Request{Type: Invoke, InvocationID: "3", Target: "group", Event: "e", DataType: Text, Data: []byte{}}},
		{`{"type":"cancelInvocation","invocationId":"7"}`, Request{Type: CancelInvocation, InvocationID: "7"}},
	}
	for _, tc := range cases {
		got, err := DecodeJSONRequest([]byte(tc.frame))
		if err != nil {
			t.Errorf("%s: %v", tc.frame, err)
			continue
		}
		if got.Type != tc.want.Type || got.Group != tc.want.Group || got.Event != tc.want.Event ||
			got.AckID != tc.want.AckID || got.HasAckID != tc.want.HasAckID || got.NoEcho != tc.want.NoEcho ||
			got.DataType != tc.want.DataType || string(got.Data) != string(tc.want.Data) || got.SequenceID != tc.want.SequenceID ||
			got.InvocationID != tc.want.InvocationID || got.Target != tc.want.Target {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.frame, got, tc.want)
		}
	}
}

func TestDecodeJSONRequestInvalid(t *testing.T) {
	for _, frame := range []string{
		``, `null`, `[]`, `"x"`, `{`, `{"type":1}`, `{}`,
		`{"type":"joinGroup"}`, `{"type":"joinGroup","group":""}`, `{"type":"joinGroup","group":" \t"}`,
		`{"type":"joinGroup","group":"` + strings.Repeat("g", 1025) + `"}`,
		`{"type":"joinGroup","group":"g","ackId":-1}`, `{"type":"joinGroup","group":"g","ackId":"1"}`,
		`{"type":"joinGroup","group":"g","ackId":1e3}`, `{"type":"joinGroup","group":"g","ackId":18446744073709551616}`,
		`{"type":"sendToGroup","group":"g"}`, `{"type":"sendToGroup","group":"g","data":null}`,
		`{"type":"sendToGroup","group":"g","noEcho":1,"data":1}`, `{"type":"sendToGroup","group":"g","dataType":"text","data":{}}`,
		`{"type":"sendToGroup","group":"g","dataType":"binary","data":"%%%"}`, `{"type":"sendToGroup","group":"g","dataType":"avro","data":""}`,
		`{"type":"event","data":1}`, `{"type":"event","event":"_x","data":1}`, `{"type":"event","event":"` + strings.Repeat("e", 129) + `","data":1}`,
		`{"type":"sequenceAck"}`, `{"type":"sequenceAck","sequenceId":-2}`,
		`{"type":"invoke","event":"e"}`, `{"type":"invoke","invocationId":"","event":"e"}`, `{"type":"invoke","invocationId":1,"event":"e"}`,
		`{"type":"invoke","invocationId":"1"}`, `{"type":"invoke","invocationId":"1","event":"_e"}`, `{"type":"invoke","invocationId":"1","event":"e","target":1}`,
		`{"type":"invoke","invocationId":"1","event":"e","dataType":"text","data":1}`, `{"type":"invoke","invocationId":"1","event":"e","dataType":"avro"}`,
		`{"type":"cancelInvocation"}`, `{"type":"cancelInvocation","invocationId":""}`,
	} {
		if _, err := DecodeJSONRequest([]byte(frame)); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%.80s: err %v, want ErrInvalidMessage", frame, err)
		}
	}
}

func TestAppendFrames(t *testing.T) {
	cases := []struct{ got, want string }{
		{string(AppendAck(nil, 5, "", "")), `{"type":"ack","ackId":5,"success":true}`},
		{string(AppendAck(nil, 5, AckForbidden, `no "way"`)), `{"type":"ack","ackId":5,"success":false,"error":{"name":"Forbidden","message":"no \"way\""}}`},
		{string(AppendGroupMessage(nil, "g", "u", Text, []byte("a\x01"))), `{"type":"message","from":"group","group":"g","fromUserId":"u","dataType":"text","data":"a\u0001"}`},
		{string(AppendGroupMessage(nil, "g", "", JSON, []byte(`[1]`))), `{"type":"message","from":"group","group":"g","dataType":"json","data":[1]}`},
		{string(AppendServerMessage(nil, Binary, []byte{0xff})), `{"type":"message","from":"server","dataType":"binary","data":"/w=="}`},
		{string(AppendServerMessage(nil, Protobuf, []byte{1})), `{"type":"message","from":"server","dataType":"protobuf","data":"AQ=="}`},
		{string(AppendConnected(nil, "", "c1", "")), `{"type":"system","event":"connected","userId":null,"connectionId":"c1"}`},
		{string(AppendConnected(nil, "u", "c1", "tok")), `{"type":"system","event":"connected","userId":"u","connectionId":"c1","reconnectionToken":"tok"}`},
		{string(AppendDisconnected(nil, "bye")), `{"type":"system","event":"disconnected","message":"bye"}`},
		{string(AppendPong(nil)), `{"type":"pong"}`},
		{string(AppendInvokeResponse(nil, "1", JSON, []byte(`{"a":1}`))), `{"type":"invokeResponse","invocationId":"1","success":true,"dataType":"json","data":{"a":1}}`},
		{string(AppendInvokeResponse(nil, `"q"`, Text, nil)), `{"type":"invokeResponse","invocationId":"\"q\"","success":true}`},
		{string(AppendInvokeError(nil, "2", AckInternalServerError, "no")), `{"type":"invokeResponse","invocationId":"2","success":false,"error":{"name":"InternalServerError","message":"no"}}`},
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
		if !json.Valid([]byte(tc.got)) {
			t.Errorf("not valid JSON: %s", tc.got)
		}
	}
}

// FuzzDecodeJSONRequest: no input panics the decoder, and whatever it accepts
// satisfies the protocol's rules and survives a round trip through the
// encoder as a group message.
func FuzzDecodeJSONRequest(f *testing.F) {
	for _, s := range []string{
		`{"type":"joinGroup","group":"g","ackId":1}`,
		`{"type":"sendToGroup","group":"g","noEcho":true,"dataType":"text","data":"hi"}`,
		`{"type":"sendToGroup","group":"g","dataType":"binary","data":"AAE="}`,
		`{"type":"sendToGroup","group":"g","data":{"a":[1,2,{"b":null}]}}`,
		`{"type":"event","event":"e","dataType":"json","data":"x"}`,
		`{"type":"ping"}`, `{"type":"sequenceAck","sequenceId":3}`, `{"type":`,
		`{"type":"invoke","invocationId":"1","target":"event","event":"e","dataType":"json","data":{"a":1}}`,
		`{"type":"invoke","invocationId":"2","target":"event","event":"e"}`,
		`{"type":"invoke","invocationId":"3","event":"e","dataType":"json"}`,
		`{"type":"cancelInvocation","invocationId":"1"}`,
		`{"type":"sendToGroup","group":"g","stream":{"streamId":"s","idleTimeoutMs":1000}}`,
		`{"type":"streamData","streamId":"s","streamSequenceId":1,"dataType":"text","data":"x"}`,
		`{"type":"streamEnd","streamId":"s","error":{"message":"m"}}`,
		`{"type":"setGroupState","group":"g","state":{"a":"b"},"ackId":1}`,
		`{"type":"setGroupState","group":"g","state":{"activity":"typing","é":"\u00e9\ud83d\ude00","":"x"}}`,
		`{"type":"setGroupState","group":"g","state":null,"ackId":2}`,
		`{"type":"setGroupState","group":"g","state":{"a":"b","a":"c"}}`,
		`{"type":"subscribeGroupState","group":"g","ackId":3}`,
		`{"type":"unsubscribeGroupState","group":"g"}`,
		`{"type":"dance","ackId":2}`,
		`{"type":"sendToGroup","group":"g","metadata":{"k":"v","X-Y":"1 2"},"ttlSeconds":30,"dataType":"text","data":"m"}`,
		`{"type":"sendToGroup","group":"g","metadata":{"a":"b"}}`,
		`{"type":"event","event":"e","metadata":{"k":"v"},"dataType":"text","data":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		req, err := DecodeJSONRequest(frame)
		if !checkDecoded(t, req, err) {
			return
		}
		if req.Type == SetGroupState {
			checkGroupStateRoundTrip(t, req)
			return
		}
		if req.Type != SendToGroup && req.Type != Event && req.Type != Invoke {
			return
		}
		if req.DataType == JSON && !json.Valid(req.Data) {
			t.Fatalf("accepted invalid JSON data %q", req.Data)
		}
		if req.Type == Invoke {
			if resp := AppendInvokeResponse(nil, req.InvocationID, req.DataType, req.Data); !json.Valid(resp) {
				t.Fatalf("invokeResponse is not JSON: %s", resp)
			}
		}
		out := AppendGroupMessageWithMetadata(nil, req.Group, "user", req.Metadata, req.DataType, req.Data)
		var m struct {
			Group    string            `json:"group"`
			Metadata map[string]string `json:"metadata"`
			Data     json.RawMessage   `json:"data"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("encoded frame is not JSON: %v\n%s", err, out)
		}
		if utf8.ValidString(req.Group) && m.Group != req.Group {
			t.Fatalf("group %q came back as %q", req.Group, m.Group)
		}
		if !maps.Equal(m.Metadata, req.Metadata) {
			t.Fatalf("metadata %v came back as %v", req.Metadata, m.Metadata)
		}
		back, err := decodeData(req.DataType, m.Data)
		if err != nil {
			t.Fatalf("re-decoding data: %v", err)
		}
		if req.DataType != Text || utf8.Valid(req.Data) {
			if string(back) != string(req.Data) {
				t.Fatalf("data %q came back as %q", req.Data, back)
			}
		}
	})
}

// checkGroupStateRoundTrip: a decoded state, as subscribers get it in an
// update, is valid JSON that reads back as the same group and state.
func checkGroupStateRoundTrip(t *testing.T, req Request) {
	t.Helper()
	if req.State != nil && len(req.State) == 0 {
		t.Fatalf("an empty state is not nil: clearing has one form")
	}
	out := AppendGroupStateUpdate(nil, req.Group, []GroupStateItem{{ConnectionID: "c", UserID: "u", State: req.State, UpdatedAt: 1}})
	var m struct {
		Type  string `json:"type"`
		Group string `json:"group"`
		Items []struct {
			ConnectionID string            `json:"connectionId"`
			State        map[string]string `json:"state"`
			UpdatedAt    int64             `json:"updatedAt"`
		} `json:"items"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("update is not JSON: %v\n%s", err, out)
	}
	if m.Type != "groupStateUpdate" || len(m.Items) != 1 || m.Items[0].ConnectionID != "c" || m.Items[0].UpdatedAt != 1 {
		t.Fatalf("update read back as %+v", m)
	}
	if utf8.ValidString(req.Group) && m.Group != req.Group {
		t.Fatalf("group %q came back as %q", req.Group, m.Group)
	}
	if !maps.Equal(m.Items[0].State, req.State) || (m.Items[0].State == nil) != (req.State == nil) {
		t.Fatalf("state %v came back as %v", req.State, m.Items[0].State)
	}
}

// FuzzAppendString: any string encodes to valid JSON that decodes to the
// same string (invalid UTF-8 to U+FFFD, as encoding/json does).
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\"back\\slash", "ctl\x00\x1f", "é\u2028", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendString(nil, s)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("%q encoded as invalid JSON %s: %v", s, out, err)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		// encoding/json replaces each invalid byte; ToValidUTF8 a run. Compare
		// rune by rune after collapsing runs of U+FFFD.
		if collapse(back) != collapse(want) {
			t.Fatalf("%q came back as %q", s, back)
		}
	})
}

func collapse(s string) string {
	for strings.Contains(s, "\uFFFD\uFFFD") {
		s = strings.ReplaceAll(s, "\uFFFD\uFFFD", "\uFFFD")
	}
	return s
}

// checkDecoded is what every decoder promises, for the fuzz targets: errors
// wrap ErrInvalidMessage, and an accepted request names a valid group or
// event. It reports whether the request was accepted.
func checkDecoded(t *testing.T, req Request, err error) bool {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("error does not wrap ErrInvalidMessage: %v", err)
		}
		return false
	}
	if err := ValidateMetadata(req.Metadata); err != nil {
		t.Fatalf("accepted metadata %v: %v", req.Metadata, err)
	}
	if req.State != nil && req.Type != SetGroupState {
		t.Fatalf("a %v request has a state", req.Type)
	}
	switch req.Type {
	case JoinGroup, LeaveGroup, SendToGroup, SetGroupState, SubscribeGroupState, UnsubscribeGroupState:
		if !ValidGroupName(req.Group) {
			t.Fatalf("accepted group %q", req.Group)
		}
	case Event:
		if !ValidEventName(req.Event) {
			t.Fatalf("accepted event %q", req.Event)
		}
	case Invoke:
		if !ValidEventName(req.Event) || req.InvocationID == "" || req.Data == nil {
			t.Fatalf("accepted invoke %+v", req)
		}
	case CancelInvocation:
		if req.InvocationID == "" {
			t.Fatalf("accepted cancelInvocation without an invocationId")
		}
	case StreamStart, StreamData, StreamEnd:
		if req.StreamID == "" {
			t.Fatalf("accepted a stream frame without a streamId %+v", req)
		}
		if req.Stream.Problem != "" {
			break
		}
		if req.Type == StreamStart && !ValidGroupName(req.Group) {
			t.Fatalf("accepted stream start to group %q", req.Group)
		}
		if req.Type == StreamData && req.Stream.KeepAlive == (req.Stream.SequenceID != 0) {
			t.Fatalf("streamData is a keepalive exactly when it has no sequence id: %+v", req)
		}
		if req.Type == StreamData && req.DataType == JSON && !req.Stream.KeepAlive && !json.Valid(req.Data) {
			t.Fatalf("accepted invalid JSON data %q", req.Data)
		}
		if req.Stream.Error != nil && req.Stream.Error.Name != StreamUserError {
			t.Fatalf("a client's stream error is a UserError: %+v", req.Stream.Error)
		}
		out := AppendGroupStreamMessage(nil, "g", "u", &StreamInfo{ID: req.StreamID, Sequence: req.Stream.SequenceID, End: req.Type == StreamEnd, Error: req.Stream.Error}, req.DataType, req.Data)
		var m struct {
			Stream struct {
				StreamID string `json:"streamId"`
				Error    *struct {
					Message string `json:"message"`
				} `json:"error"`
			} `json:"stream"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("encoded fragment is not JSON: %v\n%s", err, out)
		}
		if utf8.ValidString(req.StreamID) && m.Stream.StreamID != req.StreamID {
			t.Fatalf("streamId %q came back as %q", req.StreamID, m.Stream.StreamID)
		}
	case Unsupported:
		if req.Unsupported == "" {
			t.Fatalf("accepted an unsupported request without a type %+v", req)
		}
	}
	return true
}

// FuzzPlainPrefix: the word-at-a-time scan agrees with a byte-at-a-time one.
func FuzzPlainPrefix(f *testing.F) {
	for _, s := range []string{"", "abcdefgh", "abcdefg\"", "abc\\defghijk", "\x1fabcdefgh", "abcdefgh\x7f\x80", "0123456789abcdef\x00", "é", " !#$%&'()*+,-./[]^_`{|}~\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := 0
		for want < len(s) && s[want] >= 0x20 && s[want] < 0x80 && s[want] != '"' && s[want] != '\\' {
			want++
		}
		if got := plainPrefix(s); got != want {
			t.Fatalf("plainPrefix(%q) = %d, want %d", s, got, want)
		}
		if got := plainPrefix([]byte(s)); got != want {
			t.Fatalf("plainPrefix([]byte(%q)) = %d, want %d", s, got, want)
		}
	})
}

func BenchmarkPlainPrefix(b *testing.B) {
	s := strings.Repeat("abcdefgh", 2048)
	bs := []byte(s)
	b.Run("bytes", func(b *testing.B) {
		b.SetBytes(int64(len(bs)))
		for b.Loop() {
			plainPrefix(bs)
		}
	})
	b.Run("string", func(b *testing.B) {
		b.SetBytes(int64(len(s)))
		for b.Loop() {
			plainPrefix(s)
		}
	})
}
