package pubsub_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// What a stream fragment costs in fan-out against a group message of the
// same size, end to end over real sockets: a JSON publisher's frames
// (sendToGroup with an ackId, or streamData, each answered, by an ack or a
// streamAck) fanned out to 100 JSON receivers, which read every frame. One
// op is one message delivered to every receiver.
//
//	go test -run XXX -bench GroupStreamFanout -benchmem .
func BenchmarkGroupStreamFanout(b *testing.B) {
	const receivers = 100
	for _, size := range []int{64, 1024, 16 << 10} {
		payload := strings.Repeat("x", size)
		b.Run("message/"+strconv.Itoa(size), func(b *testing.B) {
			benchFanout(b, receivers, "", func(i int) string {
				return `{"type":"sendToGroup","group":"room","ackId":` + strconv.Itoa(i) + `,"dataType":"text","data":"` + payload + `"}`
			})
		})
		b.Run("stream/"+strconv.Itoa(size), func(b *testing.B) {
			benchFanout(b, receivers, `{"type":"sendToGroup","group":"room","stream":{"streamId":"s"}}`, func(i int) string {
				return `{"type":"streamData","streamId":"s","streamSequenceId":` + strconv.Itoa(i) + `,"dataType":"text","data":"` + payload + `"}`
			})
		})
	}
}

func benchFanout(b *testing.B, receivers int, start string, frame func(i int) string) {
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	svc, err := pubsub.New(pubsub.Config{AccessKey: "primary-access-key-0123456789abcdef", Endpoint: srv.URL})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Shutdown(context.Background())
	mux.Handle("/client/", svc.ClientHandler())
	url := func(opts pubsub.TokenOptions) string {
		u, err := svc.ClientURL("chat", opts)
		if err != nil {
			b.Fatal(err)
		}
		return u
	}

	// Each receiver counts what it read; the publisher keeps at most
	// window messages ahead of the slowest, so that no queue overflows.
	const window = 64
	var received atomic.Int64
	progress := make(chan struct{}, 1)
	var wg sync.WaitGroup
	n := b.N
	for range receivers {
		r := wstest.RawDial(b, url(pubsub.TokenOptions{Groups: []string{"room"}}), "json.webpubsub.azure.v1")
		if _, _, err := r.ReadFrame(); err != nil { // connected
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if _, _, err := r.ReadFrame(); err != nil {
					b.Error(err)
					return
				}
				received.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	pub := wstest.RawDial(b, url(pubsub.TokenOptions{Roles: []string{"webpubsub.sendToGroup"}}), "json.webpubsub.azure.v1")
	if _, _, err := pub.ReadFrame(); err != nil {
		b.Fatal(err)
	}
	if start != "" {
		if err := pub.WriteFrame(true, 1, []byte(start)); err != nil {
			b.Fatal(err)
		}
		if _, _, err := pub.ReadFrame(); err != nil { // streamAck
			b.Fatal(err)
		}
	}
	go func() { // the publisher's acks
		for range n {
			if _, _, err := pub.ReadFrame(); err != nil {
				return
			}
		}
	}()
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = wstest.ClientFrame(true, 1, []byte(frame(i+1)))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i, f := range frames {
		for int64(i-window)*int64(receivers) > received.Load() {
			<-progress
		}
		if err := pub.Write(f); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.StopTimer()
}
