// bawt-vllm dashboard: plain modern JavaScript, no build step, nothing fetched from elsewhere.
// Data comes pushed from GET /ui/api/feed (server-sent events read with fetch(), so the gateway key
// can go in an Authorization header); actions and the log use the admin API. Clocks (uptime, idle,
// time left before unload, a load's elapsed time) are counted on here from the last snapshot.

import { bytes, duration, el, errorText, readJson } from "./dom.js";
import { renderGpus } from "./gpus.js";

const KEY_ITEM = "bawt-vllm-key";
const FEED = "/ui/api/feed";
const LIVE = new Set(["starting", "ready", "unhealthy", "sleeping", "stopping"]);
const EVENTS_KEPT = 200;
const FIRST_DATA = "bawt-vllm:first-data";  // a performance mark: the first snapshot on screen
const LOG_CHARS_KEPT = 200000;
const $ = (id) => document.getElementById(id);

let key = sessionStorage.getItem(KEY_ITEM) || "";
let view = null;          // the last snapshot
let viewAt = 0;           // when it arrived (local seconds)
let feedAbort = null;
let retryTimer = null;
let retries = 0;
const cards = new Map();  // alias -> card parts
const log = { alias: "", abort: null };

// -- small helpers ------------------------------------------------------------------------------
function authHeaders(extra = {}) {
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function elapsed() {
  return Date.now() / 1000 - viewAt;
}

function setConnection(state, text) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = text;
}

// -- the key ------------------------------------------------------------------------------------
function clearData() {
  view = null;
  cards.clear();
  $("models").replaceChildren();
  $("gpus").replaceChildren();
  $("events").replaceChildren();
  $("log").textContent = "";
  closeLog();
}

function needKey(message) {
  stopFeed();
  clearData();
  if (key) sessionStorage.removeItem(KEY_ITEM);
  key = "";
  $("board").hidden = true;
  $("forget-key").hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message;
  $("key-input").focus();
  setConnection("down", "needs the gateway key");
}

function refused(message) {
  stopFeed();
  clearData();
  $("board").hidden = true;
  $("key-form").hidden = true;
  const node = $("refused");
  node.hidden = false;
  node.textContent = message;
  setConnection("down", "refused");
}

function accepted() {
  $("key-form").hidden = true;
  $("refused").hidden = true;
  $("key-error").textContent = "";
  $("board").hidden = false;
  $("forget-key").hidden = !key;
}

// -- the feed -----------------------------------------------------------------------------------
function stopFeed() {
  clearTimeout(retryTimer);
  if (feedAbort) feedAbort.abort();
  feedAbort = null;
}

function reconnectLater(why) {
  const delay = Math.min(30, 2 ** retries);
  retries += 1;
  setConnection("down", `${why}: reconnecting in ${delay} s`);
  retryTimer = setTimeout(openFeed, delay * 1000);
}

async function openFeed() {
  stopFeed();
  const abort = new AbortController();
  feedAbort = abort;
  setConnection("connecting", "connecting…");
  let response;
  try {
    response = await fetch(FEED, { headers: authHeaders({ Accept: "text/event-stream" }), signal: abort.signal,
                                   cache: "no-store" });
  } catch {
    if (!abort.signal.aborted) reconnectLater("daemon not reachable");
    return;
  }
  if (response.status === 401) {
    needKey(key ? "That key was refused: missing or wrong API key." : "");
    return;
  }
  if (response.status === 403) {
    refused(errorText(await readJson(response), 403));
    return;
  }
  if (!response.ok) {
    reconnectLater(`HTTP ${response.status}`);
    return;
  }
  accepted();
  retries = 0;
  setConnection("live", "live: updates are pushed");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch {
    // the connection broke: reconnect below unless this feed was closed on purpose
  }
  if (!abort.signal.aborted) reconnectLater("disconnected");
}

function dispatch(frame) {
  let name = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return;  // a keepalive comment
  const payload = JSON.parse(data.join("\n"));
  if (name === "snapshot") render(payload);
  else if (name === "backlog") {
    $("events").replaceChildren();
    for (const event of payload.events) addEvent(event);
  } else if (name === "event") {
    addEvent(payload);
    if (payload.alias === log.alias && payload.kind === "launched") openLog(log.alias);  // a new start: a new log
  } else if (name === "closing") setConnection("down", payload.message);
}

// -- models -------------------------------------------------------------------------------------
const FACTS = [["gpu", "GPU"], ["memory", "Memory"], ["uptime", "Uptime"], ["in_flight", "In flight"],
               ["idle", "Idle"], ["unload_in", "Unloads in"], ["restarts", "Restarts"], ["last_error", "Last error"]];
const ACTIONS = [["load", "Load"], ["unload", "Unload"], ["sleep", "Sleep"], ["wake", "Wake"]];

