// The near-miss explorer's page: plain JavaScript and SVG over the JSON API of xai_jax/methods/nma/server.py.
// Only what is expanded is drawn (a collapsed subtree is one triangle), so 1,000 or 21,841 labels stay responsive.
"use strict";

// NAME_ROOM: between the lowest merge and the leaves, for the names of the lowest concepts.
const ROW = 22, WIDTH = 520, LEFT = 30, TOP = 24, NAME_ROOM = 150, LABEL_ROOM = 280, MAX_ROWS = 2000;
const $ = (id) => document.getElementById(id);
const S = {tree: null, C: 0, root: 0, parent: null, expanded: new Set(), zoom: 1, selected: null,
           path: new Set(), labelCache: new Map(), flash: null, scale: "order", rank: null};

// --- the API ---------------------------------------------------------------------------------------------------

async function api(method, url, body, type) {
  const init = {method, headers: {}};
  if (body !== undefined) {
    init.body = type ? body : JSON.stringify(body);
    init.headers["Content-Type"] = type || "application/json";
  }
  const response = await fetch(url, init);
  const value = await response.json();
  if (!response.ok) throw new Error(value.error || response.statusText);
  return value;
}

function status(text) { $("status").textContent = text || ""; }

// --- the tree --------------------------------------------------------------------------------------------------

const isLeaf = (n) => n < S.C;
const kids = (n) => S.tree.children[n - S.C];
const height = (n) => (isLeaf(n) ? 0 : S.tree.heights[n - S.C]);
const size = (n) => (isLeaf(n) ? 1 : S.tree.sizes[n - S.C]);
const nameOf = (n) => (isLeaf(n) ? S.tree.labels[n] : S.tree.names[n - S.C]);

async function load() {
  const tree = await api("GET", "/api/tree");
  S.tree = tree;
  S.C = tree.labels.length;
  S.root = 2 * S.C - 2;
  S.parent = new Int32Array(2 * S.C - 1).fill(-1);
  tree.children.forEach(([a, b], i) => { S.parent[a] = S.C + i; S.parent[b] = S.C + i; });
  S.hmax = tree.heights.reduce((a, b) => Math.max(a, b), -Infinity);
  S.hmin = tree.heights.reduce((a, b) => Math.min(a, b), Infinity);
  // Merge order: internal node i's rank among the merge heights (SciPy's rows are already in that order).
  const order = tree.heights.map((h, i) => [h, i]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  S.rank = new Float64Array(S.C - 1);
  order.forEach(([, i], k) => { S.rank[i] = (k + 1) / order.length; });
  collapseTop(40);
  showScore(tree.score, tree.undo);
  $("query-note").textContent = tree.model ? `Queries are classified by ${tree.model}.` +
      (tree.data ? ` The data holds ${tree.data_size} images.` : " No --data: upload an image.")
    : "No model: start the explorer with --model and --weights to query images.";
  $("data-index").max = Math.max(0, tree.data_size - 1);
  for (const id of ["upload", "data-index", "query-data", "query-random"]) $(id).disabled = !tree.model;
  if (!tree.data) for (const id of ["data-index", "query-data", "query-random"]) $(id).disabled = true;
  render();
  status(`${S.C} labels`);
}

// Expands the largest visible subtrees first until about `rows` rows show (everything, for small trees).
function collapseTop(rows) {
  S.expanded = new Set();
  expandUnder(S.root, rows);
}

function expandUnder(node, rows) {
  if (isLeaf(node)) return;
  let visible = countRows();
  const queue = [node];
  while (queue.length && visible < rows) {
    queue.sort((a, b) => size(b) - size(a));
    const n = queue.shift();
    if (isLeaf(n)) continue;
    if (!S.expanded.has(n)) { S.expanded.add(n); visible += 1; }
    queue.push(...kids(n));
  }
}

function countRows() {
  let rows = 0;
  const stack = [S.root];
  while (stack.length) {
    const n = stack.pop();
    if (isLeaf(n) || !S.expanded.has(n)) rows += 1; else stack.push(...kids(n));
  }
  return rows;
}

function reveal(node) {
  for (let n = S.parent[node]; n >= 0; n = S.parent[n]) S.expanded.add(n);
}

// The visible part: tips (leaves and collapsed nodes) in SciPy's leaf order, each internal node at the middle.
function layout() {
  const rowH = ROW * S.zoom, y = new Map(), tips = [], order = [];
  const stack = [[S.root, false]];
  while (stack.length) {
    const [n, done] = stack.pop();
    if (isLeaf(n) || !S.expanded.has(n)) { y.set(n, TOP + tips.length * rowH); tips.push(n); continue; }
    if (done) { const [a, b] = kids(n); y.set(n, (y.get(a) + y.get(b)) / 2); order.push(n); continue; }
    const [a, b] = kids(n);
    stack.push([n, true], [b, false], [a, false]);
  }
  return {y, tips, order, rowH};
}

// x of an internal node: by merge order (evenly spread, the default: near-miss heights crowd just below 1) or
// by merge height (the range the merges span, as the dendrogram figure draws it).
function xOf(n) {
  const width = WIDTH * S.zoom;
  if (S.scale === "order") return LEFT + (1 - S.rank[n - S.C]) * width;
  const low = S.hmin - 0.08 * (S.hmax - S.hmin || 1e-3);
  return LEFT + ((S.hmax - height(n)) / (S.hmax - low)) * width;
}

function xOfHeight(h) {
  const low = S.hmin - 0.08 * (S.hmax - S.hmin || 1e-3);
  return LEFT + ((S.hmax - h) / (S.hmax - low)) * WIDTH * S.zoom;
}

const esc = (text) => String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
                                                               '"': "&quot;", "'": "&#39;"}[c]));

