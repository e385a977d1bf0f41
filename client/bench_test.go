package client_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/client"
)

// BenchmarkReceive is the cost of a group message to one client, server
// included (the same process): compare client changes with it, and read
// the client's share in a CPU profile.
func BenchmarkReceive(b *testing.B) {
	for _, size := range []int{64, 1024} {
		for _, p := range []client.Protocol{client.JSON(), client.JSONReliable()} {
			b.Run(fmt.Sprintf("%s/%dB", p.Name(), size), func(b *testing.B) { benchReceive(b, p, size) })
		}
	}
}

func benchReceive(b *testing.B, p client.Protocol, size int) {
	e := newEnv(b, pubsub.Config{})
	got := make(chan struct{}, 1024)
	c, err := client.New(e.url(pubsub.TokenOptions{Roles: []string{"webpubsub.joinLeaveGroup"}}), client.Options{Protocol: p, OnGroupMessage: func(client.Message) { got <- struct{}{} }})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	if err := c.JoinGroup(ctx, "g"); err != nil {
		b.Fatal(err)
	}
	msg := pubsub.TextMessage(strings.Repeat("a", size))
	b.SetBytes(int64(size))
	b.ResetTimer()
	// At most 64 in flight: the service sheds a client that falls behind.
	window := make(chan struct{}, 64)
	go func() {
		for range b.N {
			window <- struct{}{}
			_ = e.hub.SendToGroup(ctx, "g", msg)
		}
	}()
	for range b.N {
		<-got
		<-window
	}
}
