package pubsub

import (
	"strconv"
	"strings"
	"testing"

	"github.com/embedwps/pubsub/internal/wsframe"
	"github.com/embedwps/pubsub/protocol"
)

// What a reliable receiver costs in fan-out: each gets its own sequence id,
// and the frame is made of a few bytes of its own and the body every
// receiver shares. Compared with sharing one frame (the non-reliable
// subprotocols) and with encoding the whole frame per receiver.
//
//	go test -run XXX -bench Fanout -benchmem .
func BenchmarkFanoutPerReceiver(b *testing.B) {
	for _, size := range []int{64, 1024, 16 << 10} {
		payload := strings.Repeat("x", size)
		cmd := &Command{Op: OpSendToGroup, Target: "room", FromUserID: "user1", Message: TextMessage(payload)}
		b.Run("json/shared/"+strconv.Itoa(size), func(b *testing.B) {
			d := &delivery{cmd: cmd}
			b.ReportAllocs()
			for b.Loop() {
				_ = d.json()
			}
		})
		b.Run("json/reliable-patch/"+strconv.Itoa(size), func(b *testing.B) {
			d := &delivery{cmd: cmd}
			d.json()
			b.ReportAllocs()
			seq := uint64(0)
			for b.Loop() {
				seq++
				_ = reliableJSONFrame(d.jsonBody, seq)
			}
		})
		b.Run("json/reliable-reencode/"+strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			seq := uint64(0)
			for b.Loop() {
				seq++
				buf := wsframe.Begin(size + 128)
				buf = append(buf, `{"sequenceId":`...)
				buf = strconv.AppendUint(buf, seq, 10)
				buf = append(buf, ',')
				buf = protocol.AppendGroupMessage(buf, "room", "user1", DataTypeText, cmd.Message.Data)[1:]
				_ = wsframe.Finish(buf, wsframe.OpText)
			}
		})
		b.Run("protobuf/reliable-patch/"+strconv.Itoa(size), func(b *testing.B) {
			d := &delivery{cmd: cmd}
			d.protobufData()
			b.ReportAllocs()
			seq := uint64(0)
			for b.Loop() {
				seq++
				_ = reliableProtobufFrame(d.pbData, seq)
			}
		})
		b.Run("protobuf/reliable-reencode/"+strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			seq := uint64(0)
			for b.Loop() {
				seq++
				data := protocol.AppendProtobufDataMessage(nil, "group", "room", DataTypeText, cmd.Message.Data)
				data = protocol.AppendProtobufSequenceID(data, seq)
				buf := protocol.AppendProtobufDataEnvelope(wsframe.Begin(len(data)+8), len(data))
				_ = wsframe.Finish(append(buf, data...), wsframe.OpBinary)
			}
		})
	}
}