function render() {
  const {y, tips, order, rowH} = layout();
  const xLeaf = LEFT + WIDTH * S.zoom + NAME_ROOM, parts = [];
  const xNode = (n) => (isLeaf(n) ? xLeaf : xOf(n));
  const on = (n) => (S.path.has(n) ? " on-path" : "");
  if (S.scale === "height") {
    for (const tick of [S.hmax, (S.hmax + S.hmin) / 2, S.hmin]) {
      const x = xOfHeight(tick);
      parts.push(`<line class="axis" x1="${x}" x2="${x}" y1="12" y2="${TOP + tips.length * rowH}"/>`,
                 `<text class="axis" x="${x - 14}" y="10">${tick.toFixed(4)}</text>`);
    }
  } else {
    parts.push(`<text class="axis" x="${LEFT}" y="10">root</text>`,
               `<text class="axis" x="${LEFT + WIDTH * S.zoom - 60}" y="10">first merges</text>`);
  }
  for (const n of order) {
    const [a, b] = kids(n), x = xNode(n);
    for (const c of [a, b]) {
      parts.push(`<path class="link${S.path.has(c) ? " on-path" : ""}" d="M${x},${y.get(n)}V${y.get(c)}H${xNode(c)}"/>`);
    }
  }
  for (const n of order) {
    const x = xNode(n), cy = y.get(n), name = nameOf(n), over = S.tree.overridden[n - S.C];
    const sel = S.selected === n ? " selected" : "";
    parts.push(`<circle class="node${on(n)}${sel}" data-node="${n}" cx="${x}" cy="${cy}" r="${3.5 * Math.min(S.zoom, 1.5)}"/>`,
               `<rect class="toggle" data-toggle="${n}" x="${x - 16}" y="${cy - 5}" width="10" height="10"/>`,
               `<text class="toggle" x="${x - 11}" y="${cy + 3.5}">&minus;</text>`,
               `<text class="concept${name ? "" : " unnamed"}${over ? " overridden" : ""}${on(n)}${sel}" ` +
               `data-node="${n}" x="${x + 4}" y="${cy - 4}">${esc(name || "unnamed")} · ${height(n).toFixed(4)}</text>`);
  }
  for (const n of tips) {
    const cy = y.get(n), sel = S.selected === n ? " selected" : "", flash = S.flash === n ? " flash" : "";
    if (isLeaf(n)) {
      parts.push(`<text class="leaf${on(n)}${sel}${flash}" data-node="${n}" data-label="${n}" x="${xLeaf + 6}" ` +
                 `y="${cy + 4}">${esc(S.tree.labels[n])}</text>`);
      continue;
    }
    const x = xNode(n), half = Math.max(3, rowH / 3), name = nameOf(n);
    parts.push(`<polygon class="collapsed${on(n)}" data-toggle="${n}" points="${x},${cy} ${xLeaf},${cy - half} ${xLeaf},${cy + half}"/>`,
               `<rect class="toggle" data-toggle="${n}" x="${x - 16}" y="${cy - 5}" width="10" height="10"/>`,
               `<text class="toggle" x="${x - 11}" y="${cy + 3.5}">+</text>`,
               `<text class="tip concept${name ? "" : " unnamed"}${on(n)}${sel}${flash}" data-node="${n}" ` +
               `x="${xLeaf + 6}" y="${cy + 4}">${esc(name || "unnamed")} (${size(n)} labels) · ${height(n).toFixed(4)}</text>`);
  }
  const svg = $("tree");
  svg.setAttribute("width", xLeaf + LABEL_ROOM);
  svg.setAttribute("height", TOP + tips.length * rowH + 10);
  svg.innerHTML = parts.join("");
  svg.dataset.rows = String(tips.length);
}

