// Drives the official @azure/web-pubsub-client's invokeEvent, over the
// JSON protocol given, against the library. The Go test (interop_test.go)
// starts the server with an in-process event handler and checks the steps.
//
// Usage: node client-invoke.mjs <url> <json|reliable>
// Prints one JSON line per step; exits non-zero on any failure.
import { WebPubSubClient, WebPubSubJsonProtocol, WebPubSubJsonReliableProtocol } from "@azure/web-pubsub-client";

const [url, kind] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
const timeout = setTimeout(() => fail("timed out"), 20000);

const client = new WebPubSubClient(
  { getClientAccessUrl: async () => url },
  {
    protocol: kind === "reliable" ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol(),
    autoReconnect: false,
  },
);
await client.start();

const json = await client.invokeEvent("add", { a: 1, b: 2 }, "json");
log("json", { dataType: json.dataType, data: json.data });
const text = await client.invokeEvent("echo", "hello", "text");
log("text", { dataType: text.dataType, data: text.data });

try {
  await client.invokeEvent("fail", "x", "text");
  fail("a failing invocation succeeded");
} catch (err) {
  log("failed", { name: err.name, errorDetail: err.errorDetail ?? null });
}

// The connection survived the failure.
await client.sendEvent("after", "still here", "text");
const after = await client.invokeEvent("echo", "again", "text");
log("after", { dataType: after.dataType, data: after.data });

await client.stop();
clearTimeout(timeout);
log("done", {});
process.exit(0); // the client leaves timers behind after stop()
