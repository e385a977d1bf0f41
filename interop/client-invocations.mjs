// Calls the official @azure/web-pubsub-client's invokeEvent once per
// invocation given, in order, on one connection (JSON protocol, no
// reconnection), and prints what each answered. The Go test decides what the
// answers must be (cmd/webpubsub/conformance_test.go, with an
// @azure/web-pubsub-express upstream).
//
// Usage: node client-invocations.mjs <url> '[{"event":"e","data":…,"dataType":"text|json|binary"}, …]'
// (binary data as an array of bytes)
// Prints JSON lines: connected, one invoke line per invocation ({result} or
// {error}), done (with every connection id the client saw).
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";

const [url, invocations] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
const timeout = setTimeout(() => fail("timed out"), 20000);
const bytes = (data) => (data instanceof ArrayBuffer ? Array.from(new Uint8Array(data)) : data);

const client = new WebPubSubClient(
  { getClientAccessUrl: async () => url },
  { protocol: WebPubSubJsonProtocol(), autoReconnect: false },
);
const connections = [];
const connected = new Promise((resolve) =>
  client.on("connected", (e) => {
    connections.push(e.connectionId);
    resolve(e.connectionId);
  }),
);
await client.start();
log("connected", { connectionId: await connected }); // emitted after start() resolves

for (const [i, inv] of JSON.parse(invocations).entries()) {
  const data = inv.dataType === "binary" ? new Uint8Array(inv.data).buffer : inv.data;
  try {
    const r = await client.invokeEvent(inv.event, data, inv.dataType);
    log("invoke", { i, result: { dataType: r.dataType ?? null, data: bytes(r.data) ?? null } });
  } catch (err) {
    log("invoke", { i, error: { name: err.name, errorDetail: err.errorDetail ?? null } });
  }
}

// Without autoReconnect, an invocation after a dropped socket fails: one
// that succeeds after a failure is on the same connection.
log("done", { connections });
await client.stop();
clearTimeout(timeout);
process.exit(0); // the client leaves timers behind after stop()
