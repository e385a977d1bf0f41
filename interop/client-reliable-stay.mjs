// Drives the official @azure/web-pubsub-client in its default mode (the
// reliable JSON subprotocol) as client-reliable.mjs does, but stays
// connected once it has every message, so that the Go test
// (natsbroker/interop_test.go) can see where its connection lives; it stops
// (a close frame: the session ends) when its stdin ends.
//
// Usage: node client-reliable-stay.mjs <url> <count>
// Prints JSON lines: connected, joined, half (after count/2 messages),
// done (with every message received, in order, the connection ids and the
// disconnected events so far), then stopped (with how many it received in
// all).
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
client.on("stopped", () => {
  log("stopped", { received: received.length });
  clearTimeout(timeout);
  process.exit(0);
});
client.on("group-message", (e) => {
  received.push(e.message.data);
  if (received.length === count / 2) {
    log("half");
  }
  if (received.length === count) {
    log("done", { received, connections, disconnects: [...disconnects] });
  }
});
process.stdin.on("data", () => {}); // read to the end
process.stdin.on("end", () => client.stop());
await client.start();
await client.joinGroup("g");
log("joined");
