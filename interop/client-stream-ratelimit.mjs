// The official client writing a stream faster than the service's
// MaxMessagesPerSecond. Prints what the publisher saw (writes resolved,
// errors) and what the receiver read (chunks, end).
//
// Usage: node client-stream-ratelimit.mjs <receiver url> <publisher url>
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";

const [recvURL, pubURL] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
const timeout = setTimeout(() => fail("timed out"), 30000);
const newClient = (url) =>
  new WebPubSubClient({ getClientAccessUrl: async () => url }, { protocol: WebPubSubJsonProtocol(), autoReconnect: false });

const receiver = newClient(recvURL);
const publisher = newClient(pubURL);
await receiver.start();
await publisher.start();
await receiver.joinGroup("room");

let received;
const done = new Promise((resolve) => (received = resolve));
receiver.onGroupStream(async (stream) => {
  const chunks = [];
  let end = { done: true };
  try {
    for await (const m of stream) chunks.push(m.data);
  } catch (err) {
    end = { name: err.name, message: err.message };
  }
  received({ chunks, end });
});

const s = await publisher.openGroupStream("room", { streamId: "fast" });
const errors = [];
s.onError((e) => errors.push(e.name));
let written = 0;
for (let i = 1; i <= 10; i++) {
  try {
    await s.write(`c${i}`, "text");
    written++;
  } catch (err) {
    errors.push("write: " + err.message);
    break;
  }
}
try {
  await s.end();
} catch (err) {
  errors.push("end: " + err.message);
}
const r = await done;
log("publisher", { written, errors });
log("receiver", r);
await publisher.stop();
await receiver.stop();
clearTimeout(timeout);
process.exit(0);
