package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/protocol"
)

// exampleService is the service side of the examples: in a real
// application, Azure Web PubSub or this module's server, and a negotiation
// endpoint handing out client URLs.
func exampleService() (negotiate func(context.Context) (string, error), stop func()) {
	srv := httptest.NewUnstartedServer(nil)
	svc, err := pubsub.New(pubsub.Config{Endpoint: "http://" + srv.Listener.Addr().String(), AccessKey: "my-access-key"})
	if err != nil {
		log.Fatal(err)
	}
	srv.Config.Handler = svc.ClientHandler()
	srv.Start()
	negotiate = func(ctx context.Context) (string, error) {
		return svc.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}})
	}
	return negotiate, func() {
		_ = svc.Shutdown(context.Background())
		srv.Close()
	}
}

// Join a group, publish to it, and receive the message back, against the
// library's own service.
func Example() {
	negotiate, stop := exampleService()
	defer stop()

	received := make(chan client.Message, 1)
	c, err := client.New(negotiate, client.Options{
		OnGroupMessage: func(m client.Message) { received <- m },
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Stop()

	if err := c.JoinGroup(ctx, "room"); err != nil {
		log.Fatal(err)
	}
	if err := c.SendToGroup(ctx, "room", protocol.Text, []byte("hello")); err != nil {
		log.Fatal(err)
	}
	m := <-received
	fmt.Printf("%s from %s in %s: %s\n", m.DataType, m.FromUserID, m.Group, m.Data)
	// Output: text from alice in room: hello
}

// Write a group stream and read it back: fragments in order, then io.EOF.
func ExampleClient_OpenGroupStream() {
	negotiate, stop := exampleService()
	defer stop()
	streams := make(chan *client.GroupStream, 1)
	c, err := client.New(negotiate, client.Options{
		OnGroupStream: func(s *client.GroupStream) { streams <- s },
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Stop()
	if err := c.JoinGroup(ctx, "room"); err != nil {
		log.Fatal(err)
	}

	w, err := c.OpenGroupStream(ctx, "room", client.StreamOptions{StreamID: "answer"})
	if err != nil {
		log.Fatal(err)
	}
	for _, token := range []string{"The ", "answer ", "is 42."} {
		if err := w.Write(ctx, protocol.Text, []byte(token)); err != nil {
			log.Fatal(err)
		}
	}
	if err := w.End(ctx); err != nil { // every fragment acknowledged
		log.Fatal(err)
	}

	r := <-streams
	for {
		m, err := r.Next(ctx)
		if err == io.EOF {
			break
		} else if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s #%d: %q\n", r.StreamID, m.Stream.Sequence, m.Data)
	}
	// Output:
	// answer #1: "The "
	// answer #2: "answer "
	// answer #3: "is 42."
}
