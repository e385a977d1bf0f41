// Drives the official @azure/web-pubsub-client in its default mode (the
// reliable JSON subprotocol) through a TCP proxy that the Go test
// (interop_test.go) cuts mid-stream. The client must recover by itself, keep
// its connection id, and lose no message.
//
// Usage: node client-reliable.mjs <url> <count>
// Prints JSON lines: connected, joined, half (after count/2 messages),
// done (with every message received, in order).
import { WebPubSubClient } from "@azure/web-pubsub-client";

const [url, countArg] = process.argv.slice(2);
const count = Number(countArg);
const log = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));
const timeout = setTimeout(() => {
  console.error("timed out");
  process.exit(1);
}, 60000);

const client = new WebPubSubClient({ getClientAccessUrl: async () => url }); // default protocol: json.reliable
const connections = [];
const received = [];
const disconnects = [];
client.on("connected", (e) => {
  connections.push(e.connectionId);
  log("connected", { connectionId: e.connectionId });
});
client.on("disconnected", (e) => disconnects.push(e.message ?? null));
client.on("group-message", (e) => {
  received.push(e.message.data);
  if (received.length === count / 2) {
    log("half");
  }
  if (received.length === count) {
    log("done", { received, connections, disconnects });
    clearTimeout(timeout);
    client.stop();
    process.exit(0);
  }
});
await client.start();
await client.joinGroup("g");
log("joined");
