// An application server built with the official @azure/web-pubsub-express
// event handler, unmodified, taking the group presence events of
// cmd/webpubsub -config (groupPresenceEvents): its onGroupJoined and
// onGroupLeft must fire. The Go test (cmd/webpubsub/presence_test.go)
// drives a real WebSocket client and the REST API, and checks each line.
//
// Usage: node upstream-presence.mjs
// Prints JSON lines: listening (with the port), then connected, joined,
// left and disconnected as the handler is called.
import http from "node:http";
import { WebPubSubEventHandler } from "@azure/web-pubsub-express";

const log = (step, req, extra = {}) =>
  console.log(JSON.stringify({
    step,
    connectionId: req.context.connectionId,
    userId: req.context.userId,
    eventName: req.context.eventName,
    ...extra,
  }));

const handler = new WebPubSubEventHandler("chat", {
  path: "/eventhandler",
  onConnected(req) {
    log("connected", req);
  },
  onGroupJoined(req) {
    log("joined", req, { group: req.group });
  },
  onGroupLeft(req) {
    log("left", req, { group: req.group });
  },
  onDisconnected(req) {
    log("disconnected", req);
  },
});

const middleware = handler.getMiddleware();
const server = http.createServer((req, res) => {
  // The middleware reads Express's req.baseUrl and req.path.
  req.baseUrl = "";
  req.path = new URL(req.url, "http://localhost").pathname;
  middleware(req, res, () => {
    res.statusCode = 404;
    res.end();
  });
});
server.listen(0, "127.0.0.1", () => console.log(JSON.stringify({ step: "listening", port: server.address().port })));
process.stdin.on("end", () => process.exit(0)); // stops when the Go test does
process.stdin.resume();
