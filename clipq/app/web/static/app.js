// clipq page: text / image search, ask, describe over the app's REST API. No build step.
// The query lives in the URL (q, tpl, k, f.<key>, like, img, ask, desc) so a result can be shared;
// an uploaded image cannot travel in a link and stays in this tab.
// With API keys on the app, the first 401 asks for the key; it is kept in this tab (sessionStorage),
// sent as "Authorization: Bearer", and thumbnails are fetched with it (an <img> cannot send a header).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "clipq.apiKey";
const state = { info: null, upload: null, subject: null, key: sessionStorage.getItem(KEY) };  // subject: {id, thumb} | {upload: dataURL}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function status(msg, isError = false) {
  const s = $("status");
  s.textContent = msg || "";
  s.className = isError ? "error" : "";
}

// -- API keys ----------------------------------------------------------------------------------
let asking = null;  // one question at a time, however many calls were refused

function askKey(wrong) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const form = $("key-form"), input = $("api-key");
    $("key-note").textContent = wrong ? "that key was refused: enter a valid API key" : "this server needs an API key";
    form.hidden = false;
    input.value = "";
    input.focus();
    form.onsubmit = (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      form.hidden = true;
      state.key = key;
      sessionStorage.setItem(KEY, key);
      asking = null;
      resolve(key);
    };
  });
  return asking;
}

async function authFetch(path, opts = {}) {
  for (;;) {
    const headers = { ...(opts.headers || {}) };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    const r = await fetch(path, { ...opts, headers });
    if (r.status !== 401) return r;
    await askKey(!!state.key);
  }
}

function setImgSrc(img, url) {
  if (!state.key || url.startsWith("data:")) { img.src = url; return; }
  authFetch(url).then((r) => (r.ok ? r.blob() : null)).then((b) => { if (b) img.src = URL.createObjectURL(b); });
}

function thumbImg(url, alt) {
  const img = el("img", { alt, loading: "lazy" });
  setImgSrc(img, url);
  return img;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await authFetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = data && data.error ? data.error : { message: `HTTP ${r.status}` };
    throw new Error(e.message + (e.param ? ` (${e.param})` : ""));
  }
  return data;
}

// -- URL state ---------------------------------------------------------------------------------
function params() { return new URLSearchParams(location.search); }

function setParams(update, push = true) {
  const p = params();
  for (const [k, v] of Object.entries(update)) {
    if (v === null || v === undefined || v === "") p.delete(k); else p.set(k, v);
  }
  const url = `${location.pathname}${p.toString() ? "?" + p.toString() : ""}`;
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}

function templatesValue() {
  const sel = $("templates").value;
  return sel === "custom" ? ($("templates-custom").value.trim() || "default") : sel;
}

function filterValue() {
  const f = {};
  for (const input of document.querySelectorAll("[data-filter]")) {
    const v = input.value.trim();
    if (v === "") continue;
    const num = Number(v);
    f[input.dataset.filter] = input.dataset.numeric === "1" && !Number.isNaN(num) ? num : v;
  }
  return f;
}

// -- drawing -----------------------------------------------------------------------------------
function buildOptions(info) {
  const sel = $("templates");
  sel.innerHTML = "";
  for (const t of info.templates) sel.append(el("option", { value: t.value }, t.label));
  sel.append(el("option", { value: "custom" }, "custom…"));
  sel.addEventListener("change", () => { $("templates-custom").hidden = sel.value !== "custom"; });
  const box = $("filters");
  box.innerHTML = "";
  const fields = (info.index && info.index.fields) || {};
  for (const [key, values] of Object.entries(fields)) {
    const numeric = values.length > 0 && values.every((v) => typeof v === "number") ? "1" : "0";
    let input;
    if (values.length) {
      input = el("select", { "data-filter": key, "data-numeric": numeric, "aria-label": `filter ${key}` }, el("option", { value: "" }, "any"));
      for (const v of values) input.append(el("option", { value: String(v) }, String(v)));
    } else {
      input = el("input", { type: "text", "data-filter": key, "data-numeric": "0", placeholder: "any", "aria-label": `filter ${key}` });
    }
    box.append(el("label", { class: "filter" }, key, input));
  }
  $("index-info").textContent = info.index ? `${info.index.count} images indexed` : "no index loaded (embeddings, ask, describe only)";
}

