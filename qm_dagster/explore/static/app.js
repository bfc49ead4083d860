// qm explore: the grid, its filters and the detail view. Plain DOM; state lives in the URL hash.
"use strict";

const PAGE = 60;
const COLOURS = ["#ff7043", "#42a5f5", "#ab47bc", "#ffca28", "#26c6da", "#ec407a"];
const $ = (id) => document.getElementById(id);
let meta = null;
let state = {
  version: "", level: "image", sort: "", order: "asc", ranges: [], classes: [],
  model: "", slice: "", flags: [], offset: 0,
};
let rows = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4).replace(/\.?0+$/, "");
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

function query() {
  return {
    level: state.level, sort: state.sort, order: state.order, ranges: state.ranges,
    classes: state.classes, model: state.level === "prediction" ? state.model : "",
    slice: state.slice, flags: state.flags, offset: state.offset, limit: PAGE,
  };
}

function saveHash() { history.replaceState(null, "", "#" + encodeURIComponent(JSON.stringify(state))); }

function loadHash() {
  if (location.hash.length < 2) return;
  try { Object.assign(state, JSON.parse(decodeURIComponent(location.hash.slice(1)))); } catch (e) { /* a hand-edited hash: start fresh */ }
}

function levelMetrics() { return Object.keys(meta.levels[state.level]?.metrics || {}); }

function fillSelect(select, values, keep, blank) {
  select.replaceChildren(...(blank ? [el("option", { value: "", text: blank })] : []),
    ...values.map((v) => el("option", { value: v, text: v })));
  select.value = values.includes(keep) ? keep : (blank ? "" : values[0] || "");
}

function renderControls() {
  // a level without rows (objects of an unlabeled version) gets no tab
  const levels = Object.keys(meta.levels).filter((l) => meta.levels[l].rows > 0 || l === state.level);
  $("levels").replaceChildren(...levels.map((level) => el("button", {
    type: "button", class: level === state.level ? "active" : "", "data-level": level,
    text: `${level}s (${meta.levels[level].rows})`,
    onclick: () => { Object.assign(state, { level, sort: "", ranges: [], offset: 0 }); renderControls(); refresh(); },
  })));
  const metrics = levelMetrics();
  fillSelect($("sort"), metrics, state.sort, "(no sort: table order)");
  state.sort = $("sort").value;
  fillSelect($("range-column"), metrics, $("range-column").value);
  $("order").textContent = state.order === "asc" ? "ascending" : "descending";
  $("classes").replaceChildren(...meta.classes.map((c) => el("label", {},
    el("input", { type: "checkbox", value: c, ...(state.classes.includes(c) ? { checked: "" } : {}),
      onchange: (e) => { toggle(state.classes, c, e.target.checked); state.offset = 0; refresh(); } }),
    " " + c)));
  $("class-section").hidden = meta.classes.length === 0;
  fillSelect($("model"), meta.models, state.model, "all models");
  $("model-section").hidden = state.level !== "prediction" || meta.models.length === 0;
  fillSelect($("slice"), meta.slices.map((s) => s.name), state.slice, "none");
  $("slice-section").hidden = meta.slices.length === 0;
  $("flags").replaceChildren(...meta.flags.map((f) => el("label", {},
    el("input", { type: "checkbox", value: f, ...(state.flags.includes(f) ? { checked: "" } : {}),
      onchange: (e) => { toggle(state.flags, f, e.target.checked); state.offset = 0; refresh(); } }),
    " " + f.replace("_", " "))));
  renderRanges();
}

function toggle(list, value, on) {
  const i = list.indexOf(value);
  if (on && i < 0) list.push(value);
  if (!on && i >= 0) list.splice(i, 1);
}

function renderRanges() {
  $("ranges").replaceChildren(...state.ranges.map((r, i) => el("li", {},
    el("span", { text: `${fmt(r.min)} ≤ ${r.column} ≤ ${fmt(r.max)}` }),
    el("button", { type: "button", title: "remove", text: "×",
      onclick: () => { state.ranges.splice(i, 1); state.offset = 0; renderRanges(); refresh(); } }))));
}

