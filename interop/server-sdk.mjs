// Drives cmd/webpubsub's REST API with the official @azure/web-pubsub server
// SDK, calling every method it has. The Go conformance test
// (cmd/webpubsub/conformance_test.go) holds real WebSocket clients and checks,
// after each step, that each message arrived exactly where it should and
// nowhere else.
//
// Usage: node server-sdk.mjs <connection string> <json of the clients' ids>
// Protocol: before each step, one JSON line {"step": name, ...} on stdout;
// the Go test answers "next" on stdin once it has checked the step.
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import http from "node:http";
import readline from "node:readline";

const [connectionString, idsJson] = process.argv.slice(2);
const ids = JSON.parse(idsJson); // {alice, bob, carol, anon}
const service = new WebPubSubServiceClient(connectionString, "chat", {
  allowInsecureConnection: true,
  retryOptions: { maxRetries: 0 },
});

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function step(name, data = {}) {
  console.log(JSON.stringify({ step: name, ...data }));
  const { value, done } = await lines.next();
  if (done || value !== "next") {
    throw new Error(`the Go test stopped at ${name}: ${value}`);
  }
}

// expectError runs f and returns the HTTP status of the RestError it throws.
async function expectError(f) {
  try {
    await f();
  } catch (err) {
    return err.statusCode ?? -1;
  }
  throw new Error("the call succeeded");
}

const room = service.group("room");
const text = { contentType: "text/plain" };

await service.sendToAll("hello", text);
await step("sendToAll text");
await service.sendToAll({ x: 1, s: "y" });
await step("sendToAll json");
await service.sendToAll(new Uint8Array([1, 2, 255]).buffer);
await step("sendToAll binary");
await service.sendToAll("for alice", { ...text, filter: "userId eq 'alice'" });
await step("sendToAll filter");
await service.sendToAll("with ttl", { ...text, messageTtlSeconds: 60 });
await step("sendToAll ttl");
await service.sendToUser("bob", "to bob", text);
await step("sendToUser");
await service.sendToUser("bob", { to: "bob" }, { filter: `connectionId eq '${ids.bob}'` });
await step("sendToUser filter");
await service.sendToConnection(ids.alice, "to alice", text);
await step("sendToConnection");
await room.sendToAll("to room", text);
await step("group sendToAll");
await room.sendToAll("to room but carol", { ...text, filter: "userId ne 'carol'" });
await step("group sendToAll filter");

await room.addConnection(ids.bob);
await room.sendToAll("bob joined", text);
await step("group addConnection");
await room.removeConnection(ids.bob);
await room.sendToAll("bob left", text);
await step("group removeConnection");
await service.group("g2").addUser("alice");
await service.group("g2").sendToAll("to g2", text);
await step("group addUser");
await service.group("g2").removeUser("alice");
const g2Exists = await service.groupExists("g2");
await step("group removeUser", { g2Exists });
await service.addConnectionsToGroups(["g3", "g4"], "userId eq 'bob' or userId eq null");
await service.group("g3").sendToAll("to g3", text);
await step("addConnectionsToGroups");
await service.removeConnectionsFromGroups(["g3"], "userId eq null");
await service.group("g3").sendToAll("to g3 again", text);
await step("removeConnectionsFromGroups");
await service.removeConnectionFromAllGroups(ids.alice);
await room.sendToAll("room without alice", text);
await step("removeConnectionFromAllGroups");
await service.removeUserFromAllGroups("bob");
await service.group("g4").sendToAll("to g4", text);
await step("removeUserFromAllGroups");

const members = [];
await room.addConnection(ids.alice);
for await (const m of await room.listConnections()) {
  members.push(m);
}
const paged = [];
for await (const page of (await room.listConnections({ maxPageSize: 1 })).byPage()) {
  paged.push(page.map((m) => m.connectionId));
}
await step("group listConnections", { members, paged });

const exists = {
  alice: await service.connectionExists(ids.alice),
  missing: await service.connectionExists("missing"),
  userBob: await service.userExists("bob"),
  userNobody: await service.userExists("nobody"),
  room: await service.groupExists("room"),
  empty: await service.groupExists("empty"),
};
await step("exists", exists);

await service.grantPermission(ids.bob, "sendToGroup", { targetName: "room" });
const granted = await service.hasPermission(ids.bob, "sendToGroup", { targetName: "room" });
await step("grantPermission", { granted });
await service.revokePermission(ids.bob, "sendToGroup", { targetName: "room" });
const revoked = !(await service.hasPermission(ids.bob, "sendToGroup", { targetName: "room" }));
await step("revokePermission", { revoked });

const token = await service.getClientAccessToken({ userId: "dave", roles: ["webpubsub.joinLeaveGroup"], groups: ["daves"] });
await step("getClientAccessToken", { url: token.url });

const errors = {
  badFilter: await expectError(() => service.sendToAll("x", { ...text, filter: "userId eq" })),
  badTtl: await expectError(() => service.sendToAll("x", { ...text, messageTtlSeconds: 301 })),
  addMissingConnection: await expectError(() => room.addConnection("missing")),
  grantMissing: await expectError(() => service.grantPermission("missing", "joinLeaveGroup")),
};
await step("errors", errors);

// Names "." and "..": what the SDK puts on the wire, recorded by a local
// server (nothing reaches cmd/webpubsub). @azure/core-client builds each URL
// with WHATWG URL, which removes dot segments, so these calls leave the SDK
// as the hub-wide operations; no server can tell them apart.
const wire = [];
const recorder = http.createServer((req, res) => {
  wire.push(`${req.method} ${req.url.split("?")[0]}`);
  res.statusCode = req.method === "HEAD" ? 404 : req.url.includes(":send") ? 202 : 204;
  res.end();
});
await new Promise((resolve) => recorder.listen(0, "127.0.0.1", resolve));
const dots = new WebPubSubServiceClient(
  connectionString.replace(/Endpoint=[^;]*/i, `Endpoint=http://127.0.0.1:${recorder.address().port}`),
  "chat",
  { allowInsecureConnection: true, retryOptions: { maxRetries: 0 } },
);
await dots.group("..").sendToAll("x", text);
await dots.sendToUser("..", "x", text);
await dots.sendToUser(".", "x", text);
await dots.closeUserConnections("..");
await dots.userExists("..");
recorder.close();
await step("dot names", { wire });

await service.closeConnection(ids.anon, { reason: "anon closed" });
await step("closeConnection");
await service.closeUserConnections("bob", { reason: "bob closed" });
await step("closeUserConnections");
await room.closeAllConnections({ reason: "room closed" });
await step("group closeAllConnections");
await service.closeAllConnections({ reason: "all closed" });
await step("closeAllConnections");
console.log(JSON.stringify({ step: "done" }));
process.exit(0);
