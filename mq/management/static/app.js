// mq dashboard: polls the management API with the credentials given in the login form
// and draws the message rates itself (no libraries, no build step).
"use strict";

// ?poll=MS polls faster (the browser test uses it); the rates themselves move every 2 s.
const POLL_MS = Math.max(200, Number(new URLSearchParams(location.search).get("poll")) || 2000);
const HISTORY = 90;  // points on the chart (3 minutes at one per poll)
const SERIES = [
  {key: "publish", label: "Publish", color: "#d9822b"},
  {key: "deliver_get", label: "Deliver / get", color: "#2b7bd9"},
  {key: "ack", label: "Ack", color: "#3a9d5d"},
  {key: "redeliver", label: "Redeliver", color: "#b03a8f"},
];
const history = [];
let credentials = sessionStorage.getItem("mq-credentials");
let timer = null;

const $ = (id) => document.getElementById(id);

async function api(path) {
  const response = await fetch(path, {headers: {Authorization: "Basic " + credentials}});
  if (response.status === 401) {
    const body = await response.json().catch(() => ({}));
    throw Object.assign(new Error(body.reason || "Login failed"), {unauthorized: true});
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function cell(row, value, numeric) {
  const td = row.insertCell();
  td.textContent = value === undefined || value === null ? "" : String(value);
  if (numeric) td.className = "num";
  return td;
}

const rate = (stats, key) => {
  const details = stats && stats[key + "_details"];
  return details ? details.rate.toFixed(1) : "0.0";
};

function fill(tableId, items, columns, keyOf) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    row.dataset.key = keyOf(item);
    for (const [cls, value, numeric] of columns(item)) cell(row, value, numeric).classList.add(cls);
  }
}

function formatBytes(value) {
  if (!value) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(value) / Math.log(1024)));
  return (i ? (value / Math.pow(1024, i)).toFixed(1) : String(value)) + " " + units[i];
}

const yesNo = (value) => value === undefined || value === null ? "" : value ? "yes" : "no";

function render(overview, nodes, queues, connections, channels, exchanges) {
  $("node").textContent = overview.node + " · mq " + overview.product_version;
  const totals = overview.object_totals, queued = overview.queue_totals;
  $("total-connections").textContent = totals.connections;
  $("total-channels").textContent = totals.channels;
  $("total-queues").textContent = totals.queues;
  $("total-consumers").textContent = totals.consumers;
  $("total-ready").textContent = queued.messages_ready;
  $("total-unacked").textContent = queued.messages_unacknowledged;

  const stats = overview.message_stats || {};
  history.push(SERIES.map((s) => (stats[s.key + "_details"] || {rate: 0}).rate));
  if (history.length > HISTORY) history.shift();
  drawChart();

  // B-CLUSTER-8: every node, its role, whether it is in sync and its replication lag.
  fill("nodes", nodes, (n) => [
    ["name", n.name], ["role", n.cluster_role], ["in-sync", yesNo(n.in_sync)],
    ["lag", n.lag === undefined ? "" : formatBytes(n.lag), true],
    ["running", yesNo(n.running)], ["amqp", n.amqp_address],
    ["management", n.management_address], ["replication", n.replication_address],
  ], (n) => n.name);
  for (const row of $("nodes").tBodies[0].rows) {
    const node = nodes.find((n) => n.name === row.dataset.key) || {};
    row.classList.toggle("leader", node.cluster_role === "leader");
    row.classList.toggle("warn", node.running === false || node.in_sync === false);
  }
  fill("queues", queues, (q) => [
    ["vhost", q.vhost], ["name", q.name], ["state", q.state],
    ["ready", q.messages_ready, true], ["unacked", q.messages_unacknowledged, true],
    ["total", q.messages, true], ["consumers", q.consumers, true],
    ["publish-rate", rate(q.message_stats, "publish"), true],
    ["deliver-rate", rate(q.message_stats, "deliver_get"), true],
    ["ack-rate", rate(q.message_stats, "ack"), true],
  ], (q) => q.vhost + "/" + q.name);
  // B-STREAM: each stream's extent, and where its consumers and tracked tags or groups are.
  const positions = (list) => (list || []).map(
    (p) => p.consumer_tag + ": " + p.offset + " (" + p.lag + ")").join(", ");
  fill("streams", queues.filter((q) => q.type === "stream"), (q) => [
    ["vhost", q.vhost], ["name", q.name], ["first", q.first_offset, true],
    ["last", q.last_offset, true], ["size", formatBytes(q.stream_bytesize), true],
    ["segments", q.segments, true], ["consumers", positions(q.consumer_offsets)],
    ["tracked", positions(q.tracked_offsets)],
  ], (q) => q.vhost + "/" + q.name);
  fill("connections", connections, (c) => [
    ["name", c.name], ["user", c.user], ["vhost", c.vhost], ["state", c.state],
    ["channels", c.channels, true],
    ["client", (c.client_properties || {}).product || ""],
    ["recv-rate", rate(c, "recv_oct"), true], ["send-rate", rate(c, "send_oct"), true],
  ], (c) => c.name);
  fill("channels", channels, (c) => [
    ["name", c.name], ["user", c.user], ["vhost", c.vhost],
    ["consumers", c.consumer_count, true], ["unacked", c.messages_unacknowledged, true],
    ["prefetch", c.prefetch_count, true],
    ["mode", c.confirm ? "confirm" : c.transactional ? "tx" : ""],
    ["publish-rate", rate(c.message_stats, "publish"), true],
  ], (c) => c.name);
  fill("exchanges", exchanges, (x) => [
    ["vhost", x.vhost], ["name", x.name || "(AMQP default)"], ["type", x.type],
    ["features", [x.durable && "durable", x.auto_delete && "auto-delete",
                  x.internal && "internal"].filter(Boolean).join(" ")],
  ], (x) => x.vhost + "/" + x.name);
  $("status").textContent = "Updated " + new Date().toLocaleTimeString();
}

