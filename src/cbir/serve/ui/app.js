// The search page of `cbir serve`: upload (or drop) an image, or click a result to search by its id.
// Everything the server returns is put into the page with textContent / attributes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // { file } or { id }
let queryUrl = null;
let latest = 0; // only the newest request may draw: answers can arrive out of order

function params() {
  const p = new URLSearchParams({ k: $("k").value || "10" });
  if ($("rerank").value) p.set("rerank", $("rerank").value);
  return p;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

function showQuery(src, label) {
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = src.startsWith("blob:") ? src : null;
  $("query-img").src = src;
  $("query-img").alt = label;
  $("query-img").hidden = false;
  $("query-label").textContent = label;
}

async function run() {
  if (!current) return;
  const seq = ++latest;
  const p = params();
  let req;
  if (current.file) {
    const body = new FormData();
    body.append("image", current.file);
    req = fetch("/search?" + p, { method: "POST", body });
  } else {
    p.set("id", current.id);
    req = fetch("/search?" + p);
  }
  setStatus("searching…");
  const t0 = performance.now();
  let res, data;
  try {
    res = await req;
    data = await res.json();
  } catch (e) {
    if (seq === latest) setStatus("request failed: " + e, true);
    return;
  }
  if (seq !== latest) return;
  const ms = performance.now() - t0;
  if (!res.ok) {
    setStatus(`error ${res.status}: ${data.error || res.statusText}`, true);
    $("results").replaceChildren();
    return;
  }
  render(data.results);
  const t = data.timings_ms || {};
  const parts = [`${data.results.length} results in ${ms.toFixed(1)} ms`];
  if (t.inference_ms !== undefined) parts.push(`inference ${t.inference_ms} ms`);
  if (t.search_ms !== undefined) parts.push(`search ${t.search_ms} ms`);
  setStatus(parts.join(" · "));
}

function render(hits) {
  const items = hits.map((h, i) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "hit";
    b.dataset.id = String(h.id);
    b.title = "Search with this image";
    const img = document.createElement("img");
    img.src = "/thumbs/" + encodeURIComponent(h.id);
    img.alt = h.path;
    img.loading = "lazy";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `${i + 1}. ${h.score.toFixed(4)}` + (h.verified ? (h.by === "hash" ? " ✓ same perceptual hash" : ` ✓ ${h.inliers} inliers`) : "");
    if (h.verified) b.classList.add("verified");
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = h.path;
    b.append(img, rank, path);
    b.addEventListener("click", () => searchId(h.id, h.path));
    li.append(b);
    return li;
  });
  $("results").replaceChildren(...items);
}

function searchFile(file) {
  if (!file) return;
  current = { file };
  showQuery(URL.createObjectURL(file), file.name);
  run();
}

function searchId(id, path) {
  current = { id };
  showQuery("/thumbs/" + encodeURIComponent(id), `item ${id}: ${path}`);
  run().then(() => { const first = document.querySelector(".hit"); if (first) first.focus(); });
}

async function info() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    $("info").textContent = `${h.count} images · ${h.model}`;
  } catch (e) { /* the page still works without it */ }
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => searchFile(e.dataTransfer.files[0]));
  $("query").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  $("k").addEventListener("change", run);
  $("rerank").addEventListener("change", run);
  info();
});
