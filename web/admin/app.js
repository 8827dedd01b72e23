// The administrators' dashboard: plain JS over the admin API, with the token kept for this
// tab only (sessionStorage). Everything it loads is served by this server.
"use strict";

// Script errors, kept for whoever inspects the page (the browser tests report them).
window.heyblueErrors = [];
window.addEventListener("error", (e) => window.heyblueErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.heyblueErrors.push(String(e.reason)));

const HISTORY_S = 15 * 60;
const RETRY_MS = [1000, 10000]; // the live feed's reconnection backoff, first and longest

// Sign-in lives here alone (single sign-on will replace it).
const auth = {
  get token() { return sessionStorage.getItem("heyblue.token"); },
  set token(t) { t ? sessionStorage.setItem("heyblue.token", t) : sessionStorage.removeItem("heyblue.token"); },
};

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${auth.token}` } });
  if (!r.ok) {
    let msg = `${r.status}`;
    try { const b = await r.json(); msg = `${r.status} ${b.error.code}: ${b.error.message}`; } catch (_) {}
    const e = new Error(msg); e.status = r.status; throw e;
  }
  return r.headers.get("content-type")?.includes("json") ? r.json() : r.text();
}

const $ = (s) => document.querySelector(s);
const COUNTERS = ["officers_available", "officers_online", "citizens_online", "regions_active", "pending_requests", "sockets"];

// Charts: sessions by role and messages per second, kept in the page for 15 minutes.
const series = { t: [], officers: [], citizens: [], msgs: [] };
let lastMsgs = null, charts = null;
function makeCharts() {
  const box = (id) => $(id).parentElement;
  const width = (id) => Math.max(260, Math.floor(box(id).clientWidth - 8));
  // The x axis always spans the last 15 minutes, however few samples there are yet.
  const span = (u) => { const t = u.data[0], end = t.length ? t[t.length - 1] : Date.now() / 1000; return [end - HISTORY_S, end]; };
  const opts = (id, s) => ({ width: width(id), height: 160, scales: { x: { time: true, range: span } }, series: [{}, ...s] });
  charts = {
    sessions: new uPlot(opts("#chart-sessions", [{ label: "officers", stroke: "#0b3d91" }, { label: "citizens", stroke: "#2da44e" }]), [[], [], []], $("#chart-sessions")),
    messages: new uPlot(opts("#chart-messages", [{ label: "messages/s", stroke: "#bf3989" }]), [[], []], $("#chart-messages")),
  };
  // Charts follow their boxes when the window (or a tablet) changes size.
  // (Resized in the next frame: resizing inside the observer's callback would notify it
  // again in the same frame.)
  new ResizeObserver(() => requestAnimationFrame(() => {
    charts.sessions.setSize({ width: width("#chart-sessions"), height: 160 });
    charts.messages.setSize({ width: width("#chart-messages"), height: 160 });
  })).observe($("main"));
}
function pushSample(stats) {
  const now = Date.now() / 1000, msgsTotal = stats.messages_in;
  series.t.push(now); series.officers.push(stats.officers_online); series.citizens.push(stats.citizens_online);
  const rate = lastMsgs ? Math.max(0, (msgsTotal - lastMsgs.v) / (now - lastMsgs.t)) : 0;
  lastMsgs = { v: msgsTotal, t: now }; series.msgs.push(rate);
  while (series.t.length && series.t[0] < now - HISTORY_S) { for (const k in series) series[k].shift(); }
  charts.sessions.setData([series.t, series.officers, series.citizens]);
  charts.messages.setData([series.t, series.msgs]);
}

// The map: state outlines, officers as markers, grouped when close.
let map = null, cluster = null, citizenLayer = null;
const markers = new Map();
async function makeMap() {
  map = L.map("map", { zoomSnap: 0.25, minZoom: 2, maxZoom: 14, attributionControl: false }).fitBounds([[24.4, -125], [49.4, -66.9]]);
  const us = await (await fetch("/admin/assets/vendor/us-atlas/states-10m.json")).json();
  L.geoJSON(topojson.feature(us, us.objects.states), { style: { color: "#57606a", weight: 1, fillColor: "#f6f8fa", fillOpacity: 1 } }).addTo(map);
  cluster = L.markerClusterGroup({
    iconCreateFunction: (c) => L.divIcon({ html: `<div class="officer-cluster" data-count="${c.getChildCount()}">${c.getChildCount()}</div>`, className: "", iconSize: [30, 30] }),
    chunkedLoading: true,
  });
  map.addLayer(cluster);
  map.on("zoomend moveend", () => { if (pendingMoves.size) rebuild(); });
  setInterval(() => { if (pendingMoves.size) rebuild(); }, FLUSH_MS);
  citizenLayer = L.layerGroup().addTo(map);
  map.on("click", async (e) => {
    const z = await (await fetch(`/v1/zips/lookup?lat=${e.latlng.lat}&lon=${e.latlng.lng}`)).json();
    if (z.zip) { $("#zip").value = z.zip; showRegion(z.zip); }
  });
}
function escapeHtml(s) { return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }
function officerMarker(o) {
  return L.marker([o.lat, o.lon], {
    icon: L.divIcon({ html: `<div class="officer-marker" data-officer-id="${escapeHtml(o.officer_id)}"></div>`, className: "", iconSize: [12, 12] }),
    title: `${o.display_name} (${o.zip})`, keyboard: true,
  });
}
// Officers that came, moved or went. Re-clustering is what costs (removing and adding a
// marker to the cluster group), so a move is drawn only when it shows: the marker is in
// view and moved at least a pixel at this zoom. Other moves are kept (`pendingMoves`) and
// drawn in one rebuild when the view changes or every FLUSH_MS; many visible changes at
// once are one rebuild too (the group adds thousands of markers at once far faster than it
// removes and re-adds them one by one).
const pendingMoves = new Map();
const FLUSH_MS = 15000, REBUILD_AT = 200;
// Whether moving marker `m` to `o` changes the picture: either end in `view` (the visible
// bounds, padded) and at least a pixel apart at zoom `z` (Web Mercator: a degree of
// longitude is 256·2^z/360 pixels, a degree of latitude that divided by cos(latitude)).
// Plain arithmetic: it runs for every officer of every update.
function shows(view, z, m, o) {
  const p = m.getLatLng();
  const inView = (lat, lon) => lat >= view.s && lat <= view.n && lon >= view.w && lon <= view.e;
  if (!inView(o.lat, o.lon) && !inView(p.lat, p.lng)) return false;
  const k = 256 * 2 ** z / 360;
  return Math.abs(o.lon - p.lng) * k + Math.abs(o.lat - p.lat) * k / Math.cos(o.lat * Math.PI / 180) >= 1;
}
function rebuild() {
  cluster.clearLayers();
  for (const [id, o] of pendingMoves) markers.get(id)?.setLatLng([o.lat, o.lon]);
  pendingMoves.clear();
  cluster.addLayers([...markers.values()]);
}
function updateOfficers(upsert, goneIds) {
  const b = map.getBounds().pad(0.1), z = map.getZoom();
  const view = { s: b.getSouth(), n: b.getNorth(), w: b.getWest(), e: b.getEast() };
  const add = [], moved = [], gone = [];
  for (const o of upsert) {
    const m = markers.get(o.officer_id);
    if (!m) {
      const marker = officerMarker(o);
      markers.set(o.officer_id, marker); add.push(marker);
    } else if (shows(view, z, m, o)) {
      pendingMoves.delete(o.officer_id); moved.push([m, o]);
    } else {
      pendingMoves.set(o.officer_id, o);
    }
  }
  for (const id of goneIds) {
    const m = markers.get(id);
    if (m) { gone.push(m); markers.delete(id); pendingMoves.delete(id); }
  }
  if (moved.length + gone.length > REBUILD_AT) {
    for (const [m, o] of moved) m.setLatLng([o.lat, o.lon]);
    return rebuild();
  }
  if (moved.length) {
    cluster.removeLayers(moved.map(([m]) => m));
    for (const [m, o] of moved) m.setLatLng([o.lat, o.lon]);
    add.push(...moved.map(([m]) => m));
  }
  if (gone.length) cluster.removeLayers(gone);
  if (add.length) cluster.addLayers(add);
}
// Where the page last heard an officer was (drawn or not yet).
function officerPosition(id) {
  const o = pendingMoves.get(id);
  if (o) return [o.lat, o.lon];
  const p = markers.get(id)?.getLatLng();
  return p ? [p.lat, p.lng] : null;
}
function drawOfficers(list) {
  const now = new Set(list.map((o) => o.officer_id));
  updateOfficers(list, [...markers.keys()].filter((id) => !now.has(id)));
}

// Citizens only as counts per zip, at the zip's centroid (never a citizen's position).
const zipMarkers = new Map();
function updateCitizens(zips) {
  for (const z of zips) {
    const old = zipMarkers.get(z.zip);
    if (old) { citizenLayer.removeLayer(old); zipMarkers.delete(z.zip); }
    if (!z.citizens) continue;
    const m = L.marker([z.lat, z.lon], {
      icon: L.divIcon({ html: `<div class="citizen-count" data-zip="${escapeHtml(z.zip)}" data-count="${z.citizens}">${z.citizens}</div>`, className: "", iconSize: [22, 22] }),
      title: `${z.citizens} citizen(s) in ${z.zip}`, interactive: false,
    }).addTo(citizenLayer);
    zipMarkers.set(z.zip, m);
  }
}
function drawCitizens(zips) {
  const now = new Set(zips.map((z) => z.zip));
  const gone = [...zipMarkers.keys()].filter((z) => !now.has(z)).map((zip) => ({ zip, citizens: 0 }));
  updateCitizens([...zips, ...gone]);
}

async function showRegion(zip) {
  const box = $("#region");
  try {
    const r = await api(`/admin/v1/regions/${encodeURIComponent(zip)}`);
    const rows = r.officers.map((o) => `<tr><td>${escapeHtml(o.officer_id)}</td><td>${escapeHtml(o.display_name)}</td><td>${escapeHtml(o.window_ends_at)}</td><td><button data-end="${escapeHtml(o.officer_id)}">End session</button></td></tr>`).join("");
    box.innerHTML = `<p>Zip ${escapeHtml(r.zip)}: <span id="region-citizens">${r.citizens}</span> citizens watching</p><table><thead><tr><th>Officer</th><th>Name</th><th>Window ends</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
  } catch (e) { box.textContent = e.message; }
}
$("#region-form").addEventListener("submit", (e) => { e.preventDefault(); showRegion($("#zip").value); });
$("#region").addEventListener("click", async (e) => {
  const id = e.target.dataset?.end;
  if (!id || !confirm(`End the session of ${id}?`)) return;
  try { await api(`/admin/v1/sessions/${encodeURIComponent(id)}`, { method: "DELETE" }); showRegion($("#zip").value); }
  catch (err) { $("#region").prepend(err.message); }
});

