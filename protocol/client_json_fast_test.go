package protocol

import (
	"reflect"
	"strings"
	"testing"
)

// The data messages the service writes take the fast way, and decode as
// encoding/json decodes them.
func TestDecodeDataMessageFast(t *testing.T) {
	payload := `"T1:1700000000:` + strings.Repeat("x", 1000) + `" \\ / é ✓ ` + "\n\t"
	frames := [][]byte{
		AppendGroupMessage(nil, "room", "alice", Text, []byte(payload)),
		AppendGroupMessage(nil, "room", "", Text, []byte("")),
		AppendGroupMessage(nil, "room", "bob", Binary, []byte{0, 1, 2, 255}),
		AppendServerMessage(nil, Text, []byte(payload)),
		AppendServerMessage(nil, Binary, []byte("bin")),
		append([]byte(`{"sequenceId":42,`), AppendGroupMessage(nil, "g", "u", Text, []byte("hi"))[1:]...),
	}
	for _, f := range frames {
		fast, ok := decodeDataMessageFast(f)
		if !ok {
			t.Fatalf("%s: not decoded the fast way", f)
		}
		slow, err := decodeJSONServerMessage(f)
		if err != nil || !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%s:\nfast %+v\nslow %+v %v", f, fast, slow, err)
		}
	}
	// What it leaves to encoding/json.
	for _, f := range []string{
		`{"type":"message","from":"group","group":"g","dataType":"json","data":{"a":1}}`,
		`{"type":"message","from":"group","group":"g","dataType":"text","data":"\ud83d\ude00"}`,
		`{"type":"message","from":"group","group":"g","dataType":"text","data":"a","data":"b"}`,
		`{"type":"message", "from":"group","group":"g","dataType":"text","data":"a"}`,
		`{"Type":"message","from":"group","group":"g","dataType":"text","data":"a"}`,
		`{"type":"message","from":"group","group":"g","dataType":"text","data":"a","metadata":{"k":"v"}}`,
		"{\"type\":\"message\",\"from\":\"group\",\"group\":\"g\",\"dataType\":\"text\",\"data\":\"\xff\"}",
		`{"type":"ack","ackId":1,"success":true}`,
	} {
		if _, ok := decodeDataMessageFast([]byte(f)); ok {
			t.Errorf("%s: decoded the fast way", f)
		}
	}
}

// Whenever the fast way answers, encoding/json's answer is the same.
func FuzzDecodeDataMessageFast(f *testing.F) {
	f.Add(AppendGroupMessage(nil, "room", "alice", Text, []byte(`"quoted" \ é`)))
	f.Add(AppendGroupMessage(nil, "room", "", Binary, []byte{1, 2, 3}))
	f.Add(AppendServerMessage(nil, Text, []byte("x")))
	f.Add([]byte(`{"sequenceId":7,"type":"message","from":"group","group":"g","fromUserId":null,"dataType":"text","data":"\u00e9\n"}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		fast, ok := decodeDataMessageFast(frame)
		if !ok {
			return
		}
		slow, err := decodeJSONServerMessage(frame)
		if err != nil {
			t.Fatalf("%q: fast %+v, encoding/json refuses it: %v", frame, fast, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q:\nfast %+v\nslow %+v", frame, fast, slow)
		}
	})
}

func BenchmarkDecodeJSONServerMessage(b *testing.B) {
	frame := AppendGroupMessage(nil, "g1", "", Text, []byte(`"T1:1700000000:`+strings.Repeat("x", 1000)+`"`))
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := DecodeJSONServerMessage(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := decodeJSONServerMessage(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
}