function scrollToNode(node) {
  const element = $("tree").querySelector(`text[data-node="${node}"]`);
  if (element) element.scrollIntoView({block: "center", inline: "nearest"});
}

// --- naming ----------------------------------------------------------------------------------------------------

function showScore(score, undo) {
  $("score").textContent = score ? `φ(M) = ${score.phi_M === null ? "undefined" : score.phi_M.toFixed(3)} vs ` +
                                   `${score.reference}` : "";
  $("undo").disabled = !undo;
  $("undo").textContent = undo ? `undo (${undo})` : "undo";
}

async function select(node) {
  S.selected = node;
  render();
  showTab("node");
  const panel = $("node-panel");
  panel.innerHTML = "<p class='hint'>loading…</p>";
  const info = await api("GET", `/api/nodes/${node}`);
  if (S.selected !== node) return;
  const members = info.members.map((m) => `<span data-node="${m.index}">${esc(m.name)}</span>`).join("");
  const more = info.size > info.members.length ? ` and ${info.size - info.members.length} more` : "";
  const parts = [];
  if (info.leaf) {
    parts.push(`<h2 id="node-name">${esc(info.name)}</h2><p class="meta">label ${node} · ` +
               `${info.label.counted} images counted</p>`);
    const label = info.label;
    if (label.images.length) {
      parts.push("<h3>Images (click to query)</h3><div class='images'>" + label.images.map(
        (j) => `<img src="/api/images/${j}" alt="image ${j}" data-image="${j}" title="image ${j}">`).join("") + "</div>");
    }
    parts.push("<h3>Most frequent near misses</h3>" + nearList(label.near_misses, "events"));
    const explained = await api("GET", `/api/explain/${node}`);
    parts.push(`<h3>A prediction of ${esc(info.name)}, explained</h3><p class="explanation">${esc(explained.explanation)}</p>`);
  } else {
    const badge = info.overridden ? ' <span class="badge">renamed</span>' : "";
    parts.push(`<h2><span id="node-name">${esc(info.name || "unnamed")}</span>${badge}</h2>`,
               `<p class="meta">merge height ${info.height.toFixed(4)} · ${info.size} labels · ` +
               `WordNet: ${esc(info.wordnet || "no name")}</p>`,
               `<form id="rename"><input id="name-input" maxlength="64" value="${esc(info.name || "")}" ` +
               `aria-label="name"> <button id="save-name" type="submit">rename</button> ` +
               `<button id="restore-name" type="button" ${info.overridden ? "" : "disabled"}>WordNet's name</button>` +
               `</form><p id="name-error" class="error"></p>`,
               `<button id="toggle-node" type="button">${S.expanded.has(node) ? "collapse" : "expand"} this subtree</button>`);
    if (info.candidates.length) {
      parts.push("<h3>WordNet's candidates</h3><ul class='candidates'>" + info.candidates.map(
        (c) => `<li><button type="button" data-candidate="${esc(c.name)}">${esc(c.name)}</button> ` +
               `<small>${esc(c.synset)}: ${esc(c.gloss)}</small></li>`).join("") + "</ul>");
    }
  }
  parts.push(`<h3>Members</h3><div class="members">${members}${more}</div>`);
  panel.innerHTML = parts.join("");
  if (!info.leaf) {
    $("rename").addEventListener("submit", (e) => { e.preventDefault(); rename(node, $("name-input").value); });
    $("restore-name").addEventListener("click", () => change(api("DELETE", `/api/nodes/${node}/name`)));
    $("toggle-node").addEventListener("click", () => { toggle(node); select(node); });
    panel.querySelectorAll("[data-candidate]").forEach((b) => b.addEventListener("click", () => {
      $("name-input").value = b.dataset.candidate;
      $("name-input").focus();
    }));
  }
  panel.querySelectorAll("[data-image]").forEach((img) => img.addEventListener("click", () => {
    $("data-index").value = img.dataset.image;
    queryData(Number(img.dataset.image));
  }));
  panel.querySelectorAll(".members [data-node]").forEach((m) => m.addEventListener("click", () => {
    const n = Number(m.dataset.node);
    reveal(n);
    select(n).then(() => scrollToNode(n));
  }));
}

