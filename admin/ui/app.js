"use strict";
// The status page: fetches /admin/ui/status.json every two seconds and
// renders it. No framework, no external URL; text goes in through
// textContent only.
(function () {
  const $ = (id) => document.getElementById(id);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    if (!isFinite(n) || n <= 0) return "0 B";
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  const rate = (n) => bytes(n) + "/s";
  function dur(s) {
    if (!isFinite(s) || s <= 0) return "–";
    if (s < 90) return Math.round(s) + "s";
    if (s < 5400) return Math.round(s / 60) + "m";
    return (s / 3600).toFixed(1) + "h";
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function bar(frac) {
    const b = el("div", "bar"), f = el("div");
    f.style.width = Math.max(0, Math.min(100, frac * 100)).toFixed(1) + "%";
    b.appendChild(f);
    return b;
  }
  function progressRow(name, done, total, r, extra, cls) {
    const row = el("div", "row" + (cls ? " " + cls : ""));
    row.appendChild(el("div", "name", name));
    row.appendChild(bar(total > 0 ? done / total : 0));
    const txt = bytes(done) + " / " + bytes(total) + " · " + rate(r) + (extra ? " · " + extra : "");
    row.appendChild(el("div", "muted figures", txt));
    return row;
  }
  function kv(table, rows) {
    table.replaceChildren();
    for (const [k, v, cls] of rows) {
      const tr = el("tr");
      tr.appendChild(el("td", "", k));
      tr.appendChild(el("td", "num" + (cls ? " " + cls : ""), v));
      table.appendChild(tr);
    }
  }
  function render(s) {
    $("updated").textContent = "updated " + new Date(s.time).toLocaleTimeString();
    $("offline").classList.toggle("hidden", !s.offline);
    const c = s.cache;
    $("cache-bytes").textContent = bytes(c.bytes);
    $("cache-max").textContent = c.max_size > 0 ? bytes(c.max_size) : "no";
    $("cache-blobs").textContent = c.blobs;
    $("cache-bar").style.width = (c.max_size > 0 ? Math.min(100, 100 * c.bytes / c.max_size) : 0) + "%";
    $("disk-free").textContent = bytes(c.disk_free);
    $("index-bytes").textContent = bytes(c.index_bytes);
    const t = s.traffic;
    $("window").textContent = dur(t.window_seconds);
    const n = t.hits + t.misses + t.coalesced;
    $("hit-ratio").textContent = n > 0 ? (100 * t.hit_ratio).toFixed(1) + "%" : "–";
    $("hits").textContent = t.hits; $("misses").textContent = t.misses; $("coalesced").textContent = t.coalesced;
    kv($("sources"), Object.keys(t.bytes_by_source).sort().map((k) => [k, bytes(t.bytes_by_source[k])]));
    kv($("upstreams"), s.upstreams.map((u) => [u.host, u.state + " · " + u.requests + " req" + (u.errors ? " · " + u.errors + " err" : "") + (u.rate_limited ? " · 429×" + u.rate_limited : ""), "state-" + u.state]));
    const fills = $("fills");
    fills.replaceChildren();
    $("fill-count").textContent = s.fills.length ? "(" + s.fills.length + ")" : "";
    if (!s.fills.length) fills.appendChild(el("p", "muted", "none"));
    for (const f of s.fills) {
      const r = f.rate_bytes_per_second;
      const left = r > 0 ? "ETA " + dur((f.size - f.landed) / r) : "";
      fills.appendChild(progressRow(f.key, f.landed, f.size, r, left, "fill"));
    }
    const jobs = $("jobs");
    jobs.replaceChildren();
    if (!s.jobs.length) jobs.appendChild(el("p", "muted", "none"));
    for (const j of s.jobs) {
      const label = j.kind + " " + (j.spec || "all") + " — " + j.state + " · " + j.files_done + "/" + j.files_total + " files" + (j.files_failed ? " · " + j.files_failed + " failed" : "");
      jobs.appendChild(progressRow(label, j.bytes_done, j.bytes_total, j.rate_bytes_per_second, j.state === "running" ? "ETA " + dur(j.eta_seconds) : "", "job state-" + j.state));
    }
    const repos = $("repos");
    repos.replaceChildren();
    for (const r of s.top_repos) {
      const tr = el("tr");
      tr.appendChild(el("td", "name", r.repo));
      tr.appendChild(el("td", "num", r.requests + " req"));
      tr.appendChild(el("td", "num", bytes(r.bytes)));
      repos.appendChild(tr);
    }
    const errs = $("errors");
    errs.replaceChildren();
    if (!s.errors.length) errs.appendChild(el("p", "muted", "none"));
    for (const e of s.errors) {
      const d = el("div", "err");
      d.appendChild(el("time", "", new Date(e.time).toLocaleTimeString()));
      d.appendChild(el("span", "", e.level + " " + e.message + (e.detail ? " (" + e.detail + ")" : "")));
      errs.appendChild(d);
    }
  }
  async function refresh() {
    try {
      const r = await fetch("/admin/ui/status.json", { cache: "no-store" });
      if (r.ok) render(await r.json());
      else $("updated").textContent = "status unavailable (" + r.status + ")";
    } catch (e) {
      $("updated").textContent = "gateway unreachable";
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
