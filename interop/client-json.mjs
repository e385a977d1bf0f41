// Drives the official @azure/web-pubsub-client with its non-reliable
// WebPubSubJsonProtocol() against the library. The Go test
// (interop_test.go) starts the server, passes two client access URLs, checks
// from its own client what this one sends, and sends it messages to receive.
//
// Usage: node client-json.mjs <url-for-alice> <url-for-bob>
// Prints one JSON line per step; exits non-zero on any failure.
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";

const [aliceUrl, bobUrl] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
const timeout = setTimeout(() => fail("timed out"), 20000);

function newClient(url) {
  return new WebPubSubClient(
    { getClientAccessUrl: async () => url },
    { protocol: WebPubSubJsonProtocol(), autoReconnect: false },
  );
}

// waitFor resolves with the first event of that name matching pred.
function waitFor(client, event, pred = () => true) {
  return new Promise((resolve) => {
    const listener = (e) => {
      if (pred(e)) {
        client.off(event, listener);
        resolve(e);
      }
    };
    client.on(event, listener);
  });
}

const alice = newClient(aliceUrl);
const bob = newClient(bobUrl);
const aliceConnected = waitFor(alice, "connected");
const bobConnected = waitFor(bob, "connected");
await alice.start();
await bob.start();
const a = await aliceConnected;
const b = await bobConnected;
log("connected", { alice: { connectionId: a.connectionId, userId: a.userId }, bob: { connectionId: b.connectionId, userId: b.userId } });

await alice.joinGroup("room");
await bob.joinGroup("room");
log("joined", {});

// text, json and binary, each received by the other client.
const received = [];
bob.on("group-message", (e) => {
  const m = e.message;
  const data = m.data instanceof ArrayBuffer ? Array.from(new Uint8Array(m.data)) : m.data;
  received.push({ group: m.group, fromUserId: m.fromUserId, dataType: m.dataType, data });
});
const gotThree = new Promise((resolve) => {
  const check = setInterval(() => {
    if (received.length >= 3) {
      clearInterval(check);
      resolve();
    }
  }, 10);
});
const r1 = await alice.sendToGroup("room", "hello", "text");
await alice.sendToGroup("room", { n: 1, list: ["a"] }, "json", { noEcho: true });
await alice.sendToGroup("room", new Uint8Array([1, 2, 255]).buffer, "binary", { noEcho: true });
await gotThree;
log("bob-received", { ackId: r1.ackId, messages: received.slice(0, 3) });

// A message the Go side sends to the group, and one to alice alone.
const groupFromServer = waitFor(alice, "group-message", (e) => e.message.data === "from go");
const direct = waitFor(alice, "server-message");
log("ready-for-go", {});
const g = await groupFromServer;
const d = await direct;
log("alice-received", {
  group: { group: g.message.group, fromUserId: g.message.fromUserId ?? null, dataType: g.message.dataType, data: g.message.data },
  server: { dataType: d.message.dataType, data: d.message.data },
});

// A send the server forbids is an ack error, surfaced as a rejection.
try {
  await bob.sendToGroup("forbidden-room", "x", "text");
  fail("a forbidden send succeeded");
} catch (err) {
  log("forbidden", { name: err.errorDetail?.name ?? err.name, message: err.message });
}

await alice.leaveGroup("room");
log("left", {});
alice.stop();
bob.stop();
clearTimeout(timeout);
log("done", {});
process.exit(0); // the client leaves timers behind after stop()