// Probabilities: four decimals, or three significant digits below 0.001 (near misses can be tiny).
const prob = (p) => (p >= 1e-3 || p === 0 ? p.toFixed(4) : p.toExponential(2));

function nearList(items, by) {
  if (!items.length) return "<p class='hint'>none</p>";
  const top = Math.max(...items.map((m) => (by === "events" ? m.events : m.p)));
  return "<ul class='near'>" + items.map((m) => {
    const value = by === "events" ? m.events : m.p;
    const text = by === "events" ? `${m.events}×, mean p ${prob(m.p)}` : `p = ${prob(m.p)}`;
    return `<li><span class="label">${esc(m.name)}</span><span class="barbox"><span class="bar" ` +
           `style="width:${Math.max(2, 120 * value / top)}px"></span></span><span>${text}</span></li>`;
  }).join("") + "</ul>";
}

async function rename(node, name) {
  await change(api("PUT", `/api/nodes/${node}/name`, {name}));
}

// Applies the answer of a rename, a restore or an undo to the page.
async function change(request) {
  try {
    const done = await request;
    S.tree.names[done.node - S.C] = done.name;
    S.tree.overridden[done.node - S.C] = done.overridden;
    showScore(done.score, done.undo);
    status(`saved: ${done.name || "unnamed"}`);
    reveal(done.node);
    await select(done.node);
  } catch (err) {
    if ($("name-error")) $("name-error").textContent = err.message; else status(err.message);
  }
}

function toggle(node) {
  if (S.expanded.has(node)) S.expanded.delete(node); else { S.expanded.add(node); expandUnder(node, countRows() + 20); }
  render();
}

// --- search ----------------------------------------------------------------------------------------------------

function search(text) {
  const list = $("matches"), q = text.trim().toLowerCase();
  if (!q) { list.hidden = true; return; }
  const found = [];
  for (let i = 0; i < S.C && found.length < 20; i++) {
    if (S.tree.labels[i].toLowerCase().includes(q)) found.push([i, S.tree.labels[i], "label"]);
  }
  for (let i = 0; i < S.C - 1 && found.length < 30; i++) {
    const name = S.tree.names[i];
    if (name && name.toLowerCase().includes(q)) found.push([S.C + i, name, `concept of ${S.tree.sizes[i]}`]);
  }
  list.innerHTML = found.length ? found.map(([n, name, what], k) =>
    `<li data-node="${n}" class="${k ? "" : "active"}">${esc(name)} <small>${what}</small></li>`).join("")
    : "<li><small>no match</small></li>";
  list.hidden = false;
  list.querySelectorAll("[data-node]").forEach((li) => li.addEventListener("mousedown", () => go(Number(li.dataset.node))));
}

function go(node) {
  $("matches").hidden = true;
  reveal(node);
  S.flash = node;
  select(node).then(() => scrollToNode(node));
}

// --- hovering a label ------------------------------------------------------------------------------------------

