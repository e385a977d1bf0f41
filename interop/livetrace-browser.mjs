// Drives cmd/webpubsub's live trace page in headless Chromium (the
// system's, through playwright-core: no browser is downloaded) while the
// official SDKs make traffic: a client connects, joins a group, sends to it
// and raises an event, the server SDK sends to the group through REST, the
// client leaves. Checks that the page shows it all (and no message data),
// refuses a page without a live trace token, filters by hub, pauses, takes
// a screenshot and clears. The Go test (cmd/webpubsub/livetrace_test.go)
// starts the server and reads the steps.
//
// Usage: LIVETRACE_URL=<url with #access_token=…> CONNECTION_STRING=<…>
//        SCREENSHOT=<png path> CHROMIUM=/usr/bin/chromium node livetrace-browser.mjs
// Prints one JSON line per step; exits non-zero on any failure.
import { chromium } from "playwright-core";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";

const { LIVETRACE_URL: pageURL, CONNECTION_STRING: cs, SCREENSHOT: shot } = process.env;
const log = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));
const fail = (msg) => {
  console.error("livetrace-browser:", msg);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 45000).unref();

// Distinct sizes, to find each message's row by its size.
const SECRET = "SECRET-CLIENT-PAYLOAD-5c1d"; // 26 bytes
const REST_SECRET = "SECRET-REST-PAYLOAD-9e2b-0123456789"; // 35 bytes

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic"],
});
const clients = [];
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const chat = new WebPubSubServiceClient(cs, "chat", { allowInsecureConnection: true });
  const other = new WebPubSubServiceClient(cs, "other", { allowInsecureConnection: true });

  // Without a token, and with a client's token, the page says why not.
  const base = pageURL.split("#")[0];
  const clientToken = (await chat.getClientAccessToken({ userId: "mallory" })).token;
  for (const [step, url] of [["unauthorized", base], ["client-token", `${base}#access_token=${clientToken}`]]) {
    const p = await ctx.newPage();
    await p.goto(url);
    const notice = p.locator("#notice:not([hidden])");
    await notice.waitFor();
    log(step, { notice: await notice.textContent(), status: await p.textContent("#status") });
    await p.close();
  }

  const page = await ctx.newPage();
  page.on("pageerror", (e) => fail(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && fail(`page console: ${m.text()}`));
  await page.goto(pageURL);
  await page.locator("#status.live").waitFor();
  log("live", { status: await page.textContent("#status"), urlHasToken: page.url().includes("access_token") });

  const connect = async (svc, userId, roles) => {
    const { url } = await svc.getClientAccessToken({ userId, roles });
    const c = new WebPubSubClient(url, { protocol: WebPubSubJsonProtocol(), autoReconnect: false });
    clients.push(c);
    await c.start();
    return c;
  };
  const alice = await connect(chat, "alice", ["webpubsub.joinLeaveGroup.room", "webpubsub.sendToGroup.room"]);
  const bob = await connect(other, "bob", []);
  await alice.joinGroup("room");
  await alice.sendToGroup("room", SECRET, "text");
  await alice.sendEvent("typing", SECRET, "text", { fireAndForget: true });
  await chat.group("room").sendToAll(REST_SECRET, { contentType: "text/plain" });
  await alice.stop();

  // Each line, found by kind, hub and what its details say.
  const row = async (kind, hub, ...texts) => {
    let loc = page.locator(`#rows tr[data-kind="${kind}"][data-hub="${hub}"]`);
    for (const t of texts) loc = loc.filter({ hasText: t });
    await loc.first().waitFor();
    return (await loc.first().innerText()).replace(/\s+/g, " ");
  };
  const lines = {
    aliceOpened: await row("connection.opened", "chat", "alice", "json.webpubsub.azure.v1"),
    bobOpened: await row("connection.opened", "other", "bob"),
    joined: await row("message.received", "chat", "joinGroup", "room"),
    received: await row("message.received", "chat", "sendToGroup", "room"),
    event: await row("message.received", "chat", "typing"),
    sent: await row("message.sent", "chat", "sendToGroup", `${SECRET.length} B`),
    restSent: await row("message.sent", "chat", `${REST_SECRET.length} B`),
    rest: await row("rest.request", "chat", "sendToGroup", "202"),
    closed: await row("connection.closed", "chat", "alice", "normal"),
  };
  const text = await page.textContent("body");
  log("traffic", { lines, hasSecret: text.includes("SECRET") });

  // The hub filter hides the other hubs' lines, and shows them again.
  await page.fill("#hub", "other");
  const shownHubs = await page.$$eval("#rows tr:not([hidden])", (trs) => trs.map((tr) => tr.dataset.hub));
  await page.fill("#hub", "");
  const all = await page.locator("#rows tr:not([hidden])").count();
  log("filter", { shownHubs, all });

  // Paused, new events are held (the table does not move), and shown on
  // resume.
  const before = await page.locator("#rows tr").count();
  await page.click("#pause");
  await page.locator("#status.paused").waitFor();
  await other.sendToAll("while paused", { contentType: "text/plain" });
  await page.waitForFunction(() => /· [1-9]\d* new events? held/.test(document.getElementById("status").textContent));
  const paused = {
    status: await page.textContent("#status"),
    notice: await page.textContent("#notice"),
    button: await page.textContent("#pause"),
    rows: await page.locator("#rows tr").count(),
  };
  await page.click("#pause");
  await row("message.sent", "other", "sendToAll", "12 B");
  log("pause", { before, paused, after: await page.locator("#rows tr").count(), status: await page.textContent("#status") });

  await page.screenshot({ path: shot });
  log("screenshot", { path: shot });

  await page.click("#clear");
  await page.locator("#empty:not([hidden])").waitFor();
  log("clear", { rows: await page.locator("#rows tr").count(), counts: await page.textContent("#counts") });
} finally {
  for (const c of clients) c.stop();
  await browser.close();
}
log("done");
process.exit(0);
