// An application server built with the official @azure/web-pubsub-express
// event handler, unmodified, serving as the CloudEvents upstream of
// cmd/webpubsub -config. The Go conformance test
// (cmd/webpubsub/conformance_test.go) drives real WebSocket clients against
// the server and checks each effect of this handler.
//
// Usage: node upstream-express.mjs
// Prints JSON lines: listening (with the port), connected, disconnected.
import http from "node:http";
import { WebPubSubEventHandler } from "@azure/web-pubsub-express";

const log = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));

const handler = new WebPubSubEventHandler("chat", {
  path: "/eventhandler",
  handleConnect(req, res) {
    const user = req.context.userId;
    if (user === "intruder") {
      res.fail(401, "who are you?");
      return;
    }
    if (user === "malformed") {
      res.fail(400, "bad request");
      return;
    }
    res.setState("greeting", "hello " + user);
    res.success({
      userId: "node-" + user,
      groups: ["from-node"],
      roles: ["webpubsub.sendToGroup.from-node"],
    });
  },
  handleUserEvent(req, res) {
    // Events and invocations (the client's invokeEvent) alike.
    const states = req.context.states;
    switch (req.context.eventName) {
      case "message": // simple clients
      case "echo": {
        const count = (states.count ?? 0) + 1;
        res.setState("count", count);
        res.success(`${states.greeting}, echo ${count}: ${req.data}`, "text");
        return;
      }
      case "json":
        res.success(JSON.stringify({ got: req.data, type: req.dataType }), "json");
        return;
      case "binary":
        res.success(Buffer.from([9, 8, 7]), "binary"); // Node's http needs a Buffer
        return;
      case "fail":
        res.fail(500, "the handler failed");
        return;
      default:
        res.success();
    }
  },
  onConnected(req) {
    log("connected", { userId: req.context.userId, connectionId: req.context.connectionId, state: req.context.states.greeting });
  },
  onDisconnected(req) {
    log("disconnected", { connectionId: req.context.connectionId, reason: req.reason ?? null });
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
server.listen(0, "127.0.0.1", () => log("listening", { port: server.address().port }));
process.stdin.on("end", () => process.exit(0)); // stops when the Go test does
process.stdin.resume();