// Imports: the file as it is, typed by its extension; the accepted count and every
// rejected row, or the server's refusal (400, 413) as it words it.
$("#import-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("#import-file").files[0], box = $("#import-result");
  if (!file) return;
  const type = file.name.toLowerCase().endsWith(".json") ? "application/json" : "text/csv";
  try {
    const r = await api(`/admin/v1/import/${encodeURIComponent($("#kind").value)}`, { method: "POST", headers: { "Content-Type": type }, body: file });
    const rows = r.rejected.map((x) => `<tr><td>${x.row}</td><td>${escapeHtml(x.error)}</td></tr>`).join("");
    const total = r.rejected_count ?? r.rejected.length;
    const listed = total > r.rejected.length ? ` (the first ${r.rejected.length} listed)` : "";
    box.innerHTML = `<p><span id="import-accepted">${r.accepted}</span> accepted, <span id="import-rejected-count">${total}</span> rejected${listed}</p>` +
      (rows ? `<table id="import-rejected"><thead><tr><th>Row</th><th>Error</th></tr></thead><tbody>${rows}</tbody></table>` : "");
  } catch (err) { box.textContent = err.message; }
});

// Reports: a table and a chart of the rows; the CSV is fetched with the token and saved.
function reportQuery(format) {
  const q = new URLSearchParams({ group_by: $("#report-group").value });
  if ($("#report-from").value) q.set("from", $("#report-from").value);
  if ($("#report-to").value) q.set("to", $("#report-to").value);
  if (format) q.set("format", format);
  return `/admin/v1/reports/connections?${q}`;
}
let reportChart = null;
$("#report-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const r = await api(reportQuery());
    // Trophies are counted as awarded; everything else as connections and points.
    const trophies = r.group_by === "trophy";
    const cols = trophies ? [["Awarded", (x) => x.awarded]] : [["Connections", (x) => x.connections], ["Points", (x) => x.points]];
    $("#report").innerHTML = `<table id="report-table"><thead><tr><th>${escapeHtml($("#report-group").value)}</th>${cols.map(([h]) => `<th>${h}</th>`).join("")}</tr></thead><tbody>` +
      r.rows.map((x) => `<tr><td>${escapeHtml(x.key)}</td>${cols.map(([, f]) => `<td>${f(x)}</td>`).join("")}</tr>`).join("") + "</tbody></table>";
    if (reportChart) reportChart.destroy();
    const xs = r.rows.map((_, i) => i);
    reportChart = new uPlot({ width: Math.max(260, $("#report").clientWidth - 8), height: 160, scales: { x: { time: false } },
      axes: [{ values: (u, v) => v.map((i) => r.rows[i]?.key ?? "") }, {}],
      series: [{}, { label: cols[0][0].toLowerCase(), stroke: "#0b3d91", paths: uPlot.paths.bars() }] }, [xs, r.rows.map(cols[0][1])], $("#report-chart"));
  } catch (err) { $("#report").textContent = err.message; }
});
$("#report-csv").addEventListener("click", async () => {
  try {
    const csv = await api(reportQuery("csv"));
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    a.download = "connections.csv"; a.id = "report-download";
    document.body.append(a); a.click();
  } catch (err) { $("#report").textContent = err.message; }
});

