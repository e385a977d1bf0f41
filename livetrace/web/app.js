// The live trace page: reads the event stream (Server-Sent Events over
// fetch, since EventSource cannot send an Authorization header) and shows
// each event as a row, newest first.
"use strict";

const MAX_ROWS = 5000; // rows kept on the page; older ones are removed
const MAX_HELD = 10000; // events held while paused; past it they are skipped

const $ = (id) => document.getElementById(id);
const rows = $("rows");
const MAX_HUBS = 200; // hub suggestions kept
const state = { total: 0, paused: false, held: [], skipped: 0, hubs: new Set(), stopped: false, retry: 1000 };

// The token comes in the URL's fragment, which the browser never sends.
// It is kept for this tab (a reload works) and taken out of the address bar.
let token = "";
{
  const m = /(?:^|&)access_token=([^&]*)/.exec(location.hash.slice(1));
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("livetrace-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    token = sessionStorage.getItem("livetrace-token") || "";
  }
  const hub = new URLSearchParams(location.search).get("hub");
  if (hub) $("hub").value = hub;
}

function setStatus(cls, text) {
  const s = $("status");
  s.className = "status " + cls;
  s.textContent = text;
}

function notice(text, error) {
  const n = $("notice");
  n.hidden = !text;
  n.textContent = text || "";
  n.classList.toggle("error", !!error);
}

function showStatus() {
  if (state.stopped) return;
  if (state.paused) {
    let t = `Paused · ${state.held.length} new event${state.held.length === 1 ? "" : "s"} held`;
    if (state.skipped) t += `, ${state.skipped} skipped`;
    setStatus("paused", t);
  } else {
    setStatus("live", "Live");
  }
}

function updateCounts() {
  $("counts").textContent = `${state.total} event${state.total === 1 ? "" : "s"}`;
  $("empty").hidden = rows.childElementCount > 0;
}

// ---- rendering ----

