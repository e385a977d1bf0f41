// The official @azure/web-pubsub-client's group streams against the Go
// client's (client/stream_interop_test.go), both ways, in one group: the
// JS client reads every stream the Go client publishes (onGroupStream), and
// publishes its own (openGroupStream) for the Go client to read.
//
// Usage: node client-go-stream.mjs <url> <json|reliable> <go streams>
//
// Steps, one JSON line each on stdout:
//   {"step":"ready"}                  joined "room", reading streams
//   {"step":"received <id>", ...}     a stream read to its end: its group,
//                                     publisher, fragments and end
//   {"step":"published", ...}         once <go streams> streams were read,
//                                     the JS client's own were written
//   {"step":"done", ...}              once a line came on stdin (the Go
//                                     side read them): the publisher's
//                                     errors, if any; then it exits 0
// It exits non-zero on any failure, or after 45 s.
import { createInterface } from "node:readline";
import { WebPubSubClient, WebPubSubJsonProtocol, WebPubSubJsonReliableProtocol } from "@azure/web-pubsub-client";

const [url, kind, goStreams] = process.argv.slice(2);
const log = (step, data) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error("client-go-stream.mjs:", msg);
  process.exit(1);
};
process.on("unhandledRejection", (err) => fail(`unhandled: ${err?.stack ?? err}`));
const timeout = setTimeout(() => fail("timed out"), 45000);

// The stdin lines, in order: the Go side's signals.
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const nextLine = async () => {
  const { value, done } = await lines.next();
  if (done) fail("stdin closed");
  return value;
};

const client = new WebPubSubClient(
  { getClientAccessUrl: async () => url },
  {
    protocol: kind === "reliable" ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol(),
    autoReconnect: false,
  },
);

// Each stream read to its end: every fragment with its data type, data (JSON
// as JSON.stringify writes it, binary as hex) and stream sequence id, and how
// the stream ended.
const wanted = Number(goStreams);
let read = 0;
let allRead;
const allReadDone = new Promise((resolve) => (allRead = resolve));
client.onGroupStream(async (stream) => {
  const fragments = [];
  const from = new Set();
  let end = { done: true };
  try {
    for await (const m of stream) {
      from.add(m.fromUserId ?? null);
      let data = m.data;
      if (m.dataType === "json") data = JSON.stringify(m.data);
      if (m.dataType === "binary") data = Buffer.from(m.data).toString("hex");
      fragments.push({ type: m.dataType, data, seq: m.stream.streamSequenceId, last: m.stream.endOfStream ?? false });
    }
  } catch (err) {
    end = { name: err.name ?? null, message: err.message ?? null, userErrorCode: err.userErrorCode ?? null };
  }
  log("received " + stream.streamId, { group: stream.groupName, from: [...from], fragments, end });
  if (++read === wanted) allRead();
});

await client.start();
await client.joinGroup("room");
log("ready", {});

// The Go streams first, then ours: the Go side reads those.
await allReadDone;
const errors = [];
const open = async (id) => {
  const s = await client.openGroupStream("room", { streamId: id, noEcho: true });
  s.onError((e) => errors.push({ stream: id, name: e.name, message: e.message }));
  return s;
};

const typed = await open("js-typed");
await typed.write("js-1", "text");
await typed.write({ k: "v", n: [1, 2.5, null], ok: true }, "json");
await typed.write(new Uint8Array([9, 8, 7, 0, 255]).buffer, "binary");
await typed.write("ünïcode ✓", "text");
await typed.write(42, "json");
await typed.write("a string", "json");
await typed.write("", "text");
await typed.write(new Uint8Array([1]).buffer, "binary");
await typed.end();

// Enough fragments for the Go client to acknowledge sequence ids on the
// reliable protocol as they come.
const long = await open("js-long");
for (let i = 1; i <= 400; i++) {
  switch (i % 3) {
    case 0:
      await long.write(`t${i}`, "text");
      break;
    case 1:
      await long.write({ i }, "json");
      break;
    default:
      await long.write(new Uint8Array([i & 255, i >> 8]).buffer, "binary");
  }
}
await long.end();

const aborted = await open("js-abort");
await aborted.write("a1", "text");
await aborted.write({ a: 2 }, "json");
await aborted.abort({ message: "js gave up", userErrorCode: "JS-7" });
log("published", {});

await nextLine();
await client.stop();
clearTimeout(timeout);
log("done", { errors });
process.exit(0); // the client leaves timers behind after stop()