// Partner webhooks: the list, adding one, removing one (confirmed), one's deliveries with
// their attempts, and putting its given-up deliveries back in the queue.
async function showWebhooks() {
  try {
    const r = await api("/admin/v1/webhooks");
    $("#webhooks tbody").innerHTML = r.webhooks.map((w) => `<tr data-webhook-id="${escapeHtml(w.webhook_id)}"><td>${escapeHtml(w.webhook_id)}</td><td>${escapeHtml(w.url)}</td><td>${escapeHtml(w.events.join(", "))}</td>` +
      `<td><button data-deliveries="${escapeHtml(w.webhook_id)}">Deliveries</button> <button data-requeue="${escapeHtml(w.webhook_id)}">Requeue given-up</button> <button data-remove="${escapeHtml(w.webhook_id)}">Remove</button></td></tr>`).join("");
  } catch (e) { $("#webhook-error").textContent = e.message; }
}
async function showDeliveries(id) {
  const box = $("#deliveries");
  try {
    const r = await api(`/admin/v1/webhooks/${encodeURIComponent(id)}/deliveries?limit=50`);
    const last = (d) => d.attempt_log[0] ? `${d.attempt_log[0].status ?? "–"} in ${d.attempt_log[0].latency_ms} ms${d.attempt_log[0].error ? ": " + escapeHtml(d.attempt_log[0].error) : ""}` : "";
    box.innerHTML = `<p>Deliveries of ${escapeHtml(id)}</p><table id="deliveries-table"><thead><tr><th>Event</th><th>Type</th><th>Status</th><th>Attempts</th><th>Last attempt</th><th>Next</th></tr></thead><tbody>` +
      r.deliveries.map((d) => `<tr><td>${escapeHtml(d.event_id)}</td><td>${escapeHtml(d.type)}</td><td class="delivery-status">${escapeHtml(d.status)}</td><td>${d.attempts}</td><td>${last(d)}</td><td>${escapeHtml(d.next_attempt_at ?? "")}</td></tr>`).join("") + "</tbody></table>";
  } catch (e) { box.textContent = e.message; }
}
$("#webhook-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const events = [...document.querySelectorAll("#webhook-form input[name=events]:checked")].map((x) => x.value);
  try {
    await api("/admin/v1/webhooks", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ url: $("#webhook-url").value, events, secret: $("#webhook-secret").value }) });
    $("#webhook-error").textContent = ""; $("#webhook-secret").value = "";
    showWebhooks();
  } catch (err) { $("#webhook-error").textContent = err.message; }
});
$("#webhooks").addEventListener("click", async (e) => {
  const { deliveries, requeue, remove } = e.target.dataset ?? {};
  if (deliveries) return showDeliveries(deliveries);
  if (requeue) {
    try {
      const r = await api(`/admin/v1/webhooks/${encodeURIComponent(requeue)}/requeue`, { method: "POST" });
      $("#webhook-note").textContent = `${r.requeued} given-up deliveries of ${requeue} requeued`;
      return showDeliveries(requeue);
    } catch (err) { $("#webhook-error").textContent = err.message; return; }
  }
  if (!remove || !confirm(`Remove webhook ${remove} and its deliveries?`)) return;
  try { await api(`/admin/v1/webhooks/${encodeURIComponent(remove)}`, { method: "DELETE" }); $("#deliveries").textContent = ""; showWebhooks(); }
  catch (err) { $("#webhook-error").textContent = err.message; }
});

