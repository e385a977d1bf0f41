package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
	"github.com/embedwps/pubsub/protocol"
)

// Join a group, publish to it, and receive the message back, against the
// library's own service.
func Example() {
	// The service side: in a real application, Azure Web PubSub or this
	// module's server, and a negotiation endpoint handing out URLs.
	srv := httptest.NewUnstartedServer(nil)
	svc, err := pubsub.New(pubsub.Config{Endpoint: "http://" + srv.Listener.Addr().String(), AccessKey: "my-access-key"})
	if err != nil {
		log.Fatal(err)
	}
	srv.Config.Handler = svc.ClientHandler()
	srv.Start()
	defer srv.Close()
	defer svc.Shutdown(context.Background())
	negotiate := func(ctx context.Context) (string, error) {
		return svc.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"}})
	}

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