function drawResults(title, data) {
  $("results-title").textContent = `${title} — ${data.results.length} result${data.results.length === 1 ? "" : "s"}`;
  const grid = $("results");
  grid.innerHTML = "";
  for (const r of data.results) {
    const pic = r.thumbnail ? thumbImg(r.thumbnail, r.caption || r.id) : el("div", { class: "noimg" }, "no image");
    const card = el("div", { class: "card", "data-id": r.id },
      pic,
      el("div", { class: "meta" },
        el("span", { class: "score", title: (data.query && data.query.score) || "cosine" },
          `#${r.rank} · ${data.query && data.query.score === "sigmoid probability" ? "p " : ""}${r.score.toFixed(3)}`),
        r.caption ? el("span", { class: "caption" }, r.caption) : "",
        el("span", { class: "id" }, r.id),
        el("div", { class: "actions" },
          el("button", { class: "small", type: "button", onclick: () => runLike(r.id) }, "similar"),
          el("button", { class: "small", type: "button", onclick: () => pickSubject(r.id, r.thumbnail) }, "ask"))));
    grid.append(card);
  }
  markSelected();
}

function markSelected() {
  for (const c of document.querySelectorAll(".card")) c.classList.toggle("selected", !!(state.subject && state.subject.id === c.dataset.id));
}

function bars(rows, labelKey, valueKey, cls) {
  const box = el("div", { class: cls });
  for (const r of rows) {
    const v = Math.max(0, Math.min(1, r[valueKey]));
    box.append(el("div", { class: "bar-row" },
      el("span", { class: "label", title: r[labelKey] }, r[labelKey]),
      el("div", { class: "bar" }, el("div", { class: "fill", style: `width:${(v * 100).toFixed(1)}%` })),
      el("span", { class: "value" }, r[valueKey].toFixed(3))));
  }
  return box;
}

function drawSubject() {
  const box = $("subject");
  box.innerHTML = "";
  const s = state.subject;
  $("ask-btn").disabled = !s;
  $("describe-btn").disabled = !s;
  if (!s) { box.className = "subject muted"; box.textContent = "Upload an image or pick “ask” on a result."; return; }
  box.className = "subject";
  const src = s.upload || s.thumb;
  if (src) { const img = el("img", { alt: "subject" }); setImgSrc(img, src); box.append(img); }
  box.append(el("span", {}, s.upload ? "the uploaded image" : `indexed image ${s.id}`));
  markSelected();
}

// -- actions -----------------------------------------------------------------------------------
async function runSearch(push = true) {
  const q = $("q").value.trim();
  if (!q) { status("type a query", true); return; }
  const tpl = templatesValue(), k = Number($("k").value), filter = filterValue();
  const up = { q, tpl: tpl === "default" ? null : tpl, k: k === 10 ? null : k, like: null };
  for (const key of Object.keys((state.info.index && state.info.index.fields) || {})) up[`f.${key}`] = filter[key] ?? null;
  setParams(up, push);
  status("searching…");
  try {
    const data = await api("/v1/search", { text: q, k, templates: tpl, filter });
    drawResults(`“${q}”`, data);
    status("");
  } catch (e) { status(e.message, true); }
}

async function runLike(id, push = true) {
  setParams({ like: id, q: null }, push);
  status("searching…");
  try {
    const data = await api("/v1/search", { id, k: Number($("k").value), filter: filterValue() });
    drawResults(`like ${id}`, data);
    status("");
  } catch (e) { status(e.message, true); }
}

async function runImageSearch() {
  if (!state.upload) return;
  status("searching by image…");
  try {
    const data = await api("/v1/search", { image: state.upload, k: Number($("k").value), filter: filterValue() });
    drawResults("the uploaded image", data);
    status("");
  } catch (e) { status(e.message, true); }
}

