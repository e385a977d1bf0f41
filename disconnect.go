package pubsub

// Disconnect is why the service closes a client: the WebSocket close code and
// the reason, which PubSub clients also receive in the "disconnected" system
// message and the event handler receives in the disconnected event.
type Disconnect struct {
	Code   uint16
	Reason string
}

// WebSocket close codes the service uses (client spec §11).
const (
	CloseNormal          uint16 = 1000
	CloseGoingAway       uint16 = 1001
	CloseUnsupportedData uint16 = 1003 // a binary frame on a JSON subprotocol
	CloseInvalidPayload  uint16 = 1007 // a malformed subprotocol message
	ClosePolicyViolation uint16 = 1008 // slow client, unrecoverable session, a revoked raw publisher
	CloseMessageTooBig   uint16 = 1009
	CloseInternalError   uint16 = 1011 // a simple client's message event failed; a recovered panic
	CloseTryAgainLater   uint16 = 1013 // the service's inbound budget is exhausted
)

// The disconnects the service initiates. Reasons use the words of Azure Web
// PubSub's documented close reasons where one exists.
var (
	// DisconnectClosedByAppServer is the default for closes through the Go API
	// or REST.
	DisconnectClosedByAppServer = Disconnect{CloseNormal, "Closed by app server."}
	// DisconnectServiceShutdown is sent to every client by Shutdown.
	DisconnectServiceShutdown = Disconnect{CloseGoingAway, "ServiceReload: the service is shutting down."}
	// DisconnectSlowClient closes a client whose outbound buffer overflowed.
	DisconnectSlowClient = Disconnect{ClosePolicyViolation, "SlowClient: the client does not read its messages fast enough."}
	// DisconnectPingTimeout closes a client that was silent for the idle timeout.
	DisconnectPingTimeout = Disconnect{CloseGoingAway, "PingTimeout: the client did not answer keep-alive pings."}
	// DisconnectBinaryOnJSON closes a JSON subprotocol client that sent a binary frame.
	DisconnectBinaryOnJSON = Disconnect{CloseUnsupportedData, "The JSON subprotocol requires text messages."}
	// DisconnectTextOnProtobuf closes a protobuf subprotocol client that sent
	// a text frame.
	DisconnectTextOnProtobuf = Disconnect{CloseUnsupportedData, "The protobuf subprotocol requires binary messages."}
	// DisconnectNotRecovered closes a transport that asked to recover a
	// connection that is gone, or with a token that is not its own.
	DisconnectNotRecovered = Disconnect{ClosePolicyViolation, "The connection could not be recovered."}
	// DisconnectEventFailed closes a simple client whose message event failed
	// or had no handler.
	DisconnectEventFailed = Disconnect{CloseInternalError, "The message event could not be handled."}
	// DisconnectInternalError closes a client whose read or write path
	// panicked in the service.
	DisconnectInternalError = Disconnect{CloseInternalError, "InternalServerError: the service failed on this connection."}
	// DisconnectMessageTimeout closes a client that did not finish a message
	// within Config.MessageTimeout.
	DisconnectMessageTimeout = Disconnect{ClosePolicyViolation, "MessageTimeout: the client did not finish its message in time."}
	// DisconnectInboundBudget closes a client whose message would pass the
	// service's Config.MaxInboundBytes.
	DisconnectInboundBudget = Disconnect{CloseTryAgainLater, "TryAgainLater: the service's inbound buffer budget is exhausted."}
	// DisconnectBufferBudget closes the clients holding the most when the
	// service's Config.MaxBufferedBytes is exhausted.
	DisconnectBufferBudget = Disconnect{ClosePolicyViolation, "SlowClient: the service's buffer budget is exhausted and this client holds the most."}
	// DisconnectRateLimited closes a client over Config.MaxMessagesPerSecond
	// that has no ack to be refused with.
	DisconnectRateLimited = Disconnect{ClosePolicyViolation, "RateLimited: the client sends messages faster than the service's rate limit."}
	// DisconnectRawSendForbidden closes a webpubsub_mode=sendToGroup client
	// that sent a frame after its send permission was revoked: it has no ack
	// to be refused with.
	DisconnectRawSendForbidden = Disconnect{ClosePolicyViolation, "Forbidden: the client does not have permission to send to its group."}
)