let asked = 0;

async function refresh() {
  saveHash();
  showError(null);
  const mine = ++asked;
  try {
    const page = await api("/api/page", { version: state.version, query: query() });
    if (mine !== asked) return; // a later request was made: its answer is the one to show
    rows = page.rows;
    renderGrid(page);
  } catch (err) { if (mine === asked) showError(err); }
}

function thumbUrl(row) {
  const box = row.bbox_x === undefined || row.bbox_x === null ? ""
    : `&box=${[row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h].join(",")}`;
  return `/thumb?version=${encodeURIComponent(state.version)}&id=${encodeURIComponent(row.image_id)}${box}`;
}

function renderGrid(page) {
  const level = meta.levels[state.level];
  $("total").textContent = `${page.total} of ${level.rows} ${state.level}s`;
  $("total").dataset.total = page.total;
  $("grid").replaceChildren(...page.rows.map((row, i) => {
    const label = [row.category, row.model].filter((v) => v).join(" · ");
    return el("div", {
      class: "card", tabindex: "0", "data-id": String(row.image_id), "data-level": state.level,
      "data-sort": state.sort,
      "data-key": String(row.annotation_id ?? row.prediction_id ?? row.image_id),
      "data-value": row.value === null ? "" : String(row.value),
      onclick: () => openDetail(i), onkeydown: (e) => { if (e.key === "Enter") openDetail(i); },
    },
    el("div", { class: "pic" }, el("img", { loading: "lazy", alt: row.file_name || String(row.image_id), src: thumbUrl(row) })),
    el("div", { class: "cap" },
      el("div", { class: "value", text: state.sort ? `${state.sort.split("/").pop()} ${fmt(row.value)}` : "" }),
      el("div", { class: "name", title: row.file_name || "", text: (label ? label + " — " : "") + (row.file_name || row.image_id) })));
  }));
  const pages = Math.max(1, Math.ceil(page.total / PAGE));
  const at = Math.floor(state.offset / PAGE) + 1;
  $("page-of").textContent = `page ${at} of ${pages}`;
  $("prev").disabled = at <= 1;
  $("next").disabled = at >= pages;
}

let current = -1;

async function openDetail(i) {
  if (i < 0 || i >= rows.length) return;
  current = i;
  const row = rows[i];
  try {
    const d = await api(`/api/detail?version=${encodeURIComponent(state.version)}&id=${encodeURIComponent(row.image_id)}`);
    renderDetail(d, row);
    $("detail").hidden = false;
    $("detail-close").focus();
  } catch (err) { showError(err); }
}

function closeDetail() { $("detail").hidden = true; current = -1; }

function renderDetail(d, row) {
  const m = d.manifest || d.image;
  $("detail-title").textContent = `${m.file_name || d.image_id}  (${m.width}×${m.height}, id ${d.image_id})`;
  const models = [...new Set(d.predictions.map((p) => p.model))];
  const colour = Object.fromEntries(models.map((name, i) => [name, COLOURS[i % COLOURS.length]]));
  $("layers").replaceChildren(
    el("label", {}, el("input", { type: "checkbox", checked: "", "data-layer": "gt", onchange: layerToggle }),
      ` ground truth (${d.objects.length})`),
    ...models.map((name) => el("label", { style: `color:${colour[name]}` },
      el("input", { type: "checkbox", checked: "", "data-layer": name, onchange: layerToggle }),
      ` ${name} (${d.predictions.filter((p) => p.model === name).length})`)),
    el("label", {}, "min score ", el("input", { id: "min-score", type: "range", min: "0", max: "1", step: "0.05", value: "0", oninput: layerToggle })));
  const w = m.width, h = m.height;
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "xMidYMid meet" });
  svg.append(svgEl("image", { href: `/image?version=${encodeURIComponent(state.version)}&id=${encodeURIComponent(d.image_id)}`, x: 0, y: 0, width: w, height: h }));
  const size = Math.max(10, w / 60);
  const focus = row.annotation_id ?? row.prediction_id;
  for (const o of d.objects) drawBox(svg, o, "gt", "gt", "#2fbf4f", size, o.annotation_id === row.annotation_id && focus !== undefined);
  for (const p of d.predictions) drawBox(svg, p, "pred", p.model, colour[p.model], size, p.prediction_id === row.prediction_id && p.model === row.model);
  $("canvas").replaceChildren(svg);
  renderFacts(d);
}