function makeCard(alias) {
  const id = `model-${alias.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const parts = { alias, pending: new Set(), facts: {}, buttons: {} };
  parts.state = el("span", { class: "state" });
  parts.description = el("p", { class: "description" });
  parts.progress = el("progress", { max: "1", "aria-label": `load progress of ${alias}` });
  parts.stage = el("p");
  parts.loading = el("div", { class: "loading" }, parts.progress, parts.stage);
  const facts = el("dl", { class: "facts" });
  for (const [name, label] of FACTS) {
    parts.facts[name] = el("dd", { "data-fact": name });
    facts.append(el("dt", { text: label }), parts.facts[name]);
  }
  const actions = el("div", { class: "actions" });
  for (const [action, label] of ACTIONS) {
    const button = el("button", { type: "button", "aria-label": `${label} ${alias}`, "data-action": action,
                                  text: label });
    button.addEventListener("click", () => act(alias, action));
    parts.buttons[action] = button;
    actions.append(button);
  }
  const logButton = el("button", { type: "button", "aria-label": `Show the log of ${alias}`, text: "Log" });
  logButton.addEventListener("click", () => {
    $("log-model").value = alias;
    openLog(alias);
    $("log").focus();
  });
  actions.append(logButton);
  parts.result = el("p", { class: "result", role: "status", "aria-live": "polite" });
  parts.node = el("article", { class: "card", id, "aria-labelledby": `${id}-name`, "data-alias": alias },
    el("div", { class: "card-head" }, el("h3", { id: `${id}-name`, text: alias }), parts.state),
    parts.description, parts.loading, facts, actions, parts.result);
  return parts;
}

function memoryText(row) {
  const parts = [];
  if (row.gpu_budget !== null && row.gpu_budget !== undefined) parts.push(`budget ${Math.round(row.gpu_budget * 100)}%`);
  else if (row.gpus && row.gpus.length && LIVE.has(row.state)) parts.push("whole GPU");
  if (row.vram_bytes !== null && row.vram_bytes !== undefined) parts.push(`using ${bytes(row.vram_bytes)}`);
  return parts.join(" · ") || "—";
}

function updateCard(parts, row) {
  parts.row = row;
  parts.node.dataset.state = row.state;
  parts.state.dataset.state = row.state;
  parts.state.textContent = row.state;
  parts.description.textContent = row.description || "";
  parts.description.hidden = !row.description;
  const loading = row.state === "starting";
  parts.loading.hidden = !loading;
  if (loading) parts.progress.value = row.progress || 0;
  const f = parts.facts;
  const live = LIVE.has(row.state);
  f.gpu.textContent = !live ? "—" : row.gpus && row.gpus.length ? row.gpus.map((g) => `GPU ${g}`).join(", ") : "CPU";
  f.memory.textContent = memoryText(row);
  f.in_flight.textContent = String(row.in_flight ?? 0);
  f.restarts.textContent = String(row.restarts ?? 0);
  f.last_error.textContent = row.last_error || "none";
  f.last_error.classList.toggle("error", Boolean(row.last_error));
  updateButtons(parts);
  tickCard(parts);
}

function updateButtons(parts) {
  const row = parts.row;
  const b = parts.buttons;
  b.load.disabled = parts.pending.has("load") || !["stopped", "failed"].includes(row.state);
  b.unload.disabled = parts.pending.has("unload") || ["stopped", "stopping"].includes(row.state);
  b.sleep.hidden = b.wake.hidden = !row.sleep_capable;
  b.sleep.disabled = parts.pending.has("sleep") || row.state !== "ready" || row.in_flight > 0;
  b.wake.disabled = parts.pending.has("wake") || row.state !== "sleeping";
}

function tickCard(parts) {
  const row = parts.row;
  const since = elapsed();
  const f = parts.facts;
  f.uptime.textContent = row.uptime_s === null || row.uptime_s === undefined ? "—" : duration(row.uptime_s + since);
  f.idle.textContent = row.idle_s === null || row.idle_s === undefined ? "—" : duration(row.idle_s + since);
  if (row.pinned) f.unload_in.textContent = "never (pinned)";
  else if (!row.idle_ttl_s) f.unload_in.textContent = "never (no idle TTL)";
  else f.unload_in.textContent = row.unload_in_s === null || row.unload_in_s === undefined
    ? "—" : duration(row.unload_in_s - since);
  if (row.state === "starting") {
    const clock = row.loading_since ? ` · ${duration(Date.now() / 1000 - viewAt + view.time - row.loading_since)}` : "";
    parts.stage.textContent = `${row.stage || "starting"}${clock}`;
  }
}

function proofText(action, body) {
  if (action === "unload") return `Stopped: ${body.summary}`;
  if (action === "sleep") return `Asleep: ${body.proof}`;
  if (action === "wake") return `Awake at ${body.endpoint}`;
  return `Loaded: ready at ${body.endpoint}`;
}

async function act(alias, action) {
  const parts = cards.get(alias);
  if (!parts) return;
  parts.pending.add(action);
  updateButtons(parts);
  parts.result.classList.remove("error");
  parts.result.textContent = { load: "Loading…", unload: "Stopping…", sleep: "Putting to sleep…", wake: "Waking…" }[action];
  let response;
  try {
    response = await fetch(`/models/${encodeURIComponent(alias)}/${action}`,
                           { method: "POST", headers: authHeaders({ Accept: "application/json" }) });
  } catch {
    response = null;
  }
  const body = response ? await readJson(response) : null;
  const current = cards.get(alias) || parts;
  current.pending.delete(action);
  if (current.row) updateButtons(current);
  if (response && response.status === 401) {
    needKey("That key was refused: missing or wrong API key.");
    return;
  }
  current.result.classList.toggle("error", !(response && response.ok));
  current.result.textContent = !response ? "The daemon did not answer."
    : response.ok ? proofText(action, body) : errorText(body, response.status);
}

// -- the snapshot -------------------------------------------------------------------------------
function render(snapshot) {
  view = snapshot;
  viewAt = Date.now() / 1000;
  const box = $("models");
  const seen = new Set();
  snapshot.models.forEach((row, index) => {
    let parts = cards.get(row.alias);
    if (!parts) {
      parts = makeCard(row.alias);
      cards.set(row.alias, parts);
    }
    seen.add(row.alias);
    updateCard(parts, row);
    if (box.children[index] !== parts.node) box.insertBefore(parts.node, box.children[index] || null);
  });
  for (const [alias, parts] of cards) {
    if (!seen.has(alias)) {
      parts.node.remove();
      cards.delete(alias);
    }
  }
  renderGpus($("gpus"), snapshot.gpus);
  updateLogChoices(snapshot.models);
  if (!performance.getEntriesByName(FIRST_DATA).length) performance.mark(FIRST_DATA);  // benchmarks/ui.py reads it
}

function tick() {
  if (!view) return;
  for (const parts of cards.values()) if (parts.row) tickCard(parts);
}

// -- events -------------------------------------------------------------------------------------
function addEvent(event) {
  const list = $("events");
  const at = new Date(event.at * 1000);
  const item = el("li", { "data-alias": event.alias, "data-kind": event.kind },
    el("time", { datetime: at.toISOString(), text: at.toLocaleTimeString() }),
    el("strong", { text: `${event.alias} ` }), el("span", { class: "kind", text: event.kind }),
    el("span", { text: event.message }));
  list.prepend(item);
  while (list.children.length > EVENTS_KEPT) list.lastElementChild.remove();
}

// -- the log ------------------------------------------------------------------------------------
function updateLogChoices(models) {
  const select = $("log-model");
  const have = [...select.options].slice(1).map((option) => option.value);
  const want = models.map((row) => row.alias);
  if (have.join("\n") !== want.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "(choose a model)" }),
                           ...want.map((alias) => el("option", { value: alias, text: alias })));
    select.value = want.includes(chosen) ? chosen : "";
  }
  const row = models.find((candidate) => candidate.alias === log.alias);
  if (row && !log.abort && LIVE.has(row.state)) openLog(log.alias);  // its log appears once it starts
}

function closeLog() {
  if (log.abort) log.abort.abort();
  log.abort = null;
}

function setLogStatus(text) {
  $("log-status").textContent = text;
}

function appendLog(text) {
  const pre = $("log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  pre.append(text);
  if (pre.textContent.length > LOG_CHARS_KEPT) pre.textContent = pre.textContent.slice(-LOG_CHARS_KEPT / 2);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function openLog(alias) {
  closeLog();
  log.alias = alias;
  $("log").textContent = "";
  if (!alias) {
    setLogStatus("");
    return;
  }
  const abort = new AbortController();
  log.abort = abort;
  setLogStatus(`opening ${alias}'s log…`);
  let response;
  try {
    response = await fetch(`/models/${encodeURIComponent(alias)}/logs?lines=200&follow=1`,
                           { headers: authHeaders(), signal: abort.signal, cache: "no-store" });
  } catch {
    if (log.abort === abort) log.abort = null;
    return;
  }
  if (!response.ok) {
    const body = await readJson(response);
    if (log.abort === abort) log.abort = null;
    if (response.status === 401) needKey("That key was refused: missing or wrong API key.");
    else setLogStatus(body && body.error && body.error.code === "no_log"
      ? `${alias} has no log yet: it appears here when the model starts` : errorText(body, response.status));
    return;
  }
  setLogStatus(`following ${alias}'s vllm serve log`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      appendLog(value);
    }
  } catch {
    // closed: another model was chosen, or the daemon went away
  }
  if (log.abort === abort) {
    log.abort = null;
    setLogStatus(`${alias}'s log stream ended`);
  }
}

// -- start --------------------------------------------------------------------------------------
function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key = $("key-input").value.trim();
    $("key-input").value = "";
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    openFeed();
  });
  $("forget-key").addEventListener("click", () => needKey(""));
  $("log-model").addEventListener("change", (event) => openLog(event.target.value));
  setInterval(tick, 1000);
  openFeed();
}

start();
