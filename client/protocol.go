package client

import "github.com/embedwps/pubsub/protocol"

// Protocol is a subprotocol the client speaks: its name, whether it is a
// reliable one (sequence ids, sequenceAck, recovery), whether its frames are
// binary, and its codec. JSONReliable and JSON are the two this package
// has; the protobuf ones plug in the same way (protocol.AppendProtobufRequest
// and protocol.DecodeProtobufServerMessage).
type Protocol interface {
	Name() string
	Reliable() bool
	Binary() bool
	AppendRequest(dst []byte, req protocol.Request) ([]byte, error)
	DecodeServerMessage(frame []byte) (protocol.ServerMessage, error)
}

type codec struct {
	name     string
	reliable bool
	binary   bool
	append   func([]byte, protocol.Request) ([]byte, error)
	decode   func([]byte) (protocol.ServerMessage, error)
}

func (c codec) Name() string   { return c.name }
func (c codec) Reliable() bool { return c.reliable }
func (c codec) Binary() bool   { return c.binary }
func (c codec) AppendRequest(dst []byte, req protocol.Request) ([]byte, error) {
	return c.append(dst, req)
}
func (c codec) DecodeServerMessage(frame []byte) (protocol.ServerMessage, error) {
	return c.decode(frame)
}

// JSONReliable is json.reliable.webpubsub.azure.v1, the default: messages
// survive a dropped transport within the service's recovery window.
func JSONReliable() Protocol {
	return codec{protocol.JSONReliableSubprotocol, true, false, protocol.AppendJSONRequest, protocol.DecodeJSONServerMessage}
}

// JSON is json.webpubsub.azure.v1: a dropped transport is a new connection,
// and what was sent in between is lost.
func JSON() Protocol {
	return codec{protocol.JSONSubprotocol, false, false, protocol.AppendJSONRequest, protocol.DecodeJSONServerMessage}
}
