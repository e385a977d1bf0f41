package pubsub

import (
	"context"
	"io"
	"net"
	"slices"
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
	svc, err := New(Config{AccessKey: "bench-access-key-0123456789abcdef"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { svc.Shutdown(context.Background()) })
	for _, size := range []int{64, 1024, 16 << 10} {
		payload := strings.Repeat("x", size)
		cmd := &command{Op: opSendToGroup, Target: "room", FromUserID: "user1", DataType: DataTypeText, Data: []byte(payload)}
		b.Run("json/shared/"+strconv.Itoa(size), func(b *testing.B) {
			d := &delivery{svc: svc, cmd: cmd}
			b.ReportAllocs()
			for b.Loop() {
				_ = d.json()
			}
		})
		b.Run("json/reliable-patch/"+strconv.Itoa(size), func(b *testing.B) {
			d := &delivery{svc: svc, cmd: cmd}
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
				buf = protocol.AppendGroupMessage(buf, "room", "user1", DataTypeText, cmd.Data)[1:]
				_ = wsframe.Finish(buf, wsframe.OpText)
			}
		})
		b.Run("protobuf/reliable-patch/"+strconv.Itoa(size), func(b *testing.B) {
			d := &delivery{svc: svc, cmd: cmd}
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
				data := protocol.AppendProtobufDataMessage(nil, "group", "room", DataTypeText, cmd.Data)
				data = protocol.AppendProtobufSequenceID(data, seq)
				buf := protocol.AppendProtobufDataEnvelope(wsframe.Begin(len(data)+8), len(data))
				_ = wsframe.Finish(append(buf, data...), wsframe.OpBinary)
			}
		})
	}
}

// What coalescing buys: the frames queued for one connection written with
// one writev (what the outbox does) against one write per frame (what a
// server without an outbox does), over a real loopback socket.
//
//	go test -run XXX -bench Coalesced -benchmem .
func BenchmarkCoalescedWrites(b *testing.B) {
	for _, size := range []int{64, 1024} {
		frame := wsframe.Frame(wsframe.OpText, []byte(strings.Repeat("x", size)))
		for _, n := range []int{1, 8, 32} {
			frames := make([][]byte, n)
			for i := range frames {
				frames[i] = frame
			}
			b.Run("writev/"+strconv.Itoa(size)+"B/"+strconv.Itoa(n), func(b *testing.B) {
				w := loopback(b)
				b.SetBytes(int64(n * len(frame)))
				for b.Loop() {
					bufs := net.Buffers(slices.Clone(frames))
					if _, err := bufs.WriteTo(w); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("write-each/"+strconv.Itoa(size)+"B/"+strconv.Itoa(n), func(b *testing.B) {
				w := loopback(b)
				b.SetBytes(int64(n * len(frame)))
				for b.Loop() {
					for _, f := range frames {
						if _, err := w.Write(f); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// loopback returns the writing end of a TCP connection whose other end is
// drained until the benchmark ends.
func loopback(b *testing.B) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	r := <-accepted
	ln.Close()
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, r); close(done) }()
	b.Cleanup(func() { w.Close(); <-done; r.Close() })
	return w
}
