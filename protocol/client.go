package protocol

// The client's side of the subprotocols: a client encodes Requests (the
// type the service decodes them into) and decodes what the service sends
// into ServerMessages. The functions that do so are beside their
// subprotocol: AppendJSONRequest and DecodeJSONServerMessage in
// client_json.go, AppendProtobufRequest and DecodeProtobufServerMessage in
// client_protobuf.go. Each pair round-trips with the service's own side
// (DecodeJSONRequest, AppendGroupMessage, ...), which the fuzz tests check.

// ServerMessageType is the kind of a message from the service.
type ServerMessageType uint8

// The messages a service sends a client (client-protocol.md).
const (
	// Connected: UserID (empty: anonymous), ConnectionID, and, on the
	// reliable subprotocols, ReconnectionToken.
	Connected ServerMessageType = iota + 1
	// Disconnected: Message is the service's reason.
	Disconnected
	// Ack: AckID, and the error (ErrorName, ErrorMessage) unless Success.
	Ack
	// GroupMessage: Group, FromUserID (empty: from the server or an
	// anonymous client), DataType, Data, Metadata, SequenceID when
	// reliable, and Stream when it is a group stream's fragment.
	GroupMessage
	// ServerDataMessage: a message from the server (REST, the Go API, an
	// event handler's reply): DataType, Data, SequenceID when reliable.
	ServerDataMessage
	// Pong answers a ping request.
	Pong
	// InvokeResponse: InvocationID, and DataType and Data when Success,
	// else the error.
	InvokeResponse
	// StreamAck: StreamID, ExpectedSequenceID (every fragment below it was
	// taken). JSON only.
	StreamAck
	// StreamNack: StreamID, ExpectedSequenceID, and the error. JSON only.
	StreamNack
	// StreamClosed: StreamID, and the error when it did not end normally.
	// JSON only.
	StreamClosed
	// GroupStateSnapshot and GroupStateUpdate: Group and Items. JSON only.
	GroupStateSnapshot
	GroupStateUpdate
)

// ServerMessage is one decoded message from the service. Which fields are
// set depends on Type (see the constants).
type ServerMessage struct {
	Type ServerMessageType

	UserID            string
	ConnectionID      string
	ReconnectionToken string
	Message           string // Disconnected

	AckID        uint64
	Success      bool
	ErrorName    string
	ErrorMessage string

	Group      string
	FromUserID string
	DataType   DataType
	// Data is the payload: the text, the JSON text of a JSON value, or the
	// raw bytes of a binary or protobuf payload.
	Data     []byte
	Metadata map[string]string
	// SequenceID is a data message's sequence id on the reliable
	// subprotocols (0: none); the client acknowledges it.
	SequenceID uint64
	Stream     *StreamInfo

	InvocationID string

	StreamID           string
	ExpectedSequenceID uint64

	Items []GroupStateItem
}
