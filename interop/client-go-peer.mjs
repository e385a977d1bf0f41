// The official @azure/web-pubsub-client in a group with this module's Go
// client (client/interop_test.go): each receives what the other sends, of
// every data type, and noEcho keeps a message from its sender alone.
//
// The Go test reads these steps as they come and answers them:
//   connected        the JS client's connection
//   ready            it joined "room": the Go client sends its messages,
//                    ending with the text "go-done"
//   received-from-go every group message up to "go-done", as the JS client
//                    got it (with the metadata the service passes on, which
//                    the SDK does not type); then it sends text (noEcho),
//                    json, binary (noEcho) and the text "js-done"
//   sent             the acks of those sends
//   echoes           what came back to it, up to its own "js-done": its
//                    json and "js-done" only (the others were noEcho)
//   done             the count of server messages, and of group messages
//                    after "js-done" until it stopped (none of either)
//
// Usage: node client-go-peer.mjs <client access url> <json|reliable>
// Prints one JSON line per step; exits non-zero on any failure.
import { WebPubSubClient, WebPubSubJsonProtocol, WebPubSubJsonReliableProtocol } from "@azure/web-pubsub-client";

const [url, kind] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
process.on("unhandledRejection", (err) => fail(`unhandled rejection: ${err?.stack ?? err}`));
const timeout = setTimeout(() => fail("timed out"), 20000);
if (kind !== "json" && kind !== "reliable") {
  fail(`unknown protocol kind ${kind}`);
}

const client = new WebPubSubClient(
  { getClientAccessUrl: async () => url },
  {
    protocol: kind === "reliable" ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol(),
    autoReconnect: false,
  },
);

// Every group message, as the application sees it: the data's JavaScript
// type says how the SDK decoded it (a string, a parsed JSON value, an
// ArrayBuffer, printed as its bytes).
const received = [];
let serverMessages = 0;
let arrived = () => {};
client.on("group-message", (e) => {
  const m = e.message;
  const isBuffer = m.data instanceof ArrayBuffer;
  received.push({
    group: m.group,
    fromUserId: m.fromUserId ?? null,
    dataType: m.dataType,
    data: isBuffer ? Array.from(new Uint8Array(m.data)) : m.data,
    jsType: isBuffer ? "ArrayBuffer" : Array.isArray(m.data) ? "array" : m.data === null ? "null" : typeof m.data,
    metadata: m.metadata ?? null, // not in the SDK's types, but passed on
    sequenceId: m.sequenceId ?? null,
  });
  arrived();
});
client.on("server-message", () => serverMessages++);

// until resolves with the messages received so far once one matches pred.
function until(pred) {
  return new Promise((resolve) => {
    const check = () => {
      if (received.some(pred)) {
        arrived = () => {};
        resolve(received.splice(0));
      }
    };
    arrived = check;
    check();
  });
}
const isText = (data) => (m) => m.dataType === "text" && m.data === data;

const connected = new Promise((resolve) => client.on("connected", resolve));
await client.start();
const c = await connected;
log("connected", { connectionId: c.connectionId, userId: c.userId ?? null });

const goDone = until(isText("go-done"));
await client.joinGroup("room");
log("ready", {});
log("received-from-go", { messages: await goDone });

const jsDone = until(isText("js-done"));
const acks = [];
const send = async (data, dataType, options) => {
  const r = await client.sendToGroup("room", data, dataType, options);
  acks.push({ ackId: r.ackId ?? null, isDuplicated: r.isDuplicated });
};
await send("héllo from js 😀 \"q\" \\ \n\t", "text", { noEcho: true });
await send({ from: "js", list: [1, "two", null, true, -0.5], nested: { é: "ü <&>" } }, "json");
await send(new Uint8Array([0, 1, 2, 127, 128, 253, 254, 255]).buffer, "binary", { noEcho: true });
await send("js-done", "text");
log("sent", { acks });
log("echoes", { messages: await jsDone });

const stopped = new Promise((resolve) => client.on("stopped", resolve));
client.stop();
await stopped;
clearTimeout(timeout);
log("done", { serverMessages, later: received.length });
process.exit(0); // the client leaves timers behind after stop()
