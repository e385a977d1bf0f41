// Drives the official @azure/web-pubsub-client's group streaming
// (openGroupStream / onGroupStream), over the JSON protocol given, against
// the library: a receiver and a publisher, both the official client. The Go
// test (stream_interop_test.go) checks the steps.
//
// Usage: node client-stream.mjs <receiver url> <publisher url> <json|reliable>
// Prints one JSON line per step; exits non-zero on any failure.
import { WebPubSubClient, WebPubSubJsonProtocol, WebPubSubJsonReliableProtocol } from "@azure/web-pubsub-client";

const [recvURL, pubURL, kind] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
const timeout = setTimeout(() => fail("timed out"), 30000);
const newClient = (url) =>
  new WebPubSubClient(
    { getClientAccessUrl: async () => url },
    {
      protocol: kind === "reliable" ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol(),
      autoReconnect: false,
    },
  );

const receiver = newClient(recvURL);
const publisher = newClient(pubURL);
await receiver.start();
await publisher.start();
await receiver.joinGroup("room");

// The receiver reads every stream to its end, and says how it ended.
const expected = 5;
let seen = 0;
let allDone;
const allStreamsDone = new Promise((resolve) => (allDone = resolve));
receiver.onGroupStream(async (stream) => {
  const chunks = [];
  let end = { done: true };
  try {
    for await (const m of stream) {
      chunks.push(m.dataType === "binary" ? Buffer.from(m.data).toString("hex") : m.data);
    }
  } catch (err) {
    end = { name: err.name, message: err.message, userErrorCode: err.userErrorCode ?? null };
  }
  log("received " + stream.streamId, { group: stream.groupName, chunks, end });
  if (++seen === expected) allDone();
});

// Three streams written in parallel, each of several fragments.
const parallel = await Promise.all(["p1", "p2", "p3"].map((id) => publisher.openGroupStream("room", { streamId: id })));
await Promise.all(
  parallel.map(async (s) => {
    for (let i = 1; i <= 10; i++) {
      await s.write(`${s.streamId}-${i}`, "text");
    }
    await s.end();
  }),
);

// Other data types, then an abort with the application's error.
const typed = await publisher.openGroupStream("room", { streamId: "typed" });
await typed.write({ n: 1 }, "json");
await typed.write(new Uint8Array([1, 2, 3]).buffer, "binary");
await typed.abort({ message: "gave up", userErrorCode: "E42" });

// A stream left idle is closed by the service, for both sides.
const idle = await publisher.openGroupStream("room", { streamId: "idle", idleTimeoutInMs: 300 });
const idleError = new Promise((resolve) => idle.onError(resolve));
await idle.write("only", "text");
const e = await idleError;
log("publisher idle", { name: e.name, message: e.message });

await allStreamsDone;
await publisher.stop();
await receiver.stop();
clearTimeout(timeout);
log("done", {});
process.exit(0); // the client leaves timers behind after stop()