function drawNodes(nodes) {
  $("#nodes tbody").innerHTML = nodes.map((n) => `<tr><td>${escapeHtml(n.node_id)}</td><td>${escapeHtml(n.advertise_url)}</td><td>${n.sessions}</td><td>${n.regions_owned}</td><td>${n.units_moving}</td></tr>`).join("");
}

function drawStats(stats) {
  for (const k of COUNTERS) $(`#${k.replaceAll("_", "-")}`).textContent = stats[k];
  drawNodes(stats.nodes);
  pushSample(stats);
}

// What the page measured of itself, for whoever inspects it (docs/performance.md): when
// the first data was drawn, and how long applying each live event took.
window.heyblueLive = { firstDataMs: null, events: 0, applyMs: [] };
function onLive(name, data) {
  const t0 = performance.now(), ev = JSON.parse(data);
  if (name === "snapshot") { drawOfficers(ev.officers); drawCitizens(ev.citizens); }
  else if (name === "delta") { updateOfficers(ev.upsert, ev.gone); updateCitizens(ev.citizens); }
  else return;
  drawStats(ev.stats);
  $("#map-truncated").hidden = !ev.truncated;
  const m = window.heyblueLive;
  m.events++; m.applyMs.push(performance.now() - t0);
  if (m.applyMs.length > 600) m.applyMs.shift();
  if (m.firstDataMs === null) m.firstDataMs = performance.now();
  document.body.dataset.ready = "1";
}