function pickSubject(id, thumb, push = true) {
  state.subject = { id, thumb };
  setParams({ img: id }, push);
  drawSubject();
  $("answer").innerHTML = "";
  $("description").innerHTML = "";
}

function subjectBody() {
  return state.subject.upload ? { image: state.subject.upload } : { id: state.subject.id };
}

async function runAsk(push = true) {
  const question = $("question").value.trim();
  if (!state.subject) { status("pick an image first", true); return; }
  if (!question) { status("type a question", true); return; }
  if (state.subject.id) setParams({ ask: question }, push);
  status("asking…");
  try {
    const a = await api("/v1/ask", { ...subjectBody(), question, top_k: 5 });
    const box = $("answer");
    box.innerHTML = "";
    box.append(el("div", { class: "answer-head" }, "Answer: ", el("strong", { id: "answer-text" }, a.answer), ` (${a.prob.toFixed(2)})`));
    box.append(bars(a.top, "answer", "prob", "answer-bars"));
    if (a.truncated) box.append(el("div", { class: "muted small" }, "the question was cut to the model's context"));
    status("");
  } catch (e) { status(e.message, true); }
}

async function runDescribe(push = true) {
  if (!state.subject) { status("pick an image first", true); return; }
  if (state.subject.id) setParams({ desc: "1" }, push);
  status("describing…");
  try {
    const d = await api("/v1/describe", { ...subjectBody(), n: 5 });
    const box = $("description");
    box.innerHTML = "";
    box.append(el("div", { class: "muted small" }, `nearest known prompts (alpha ${d.alpha.toFixed(2)}, K ${d.k})`));
    box.append(bars(d.closest, "prompt", "score", "prompt-bars"));
    if (d.neighbours.length) {
      box.append(el("div", { class: "muted small" }, "prompts of the nearest images"));
      const ul = el("ul", { class: "prompts" });
      for (const n of d.neighbours) ul.append(el("li", {}, n.prompt));
      box.append(ul);
    }
    status("");
  } catch (e) { status(e.message, true); }
}

function readUpload(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

// -- start -------------------------------------------------------------------------------------
async function applyUrl() {
  const p = params();
  $("q").value = p.get("q") || "";
  const tpl = p.get("tpl") || "default";
  const known = [...$("templates").options].some((o) => o.value === tpl);
  $("templates").value = known ? tpl : "custom";
  $("templates-custom").hidden = known;
  if (!known) $("templates-custom").value = tpl;
  if (p.get("k")) $("k").value = p.get("k");
  for (const input of document.querySelectorAll("[data-filter]")) input.value = p.get(`f.${input.dataset.filter}`) || "";
  if (p.get("q")) await runSearch(false);
  else if (p.get("like")) await runLike(p.get("like"), false);
  if (p.get("img")) {
    pickSubject(p.get("img"), `/thumbs/${encodeURIComponent(p.get("img"))}`, false);
    if (p.get("ask")) { $("question").value = p.get("ask"); await runAsk(false); }
    if (p.get("desc")) await runDescribe(false);
  }
}

async function start() {
  try {
    state.info = await api("/v1/info");
  } catch (e) { status(`cannot reach the app: ${e.message}`, true); return; }
  buildOptions(state.info);
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
  $("ask-form").addEventListener("submit", (ev) => { ev.preventDefault(); runAsk(); });
  $("describe-btn").addEventListener("click", () => runDescribe());
  $("search-image-btn").addEventListener("click", () => runImageSearch());
  $("image-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      state.upload = await readUpload(file);
    } catch (e) { status(`cannot read ${file.name}: ${e}`, true); return; }
    state.subject = { upload: state.upload };
    setParams({ img: null, ask: null, desc: null });
    $("search-image-btn").disabled = false;
    $("answer").innerHTML = "";
    $("description").innerHTML = "";
    drawSubject();
    status(`${file.name} loaded: find similar images, ask a question or describe it`);
  });
  window.addEventListener("popstate", () => applyUrl());
  await applyUrl();
  document.body.dataset.ready = "1";
}

start();
