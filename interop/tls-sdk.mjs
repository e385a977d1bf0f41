// An Azure Web PubSub application's code, unchanged, against cmd/webpubsub
// over HTTPS (cmd/webpubsub/tls_interop_test.go): the official server SDK
// from the connection string as printed (https://, no
// allowInsecureConnection), and the official client over the wss:// URL the
// server SDK makes. TLS is verified as for Azure; the server's CA is trusted
// through NODE_EXTRA_CA_CERTS only.
//
// Usage: node tls-sdk.mjs <connection string> [certificate-error]
// Prints JSON lines: token (the client URL, without its token), joined,
// received (what the client got), exists, done. With certificate-error it
// expects the first call to fail on the certificate, and prints
// certificate-error with the error's code.
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { WebPubSubClient } from "@azure/web-pubsub-client";

const [connectionString, mode] = process.argv.slice(2);
const log = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));
const timeout = setTimeout(() => {
  console.error("timed out");
  process.exit(1);
}, 30000);

if (mode === "certificate-error") {
  const service = new WebPubSubServiceClient(connectionString, "chat", { retryOptions: { maxRetries: 0 } });
  try {
    await service.sendToAll("not trusted", { contentType: "text/plain" });
    log("sent");
  } catch (err) {
    log("certificate-error", { code: err.code ?? null, message: String(err.message) });
  }
  clearTimeout(timeout);
  process.exit(0);
}

const service = new WebPubSubServiceClient(connectionString, "chat");
const token = await service.getClientAccessToken({
  userId: "alice",
  roles: ["webpubsub.joinLeaveGroup.room", "webpubsub.sendToGroup.room"],
});
log("token", { baseUrl: token.baseUrl, url: token.url.split("?")[0] });

const client = new WebPubSubClient(token.url);
const received = [];
let connectionId;
client.on("connected", (e) => (connectionId = e.connectionId));
client.on("group-message", async (e) => {
  received.push({ from: e.message.fromUserId ?? "server", dataType: e.message.dataType, data: e.message.data });
  if (received.length < 2) {
    return;
  }
  log("received", { received });
  const exists = {
    group: await service.groupExists("room"),
    connection: await service.connectionExists(connectionId),
    user: await service.userExists("alice"),
  };
  log("exists", exists);
  client.stop();
  clearTimeout(timeout);
  log("done");
  process.exit(0); // the SDK's kept-alive connections would hold the process
});
await client.start();
await client.joinGroup("room");
log("joined");
await service.group("room").sendToAll("hello over TLS", { contentType: "text/plain" });
await client.sendToGroup("room", { from: "alice" }, "json");
