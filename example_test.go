package pubsub_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/rest"
)

// Embed the service in an application's own server, then broadcast from Go.
func Example() {
	svc, err := pubsub.New(pubsub.Config{
		Endpoint:  "http://localhost:8080",
		AccessKey: "my-access-key",
	})
	if err != nil {
		log.Fatal(err)
	}
	// WebSocket clients on /client/hubs/{hub}, the REST API Azure's server
	// SDKs call on /api/, the application's own routes (nil: none) for the
	// rest. Not behind http.ServeMux, which would redirect /users/../:send to
	// the hub's /:send.
	srv := &http.Server{
		Addr:    "localhost:8080",
		Handler: rest.NewServiceHandler(svc, rest.Options{}, nil),
		// Idle and slow connections end; no ReadTimeout or WriteTimeout,
		// which WebSocket connections outlive (REST bounds its bodies).
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	go srv.ListenAndServe()

	url, _ := svc.ClientURL("chat", pubsub.TokenOptions{UserID: "alice", Roles: []string{"webpubsub.joinLeaveGroup"}})
	log.Println("clients connect to", url)

	chat, _ := svc.Hub("chat")
	_ = chat.SendToGroup(context.Background(), "room", pubsub.TextMessage("hello"))
}