function drawChart() {
  const canvas = $("rates-chart"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 50, bottom = 20, top = 10;
  ctx.clearRect(0, 0, w, h);
  const peak = Math.max(1, ...history.flat());
  const scale = niceCeiling(peak);
  ctx.strokeStyle = "#e4e4ea"; ctx.fillStyle = "#777"; ctx.font = "11px sans-serif";
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(formatRate(scale * i / 4), left - 6, y);
  }
  ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";
  ctx.fillText("last " + Math.round(HISTORY * POLL_MS / 1000) + " s", left, h - 4);
  const step = (w - left) / (HISTORY - 1);
  SERIES.forEach((series, index) => {
    ctx.strokeStyle = series.color; ctx.lineWidth = 2; ctx.beginPath();
    history.forEach((point, i) => {
      const x = left + (HISTORY - history.length + i) * step;
      const y = top + (h - top - bottom) * (1 - point[index] / scale);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
  const last = history[history.length - 1] || [];
  $("rates-legend").replaceChildren(...SERIES.map((series, index) => {
    const span = document.createElement("span");
    span.dataset.series = series.key;
    const swatch = document.createElement("i");
    swatch.style.background = series.color;
    span.append(swatch, series.label + ": " + formatRate(last[index] || 0) + "/s");
    return span;
  }));
}

function niceCeiling(value) {
  const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 5, 10]) if (m * magnitude >= value) return m * magnitude;
  return 10 * magnitude;
}

function formatRate(value) {
  return value >= 1000 ? (value / 1000).toFixed(1) + "k" : value.toFixed(value < 10 ? 1 : 0);
}

async function poll() {
  try {
    const [overview, nodes, queues, connections, channels, exchanges] = await Promise.all(
      ["/api/overview", "/api/nodes", "/api/queues", "/api/connections", "/api/channels",
       "/api/exchanges"].map(api));
    render(overview, nodes, queues, connections, channels, exchanges);
  } catch (error) {
    if (error.unauthorized) return showLogin(error.message);
    $("status").textContent = "Error: " + error.message;
  }
  timer = setTimeout(poll, POLL_MS);
}

function showLogin(message) {
  clearTimeout(timer);
  sessionStorage.removeItem("mq-credentials");
  credentials = null;
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function start() {
  try {
    const me = await api("/api/whoami");
    $("whoami").textContent = me.name;
  } catch (error) {
    return showLogin(error.unauthorized ? error.message : "Cannot reach the broker");
  }
  sessionStorage.setItem("mq-credentials", credentials);
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  poll();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("login-user").value, password = $("login-password").value;
  credentials = btoa(unescape(encodeURIComponent(user + ":" + password)));
  start();
});
$("logout").addEventListener("click", () => showLogin(""));

if (credentials) start(); else showLogin("");
