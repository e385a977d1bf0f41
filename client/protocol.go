package client

import "github.com/embedwps/pubsub/protocol"

// Protocol is a subprotocol the client speaks: its name, whether it is a
// reliable one (sequence ids, sequenceAck, recovery), whether its frames are
// binary, and its codec: JSONReliable (the default), JSON, ProtobufReliable
// and Protobuf. A request the codec cannot carry fails at once with the
// codec's error (protocol.ErrNotInProtobuf for the protobuf ones), before
// anything is sent.
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

// Protobuf is protobuf.webpubsub.azure.v1, in binary frames: a dropped
// transport is a new connection. Its data messages carry no fromUserId
// (Message.FromUserID is ""), and it has no frame for invocations:
// InvokeEvent fails at once with an error wrapping protocol.ErrNotInProtobuf.
func Protobuf() Protocol {
	return codec{protocol.ProtobufSubprotocol, false, true, protocol.AppendProtobufRequest, protocol.DecodeProtobufServerMessage}
}

// ProtobufReliable is protobuf.reliable.webpubsub.azure.v1: Protobuf, with
// the recovery of JSONReliable.
func ProtobufReliable() Protocol {
	return codec{protocol.ProtobufReliableSubprotocol, true, true, protocol.AppendProtobufRequest, protocol.DecodeProtobufServerMessage}
}