function drawBox(svg, b, kind, layer, colour, size, focused) {
  if (b.bbox_x === null || b.bbox_x === undefined) return;
  const g = svgEl("g", { "data-layer": layer, "data-score": b.score ?? 1 });
  g.append(svgEl("rect", { class: kind, x: b.bbox_x, y: b.bbox_y, width: b.bbox_w, height: b.bbox_h,
    style: `stroke:${colour}` + (focused ? ";stroke-width:5" : "") }));
  const label = kind === "gt" ? b.category : `${b.category} ${fmt(b.score)}`;
  const text = svgEl("text", { x: b.bbox_x + 2, y: Math.max(size, b.bbox_y - 3), "font-size": size });
  text.textContent = label;
  g.append(text);
  svg.append(g);
}

function layerToggle() {
  const min = Number($("min-score")?.value || 0);
  const on = new Set([...document.querySelectorAll("#layers input[data-layer]")].filter((i) => i.checked).map((i) => i.dataset.layer));
  for (const g of document.querySelectorAll("#canvas g[data-layer]")) {
    g.style.display = on.has(g.dataset.layer) && Number(g.dataset.score) >= min ? "" : "none";
  }
}

function factsTable(entries, flagged) {
  return el("table", {}, ...entries.map(([k, v]) => el("tr", {},
    el("td", { class: flagged.has(k) ? "flag" : "", text: k + (flagged.has(k) ? " ⚑" : "") }),
    el("td", { class: "num", text: fmt(v) }))));
}

function listTable(items, columns) {
  return el("table", {}, el("tr", {}, ...columns.map((c) => el("th", { text: c }))),
    ...items.map((it) => el("tr", {}, ...columns.map((c) => el("td", {
      class: typeof it[c] === "number" ? "num" : "",
      text: typeof it[c] === "object" && it[c] !== null ? JSON.stringify(it[c]) : fmt(it[c]) })))));
}

function renderFacts(d) {
  const flagged = new Set(d.outliers.filter((o) => o.level === "image").map((o) => o.metric));
  // metric values, and a classification version's label and each model's predicted class
  const shown = (k) => k.includes("/") || k === "class" || k.startsWith("predicted@");
  const values = Object.entries(d.image).filter(([k, v]) => v !== null && shown(k));
  const parts = [];
  if (d.outliers.length) {
    parts.push(el("h3", { class: "flag", text: `Outlier flags (${d.outliers.length})` }),
      listTable(d.outliers, ["level", "metric", "scope", "key", "value", "lower", "upper", "severity"]));
  }
  if (d.label_errors.length) {
    parts.push(el("h3", { class: "flag", text: `Label-error candidates (${d.label_errors.length})` }),
      listTable(d.label_errors, ["kind", "score", "model", "annotation_id", "prediction_id", "category", "predicted_category", "iou", "evidence"]));
  }
  if (d.duplicates.length) {
    const more = d.duplicate_count - d.duplicates.length;
    parts.push(el("h3", { text: `Duplicate group (${d.duplicate_count} images${more > 0 ? `, the first ${d.duplicates.length} shown` : ""})` }),
      el("div", { class: "dups" }, ...d.duplicates.map((x) => el("img", {
        src: `/thumb?version=${encodeURIComponent(x.version)}&id=${encodeURIComponent(x.image_id)}`,
        title: `${x.kind}: ${x.version} / ${x.file_name}`, alt: `${x.version}/${x.file_name}` }))),
      listTable(d.duplicates, ["group", "kind", "version", "image_id", "file_name"]));
  }
  parts.push(el("h3", { text: `Metrics (${values.length})` }), factsTable(values, flagged));
  if (d.objects.length) parts.push(el("h3", { text: `Ground truth (${d.objects.length})` }), objectTable(d.objects, "annotation_id"));
  if (d.predictions.length) parts.push(el("h3", { text: `Predictions (${d.predictions.length})` }), objectTable(d.predictions, "prediction_id"));
  $("facts").replaceChildren(...parts);
}

