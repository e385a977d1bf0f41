// Package pb holds the Go code generated from webpubsub.proto, the messages
// of the protobuf.webpubsub.azure.v1 subprotocols. Regenerate with
//
//	go generate ./protocol/pb
//
// which needs protoc (Debian: protobuf-compiler) and protoc-gen-go
// (go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12).
package pb

//go:generate protoc --go_out=. --go_opt=paths=source_relative webpubsub.proto
