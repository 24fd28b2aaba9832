// The dashboard: the caller's sessions, and the selected one's curves, hyperparameters and checkpoint.
// Plain ES module, no build step. Every request goes to the page's own origin; the API key, when the
// server needs one, lives in sessionStorage and travels only in the Authorization header.
import uPlot from "../uplot/uPlot.esm.js";

const KEY_ITEM = "optim-service.api-key";
const METRICS_EVERY_MS = 1000;
const SESSIONS_EVERY_MS = 5000;
const PAGE_SIZE = 100;
const API = new URL("../v1/", document.baseURI);
const CURVES = ["loss", "grad_norm", "update_norm", "lr"];
const LABELS = { loss: "loss", grad_norm: "grad norm", update_norm: "update norm" };
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

const byId = (id) => document.getElementById(id);

class Unauthenticated extends Error {}

// ---- Talking to the API -----------------------------------------------------------------------------

let keyAsked = null; // one question at a time, however many requests were refused

function askForKey(problem) {
  if (keyAsked === null) {
    keyAsked = new Promise((resolve) => {
      const dialog = byId("key-dialog");
      byId("key-problem").textContent = problem;
      byId("key-form").addEventListener(
        "submit",
        (event) => {
          event.preventDefault();
          sessionStorage.setItem(KEY_ITEM, byId("key-input").value.trim());
          byId("key-input").value = "";
          dialog.close();
          keyAsked = null;
          resolve();
        },
        { once: true },
      );
      dialog.showModal();
    });
  }
  return keyAsked;
}

async function fetchOnce(path, accept) {
  const headers = { Accept: accept };
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(new URL(path, API), { headers, cache: "no-store", credentials: "omit" });
  if (response.ok) return response;
  let detail = response.statusText;
  try {
    detail = (await response.json()).detail ?? detail;
  } catch {
    // not a problem document: the status text says enough
  }
  if (response.status === 401) throw new Unauthenticated(detail);
  throw new Error(`${response.status}: ${detail}`);
}

async function api(path, accept = "application/json") {
  for (;;) {
    try {
      return await fetchOnce(path, accept);
    } catch (error) {
      if (!(error instanceof Unauthenticated)) throw error;
      if (sessionStorage.getItem(KEY_ITEM)) sessionStorage.removeItem(KEY_ITEM); // refused: ask again
      await askForKey(error.message);
    }
  }
}

const getJson = async (path) => (await api(path)).json();

function showStatus(text, problem = false) {
  const status = byId("status");
  status.textContent = text;
  status.classList.toggle("problem", problem);
}

// ---- Formatting ---------------------------------------------------------------------------------

function formatNumber(value) {
  if (value === null || value === undefined) return "–";
  return String(Number.parseFloat(value.toPrecision(6)));
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (bytes >= 1024 && unit < units.length - 1) {
    bytes /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? bytes : bytes.toFixed(1)} ${units[unit]}`;
}

function size(summary) {
  const elements = Object.values(summary.shapes).reduce(
    (total, shape) => total + shape.reduce((product, n) => product * n, 1),
    0,
  );
  const bytes = elements * (summary.dtype === "float64" ? 8 : 4);
  return `${elements.toLocaleString("en")} elements · ${formatBytes(bytes)}`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// ---- The sessions ---------------------------------------------------------------------------------

let sessions = [];
let selected = null; // the selected session's summary

async function loadSessions() {
  const all = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor !== null) query.set("cursor", cursor);
    const page = await getJson(`sessions?${query}`);
    all.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor !== null);
  return all;
}

function showSessions() {
  const body = byId("sessions");
  body.replaceChildren();
  for (const summary of sessions) {
    const row = body.insertRow();
    row.dataset.sessionId = summary.id;
    row.dataset.testid = "session-row";
    row.classList.toggle("selected", summary.id === selected?.id);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "session";
    button.textContent = summary.id;
    button.addEventListener("click", () => select(summary.id));
    row.insertCell().append(button);
    cell(row, summary.optimizer);
    cell(row, summary.dtype);
    cell(row, String(summary.step), "number").dataset.testid = "session-step";
    cell(row, size(summary), "number");
    cell(row, new Date(summary.updated_at).toLocaleString());
  }
  byId("no-sessions").hidden = sessions.length > 0;
}

async function refreshSessions() {
  sessions = await loadSessions();
  sessions.sort((a, b) => b.updated_at.localeCompare(a.updated_at));
  const current = sessions.find((summary) => summary.id === selected?.id);
  if (current) {
    selected = current;
    showGroups(current);
  }
  showSessions();
  if (!selected && sessions.length > 0) {
    const named = sessions.find((summary) => `#${summary.id}` === location.hash);
    select((named ?? sessions[0]).id);
  }
}

// ---- The selected session -----------------------------------------------------------------------

let curves = null; // the selected session's: {id, steps, values: {curve: [per step]}, plots, since, groups}

