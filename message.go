package pubsub

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/embedwps/pubsub/protocol"
)

// DataType is the kind of a message's payload, as Azure Web PubSub names it.
type DataType = protocol.DataType

// The data types of a message.
const (
	DataTypeJSON     = protocol.JSON
	DataTypeText     = protocol.Text
	DataTypeBinary   = protocol.Binary
	DataTypeProtobuf = protocol.Protobuf
)

// Message is the content of a send: its data type and payload. JSON clients
// receive it with the matching dataType, simple clients as a raw text frame
// (text, JSON) or binary frame (binary, protobuf).
type Message struct {
	DataType DataType
	Data     []byte
}

// TextMessage returns a text message.
func TextMessage(s string) Message { return Message{DataType: DataTypeText, Data: []byte(s)} }

// JSONMessage returns a JSON message; data must hold one valid JSON value.
func JSONMessage(data []byte) Message { return Message{DataType: DataTypeJSON, Data: data} }

// BinaryMessage returns a binary message.
func BinaryMessage(data []byte) Message { return Message{DataType: DataTypeBinary, Data: data} }

// validate checks a message before it is encoded for anyone.
func (m Message) validate() error {
	switch m.DataType {
	case DataTypeJSON:
		if !json.Valid(m.Data) {
			return fmt.Errorf("%w: data is not a valid JSON value", ErrInvalidMessage)
		}
	case DataTypeText:
		if !utf8.Valid(m.Data) {
			return fmt.Errorf("%w: text is not valid UTF-8", ErrInvalidMessage)
		}
	case DataTypeBinary, DataTypeProtobuf:
	default:
		return fmt.Errorf("%w: unknown data type %d", ErrInvalidMessage, m.DataType)
	}
	return nil
}