async function hover(event, label) {
  const tip = $("tooltip");
  let info = S.labelCache.get(label);
  if (!info) { info = await api("GET", `/api/labels/${label}`); S.labelCache.set(label, info); }
  if (S.hovered !== label) return;
  const images = info.images.map((j) => `<img src="/api/images/${j}" alt="">`).join("");
  const near = info.near_misses.map((m) => `${esc(m.name)} (${m.events}×)`).join(", ") || "none";
  tip.innerHTML = `<b>${esc(info.name)}</b> · ${info.counted} counted<br>${images}` +
                  `<div>near misses: ${near}</div>`;
  tip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - 370)}px`;
  tip.style.top = `${event.clientY + 12}px`;
  tip.hidden = false;
}

// --- querying --------------------------------------------------------------------------------------------------

async function showQuery(request, preview) {
  showTab("query");
  const out = $("query-result");
  out.innerHTML = "<p class='hint'>classifying…</p>";
  try {
    const q = await request;
    const truth = q.true_name !== undefined ? ` · true label ${esc(q.true_name)}` : "";
    out.innerHTML = (preview ? `<img id="query-preview" src="${preview}" alt="query">` : "") +
      `<h3 id="prediction">${esc(q.name)} (p = ${q.p.toFixed(3)})${truth}</h3>` +
      "<h3>Near misses</h3>" + nearList(q.near_misses, "p") +
      `<h3>Explanation</h3><p id="explanation">${esc(q.explanation)}</p>`;
    S.path = new Set(q.path);
    reveal(q.label);
    S.flash = q.label;
    render();
    scrollToNode(q.label);
  } catch (err) {
    out.innerHTML = `<p class="error" id="query-error">${esc(err.message)}</p>`;
  }
}

function queryData(index) {
  showQuery(api("POST", "/api/query", {data_index: index}), `/api/images/${index}`);
}

// --- wiring ----------------------------------------------------------------------------------------------------

function showTab(which) {
  $("node-panel").hidden = which !== "node";
  $("query-panel").hidden = which !== "query";
  $("tab-node").classList.toggle("active", which === "node");
  $("tab-query").classList.toggle("active", which === "query");
}

function setZoom(factor) {
  S.zoom = Math.min(4, Math.max(0.25, S.zoom * factor));
  render();
}

function wire() {
  const svg = $("tree");
  svg.addEventListener("click", (e) => {
    const t = e.target;
    if (t.dataset.toggle !== undefined) toggle(Number(t.dataset.toggle));
    else if (t.dataset.node !== undefined) { S.flash = null; select(Number(t.dataset.node)); }
  });
  svg.addEventListener("mouseover", (e) => {
    const label = e.target.dataset.label;
    if (label === undefined) return;
    S.hovered = Number(label);
    hover(e, Number(label)).catch(() => {});
  });
  svg.addEventListener("mouseout", (e) => {
    if (e.target.dataset.label !== undefined) { S.hovered = null; $("tooltip").hidden = true; }
  });
  $("tree-pane").addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    setZoom(e.deltaY < 0 ? 1.1 : 1 / 1.1);
  }, {passive: false});
  $("scale").addEventListener("change", () => { S.scale = $("scale").value; render(); });
  $("zoom-in").addEventListener("click", () => setZoom(1.25));
  $("zoom-out").addEventListener("click", () => setZoom(0.8));
  $("expand").addEventListener("click", () => {
    expandUnder(S.selected !== null && !isLeaf(S.selected) ? S.selected : S.root, MAX_ROWS);
    render();
  });
  $("collapse").addEventListener("click", () => { collapseTop(40); render(); });
  $("undo").addEventListener("click", () => change(api("POST", "/api/undo")));
  $("search").addEventListener("input", (e) => search(e.target.value));
  $("search").addEventListener("keydown", (e) => {
    const first = $("matches").querySelector("li.active");
    if (e.key === "Enter" && first) go(Number(first.dataset.node));
    if (e.key === "Escape") $("matches").hidden = true;
  });
  $("search").addEventListener("blur", () => setTimeout(() => { $("matches").hidden = true; }, 150));
  $("tab-node").addEventListener("click", () => showTab("node"));
  $("tab-query").addEventListener("click", () => showTab("query"));
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    showQuery(api("POST", "/api/query", file, file.type || "application/octet-stream"), URL.createObjectURL(file));
  });
  $("query-data").addEventListener("click", () => queryData(Number($("data-index").value)));
  $("query-random").addEventListener("click", () => {
    const index = Math.floor(Math.random() * S.tree.data_size);
    $("data-index").value = index;
    queryData(index);
  });
}

wire();
load().then(() => { document.body.dataset.ready = "1"; })
      .catch((err) => { status(err.message); document.body.dataset.ready = "error"; });