function newCurves(id, groups) {
  const plots = {};
  for (const name of CURVES) {
    const container = byId(`chart-${name}`);
    container.replaceChildren();
    const lines = name === "lr" ? [...Array(groups).keys()].map((group) => `group ${group}`) : [LABELS[name]];
    const options = {
      width: Math.max(container.clientWidth, 300),
      height: 200,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, {}],
      legend: { live: true },
      series: [
        { label: "step" },
        ...lines.map((label, index) => ({ label, stroke: COLOURS[index % COLOURS.length], width: 1.5, spanGaps: false })),
      ],
    };
    plots[name] = new uPlot(options, [[], ...lines.map(() => [])], container);
  }
  const values = Object.fromEntries(CURVES.map((name) => [name, []]));
  return { id, steps: [], values, plots, since: null, groups, pulling: null };
}

function append(into, items) {
  for (const item of items) {
    into.steps.push(item.step);
    into.values.loss.push(item.loss ?? null);
    into.values.grad_norm.push(item.grad_norm ?? null);
    into.values.update_norm.push(item.update_norm ?? null);
    into.values.lr.push(item.lr ?? []);
    into.since = item.step;
  }
}

function redraw(from) {
  for (const name of CURVES) {
    const lines =
      name === "lr"
        ? [...Array(from.groups).keys()].map((group) => from.values.lr.map((rates) => rates[group] ?? null))
        : [from.values[name]];
    from.plots[name].setData([from.steps, ...lines]);
    byId(`chart-${name}`).dataset.points = String(lines[0].filter((value) => value !== null).length);
  }
  const losses = from.values.loss.filter((value) => value !== null);
  byId("loss-summary").textContent =
    losses.length === 0
      ? "0 points · no loss reported yet"
      : `${losses.length} points · last loss ${formatNumber(losses[losses.length - 1])}`;
}

// One pull at a time per selection: two at once would both read on from the same step.
function refreshMetrics() {
  const mine = curves;
  if (!mine) return Promise.resolve();
  mine.pulling ??= pull(mine).finally(() => {
    mine.pulling = null;
  });
  return mine.pulling;
}

async function pull(mine) {
  const path = `sessions/${encodeURIComponent(mine.id)}/metrics`;
  let changed = false;
  for (;;) {
    const query = new URLSearchParams({ limit: "1000" });
    if (mine.since !== null) query.set("since", String(mine.since));
    const page = await getJson(`${path}?${query}`);
    if (curves !== mine) return; // another session was selected meanwhile
    append(mine, page.items);
    changed ||= page.items.length > 0;
    if (page.next_cursor === null || page.items.length === 0) break;
    mine.since = page.next_cursor;
  }
  if (changed) redraw(mine);
}

function showGroups(summary) {
  const names = [...new Set(summary.param_groups.flatMap((group) => Object.keys(group)))].filter(
    (name) => name !== "params",
  );
  const head = byId("groups-head");
  head.replaceChildren();
  const headRow = head.insertRow();
  for (const title of ["group", "params", ...names]) {
    const th = document.createElement("th");
    th.textContent = title;
    headRow.append(th);
  }
  const body = byId("groups");
  body.replaceChildren();
  summary.param_groups.forEach((group, index) => {
    const row = body.insertRow();
    cell(row, String(index));
    cell(row, group.params.join(", "));
    for (const name of names) {
      const value = group[name];
      cell(row, typeof value === "number" ? formatNumber(value) : JSON.stringify(value ?? null));
    }
  });
}

function select(id) {
  const summary = sessions.find((candidate) => candidate.id === id);
  if (!summary) return;
  selected = summary;
  history.replaceState(null, "", `#${id}`);
  byId("detail").hidden = false;
  byId("session-id").textContent = id;
  showSessions();
  showGroups(summary);
  curves = newCurves(id, summary.param_groups.length);
  redraw(curves);
  refreshMetrics().catch(failed);
}

async function download(accept, suffix) {
  if (!selected) return;
  const { id, step } = selected;
  const response = await api(`sessions/${encodeURIComponent(id)}/checkpoint`, accept);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = `${id}-step-${step}.${suffix}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

// ---- Running ----------------------------------------------------------------------------------------

function failed(error) {
  showStatus(String(error.message ?? error), true);
}

function every(milliseconds, work) {
  const run = async () => {
    try {
      await work();
      showStatus(`live · ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      failed(error);
    }
    setTimeout(run, milliseconds);
  };
  return run();
}

byId("download-json").addEventListener("click", () => download("application/json", "json").catch(failed));
byId("download-safetensors").addEventListener("click", () =>
  download("application/vnd.safetensors", "safetensors").catch(failed),
);
window.addEventListener("resize", () => {
  if (!curves) return;
  for (const name of CURVES) {
    const width = Math.max(byId(`chart-${name}`).clientWidth, 300);
    curves.plots[name].setSize({ width, height: 200 });
  }
});

every(SESSIONS_EVERY_MS, refreshSessions).then(() => every(METRICS_EVERY_MS, refreshMetrics));