// The live feed: Server-Sent Events read with fetch (EventSource cannot send the Bearer
// header). The whole map first, then what changed; reconnected with backoff.
let feed = null;
async function follow() {
  const mine = new AbortController();
  feed?.abort(); feed = mine;
  let wait = RETRY_MS[0];
  while (feed === mine) {
    try {
      const r = await fetch("/admin/v1/live", { headers: { Authorization: `Bearer ${auth.token}` }, signal: mine.signal });
      if (!r.ok) {
        let msg = `${r.status}`;
        try { const b = await r.json(); msg = `${r.status} ${b.error.code}: ${b.error.message}`; } catch (_) {}
        if (r.status === 401 || r.status === 403) return signOut(msg);
        throw new Error(msg);
      }
      $("#live-status").textContent = "live";
      wait = RETRY_MS[0];
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end); buf = buf.slice(end + 2);
          let name = "", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trimStart();
          }
          if (name) onLive(name, data);
        }
      }
      throw new Error("the server closed the live feed");
    } catch (e) {
      if (feed !== mine) return;
      $("#live-status").textContent = `reconnecting in ${wait / 1000} s (${e.message})`;
    }
    await new Promise((res) => setTimeout(res, wait));
    wait = Math.min(wait * 2, RETRY_MS[1]);
  }
}

async function signIn(token) {
  auth.token = token;
  try { await api("/admin/v1/stats"); }
  catch (e) { return signOut(e.message); }
  $("#signin-error").textContent = "";
  $("#app").hidden = false; $("#signout").hidden = false; $("#token").value = "";
  for (const e of $("#signin").querySelectorAll("label, input, button[type=submit]")) e.hidden = true;
  if (!map) { makeCharts(); await makeMap(); }
  showWebhooks();
  follow();
}
function signOut(message) {
  auth.token = null; feed?.abort(); feed = null;
  $("#app").hidden = true; $("#signout").hidden = true;
  for (const e of $("#signin").querySelectorAll("label, input, button[type=submit]")) e.hidden = false;
  $("#signin-error").textContent = message || "";
}
$("#signin").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value.trim()); });
$("#signout").addEventListener("click", () => signOut(""));
if (auth.token) signIn(auth.token);