function objectTable(items, key) {
  const metrics = [...new Set(items.flatMap((o) => Object.keys(o).filter((k) => k.includes("/") && o[k] !== null)))];
  const columns = [key, ...(key === "prediction_id" ? ["model", "score"] : []), "category", ...metrics];
  const table = listTable(items, columns);
  for (const th of table.querySelectorAll("th")) th.textContent = th.textContent.replace(/^(label|model)\//, "");
  return el("div", { style: "overflow-x:auto" }, table);
}

async function init() {
  loadHash();
  try {
    meta = await api(`/api/meta${state.version ? "?version=" + encodeURIComponent(state.version) : ""}`);
  } catch (err) { showError(err); return; }
  state.version = meta.version;
  if (!meta.levels[state.level]) state.level = "image";
  fillSelect($("version"), meta.versions, meta.version);
  renderControls();
  refresh();
}

$("version").addEventListener("change", (e) => {
  Object.assign(state, { version: e.target.value, offset: 0, ranges: [], classes: [], slice: "", flags: [] });
  location.hash = "";
  init();
});
$("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.offset = 0; refresh(); });
$("order").addEventListener("click", () => { state.order = state.order === "asc" ? "desc" : "asc"; state.offset = 0; renderControls(); refresh(); });
$("model").addEventListener("change", (e) => { state.model = e.target.value; state.offset = 0; refresh(); });
$("slice").addEventListener("change", (e) => { state.slice = e.target.value; state.offset = 0; refresh(); });
$("range-add").addEventListener("click", () => {
  const min = $("range-min").value, max = $("range-max").value;
  if (min === "" && max === "") return;
  state.ranges.push({ column: $("range-column").value, min: min === "" ? null : Number(min), max: max === "" ? null : Number(max) });
  state.offset = 0;
  renderRanges();
  refresh();
});
$("range-column").addEventListener("change", (e) => {
  const [lo, hi] = meta.levels[state.level].metrics[e.target.value] || [];
  $("range-min").placeholder = `min ${fmt(lo)}`;
  $("range-max").placeholder = `max ${fmt(hi)}`;
});
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); refresh(); });
$("next").addEventListener("click", () => { state.offset += PAGE; refresh(); });
$("slice-save").addEventListener("click", async () => {
  try {
    const s = await api("/api/slice", { version: state.version, query: query(), name: $("slice-name").value });
    $("slice-yaml").textContent = s.yaml;
    $("slice-commands").textContent = s.commands.join("\n");
    $("slice-left-out").textContent = s.left_out.length ? "Not part of the slice: " + s.left_out.join("; ") : "";
    $("slice-out").hidden = false;
  } catch (err) { showError(err); }
});
$("detail-close").addEventListener("click", closeDetail);
$("detail-prev").addEventListener("click", () => openDetail(current - 1));
$("detail-next").addEventListener("click", () => openDetail(current + 1));
$("detail").addEventListener("click", (e) => { if (e.target === $("detail")) closeDetail(); });
document.addEventListener("keydown", (e) => {
  if ($("detail").hidden) return;
  if (e.key === "Escape") closeDetail();
  if (e.key === "ArrowLeft") openDetail(current - 1);
  if (e.key === "ArrowRight") openDetail(current + 1);
});
init();