const CATEGORY = { connection: "connectivity", message: "messaging", rest: "rest" };
const LABEL = {
  "connection.opened": "Connected",
  "connection.closed": "Disconnected",
  "connection.detached": "Detached",
  "connection.recovered": "Recovered",
  "message.received": "Message received",
  "message.sent": "Message sent",
  "rest.request": "REST request",
  dropped: "Events dropped",
  skipped: "Events skipped",
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function kv(td, k, v, cls) {
  if (v === undefined || v === null || v === "") return;
  const s = el("span", "kv");
  s.dataset.k = k;
  // Spaces as text, not only margins: a copied line reads "k v k v".
  s.append(el("span", "k", k), " ", el("span", "v" + (cls ? " " + cls : ""), String(v)));
  td.append(s, " ");
}

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function duration(ms) {
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
}

function time(iso) {
  const d = new Date(iso);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function details(td, ev) {
  switch (ev.kind) {
    case "connection.opened":
    case "connection.detached":
    case "connection.recovered":
      kv(td, "connection", ev.connectionId);
      kv(td, "user", ev.userId);
      kv(td, "subprotocol", ev.subprotocol);
      break;
    case "connection.closed":
      kv(td, "connection", ev.connectionId);
      kv(td, "user", ev.userId);
      kv(td, "reason", ev.closeReason, ev.closeReason === "normal" ? "ok" : "bad");
      if (ev.code) kv(td, "code", ev.code);
      kv(td, "message", ev.reason);
      kv(td, "after", duration(ev.durationMs || 0));
      break;
    case "message.received":
      kv(td, "connection", ev.connectionId);
      kv(td, "type", ev.type);
      kv(td, "group", ev.group);
      kv(td, "event", ev.event);
      kv(td, "size", size(ev.bytes || 0));
      break;
    case "message.sent":
      kv(td, "type", ev.type);
      kv(td, "group", ev.group);
      kv(td, "size", size(ev.bytes || 0));
      kv(td, "recipients", ev.recipients);
      break;
    case "rest.request":
      kv(td, "operation", ev.operation || "(none)");
      kv(td, "status", ev.status, ev.status < 400 ? "ok" : "bad");
      kv(td, "took", duration(ev.durationMs || 0));
      td.append(el("span", "path", `${ev.method} ${ev.path}`));
      break;
    case "dropped":
      td.append(`${ev.dropped} event${ev.dropped === 1 ? "" : "s"} dropped: this page did not keep up with the service.`);
      break;
    case "skipped":
      td.append(`${ev.dropped} event${ev.dropped === 1 ? "" : "s"} skipped while paused (more than ${MAX_HELD} held).`);
      break;
  }
}

function visible(tr) {
  const f = $("hub").value.trim().toLowerCase();
  const cat = tr.dataset.cat;
  if (cat !== "system" && !$("cat-" + cat).checked) return false;
  return !f || cat === "system" || tr.dataset.hub.toLowerCase().includes(f);
}

function render(ev) {
  const cat = CATEGORY[ev.kind.split(".")[0]] || "system";
  const tr = el("tr", cat === "system" ? "system" : "");
  tr.dataset.kind = ev.kind;
  tr.dataset.cat = cat;
  tr.dataset.hub = ev.hub || "";
  const look = { "connection.closed": "closed", "message.sent": "sent" }[ev.kind] || cat;
  const badge = el("span", "badge " + look, LABEL[ev.kind] || ev.kind);
  const td = el("td", "details");
  details(td, ev);
  tr.append(el("td", "time", time(ev.time)), el("td", "kind"), el("td", "hub", ev.hub || ""), td);
  tr.children[1].append(badge);
  tr.hidden = !visible(tr);
  rows.prepend(tr);
  while (rows.childElementCount > MAX_ROWS) rows.lastElementChild.remove();
  // The suggestions are bounded: a REST request names its hub before its
  // token is checked, so anyone can make up hub names.
  if (ev.hub && !state.hubs.has(ev.hub) && state.hubs.size < MAX_HUBS) {
    state.hubs.add(ev.hub);
    const o = document.createElement("option");
    o.value = ev.hub;
    $("hubs").append(o);
  }
}

function refilter() {
  for (const tr of rows.children) tr.hidden = !visible(tr);
}

// ---- the stream ----

function handle(ev) {
  switch (ev.kind) {
    case "ready":
      state.retry = 1000;
      notice(state.paused ? pausedNotice() : "");
      showStatus();
      return;
    case "expired":
      stop("Expired", "The live trace token expired. Open a new live trace URL (the server prints one when it starts).");
      return;
    case "closed":
      return; // the stream ends next: reconnect
  }
  state.total++;
  if (state.paused) {
    if (state.held.length < MAX_HELD) state.held.push(ev);
    else state.skipped++;
    showStatus();
  } else {
    render(ev);
  }
  updateCounts();
}

// stop gives up on the stream: only a new URL (a new token) helps.
function stop(status, message) {
  state.stopped = true;
  setStatus("error", status);
  notice(message, true);
  $("empty").textContent = "No stream: nothing more will be shown.";
}

async function connect() {
  if (state.stopped) return;
  setStatus("connecting", "Connecting…");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let res;
  try {
    res = await fetch("events", { headers, cache: "no-store" });
  } catch (e) {
    return reconnect(`Cannot reach the service (${e.message}).`);
  }
  if (res.status === 401) {
    sessionStorage.removeItem("livetrace-token");
    stop("Unauthorized", `Unauthorized: ${(await res.text()).trim()}`);
    return;
  }
  if (!res.ok) {
    return reconnect(`The service answered ${res.status}: ${(await res.text()).trim()}.`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (data) handle(JSON.parse(data)); // a line starting with ":" is a keep-alive
      }
    }
  } catch (e) {
    return reconnect(`The stream broke (${e.message}).`);
  }
  reconnect("The service ended the stream.");
}

function reconnect(why) {
  if (state.stopped) return;
  const s = Math.round(state.retry / 1000);
  setStatus("connecting", "Reconnecting…");
  notice(`${why} Reconnecting in ${s} s; events in between are not shown.`);
  setTimeout(connect, state.retry);
  state.retry = Math.min(state.retry * 2, 30000);
}

// ---- controls ----

function pausedNotice() {
  return `Paused: new events are held (up to ${MAX_HELD.toLocaleString("en")}; later ones are skipped and counted) and shown when you resume.`;
}

$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  const b = $("pause");
  b.textContent = state.paused ? "Resume" : "Pause";
  b.setAttribute("aria-pressed", String(state.paused));
  if (!state.paused) {
    for (const ev of state.held) render(ev);
    if (state.skipped) render({ kind: "skipped", time: new Date().toISOString(), dropped: state.skipped });
    state.held = [];
    state.skipped = 0;
    updateCounts();
  }
  if (!state.stopped) notice(state.paused ? pausedNotice() : "");
  showStatus();
});

$("clear").addEventListener("click", () => {
  rows.replaceChildren();
  state.held = [];
  state.skipped = 0;
  state.total = 0;
  updateCounts();
  showStatus();
});

$("hub").addEventListener("input", refilter);
for (const c of ["connectivity", "messaging", "rest"]) $("cat-" + c).addEventListener("change", refilter);

updateCounts();
connect();
